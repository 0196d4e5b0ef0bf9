"""Interpolation paths, barriers and their plot (weightspace.merge.barrier)."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from weightspace.classify import evaluate
from weightspace.merge import barrier, interpolation_path, plot_barrier
from weightspace.models import MLP, VGG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_path_endpoints_are_the_models_and_barrier_with_itself_is_zero(trained_mlps,
                                                                        digits_flat):
    a, b, spec = trained_mlps
    x, y = digits_flat.x_test, digits_flat.y_test
    path = interpolation_path(MLP(hidden=(64, 64)), a.state_dict(), b.state_dict(), x, y,
                              steps=5)
    assert [p["lam"] for p in path] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for point, model in ((path[0], a), (path[-1], b)):
        loss, acc = evaluate(model, x, y)
        assert point["loss"] == pytest.approx(loss, abs=1e-9)
        assert point["accuracy"] == acc
    result = barrier(path)
    assert result["loss_barrier"] > 0.05  # unaligned, independently trained: a real barrier
    same = barrier(interpolation_path(MLP(hidden=(64, 64)), a.state_dict(), a.state_dict(), x,
                                      y, steps=5))
    assert abs(same["loss_barrier"]) < 1e-5 and abs(same["accuracy_barrier"]) < 1e-9


def test_repaired_path_is_no_worse_than_naive(trained_mlps, digits_flat):
    a, b, spec = trained_mlps
    x, y = digits_flat.x_test, digits_flat.y_test
    naive = interpolation_path(MLP(hidden=(64, 64)), a.state_dict(), b.state_dict(), x, y,
                               steps=3)
    fixed = interpolation_path(MLP(hidden=(64, 64)), a.state_dict(), b.state_dict(), x, y,
                               steps=3, repair_inputs=digits_flat.x_train)  # spec traced
    assert fixed[0] == naive[0] and fixed[-1] == naive[-1]
    assert fixed[1]["accuracy"] >= naive[1]["accuracy"] - 0.02


def test_path_with_batchnorm_reset(digits_images):
    torch.manual_seed(0)
    a, b = VGG().eval(), VGG().eval()
    x, y = digits_images.x_test[:200], digits_images.y_test[:200]
    path = interpolation_path(VGG(), a.state_dict(), b.state_dict(), x, y, steps=3,
                              batchnorm_reset_inputs=digits_images.x_train[:300])
    assert path[0]["loss"] == pytest.approx(evaluate(a, x, y)[0], abs=1e-9)
    assert all(torch.isfinite(torch.tensor(p["loss"])) for p in path)


def test_barrier_formula():
    path = [{"lam": 0.0, "loss": 1.0, "accuracy": 0.9},
            {"lam": 0.5, "loss": 2.0, "accuracy": 0.5},
            {"lam": 1.0, "loss": 1.2, "accuracy": 0.8}]
    result = barrier(path)
    assert result["loss_barrier"] == pytest.approx(2.0 - 1.1)
    assert result["accuracy_barrier"] == pytest.approx(0.85 - 0.5)
    assert result["loss_barrier_lam"] == 0.5 and result["midpoint_accuracy"] == 0.5
    flat = [{"lam": 0.0, "loss": 1.0, "accuracy": 0.9}, {"lam": 1.0, "loss": 1.0,
                                                         "accuracy": 0.9}]
    assert barrier(flat)["loss_barrier"] == 0.0
    with pytest.raises(ValueError, match="increase from 0 to 1"):
        barrier([path[1], path[0], path[2]])
    with pytest.raises(ValueError, match="at least 2"):
        barrier(path[:1])


def test_plot_writes_a_png_atomically(tmp_path):
    naive = [{"lam": t / 4, "loss": 1 + t * (4 - t) / 4, "accuracy": 0.9 - t * (4 - t) / 20}
             for t in range(5)]
    aligned = [{**p, "loss": p["loss"] * 0.6 + 0.4} for p in naive]
    backend = matplotlib.get_backend()
    out = plot_barrier({"naive": naive, "aligned": aligned}, tmp_path / "sub" / "barrier.png",
                       title="MLP on digits")
    assert out == tmp_path / "sub" / "barrier.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in out.parent.iterdir()) == ["barrier.png"]
    assert matplotlib.get_backend() == backend


def test_plot_leaves_no_temporary_file_on_error(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = [{"lam": 0.0, "loss": 1.0, "accuracy": 0.9}, {"lam": 1.0, "loss": 1.0,
                                                         "accuracy": 0.9}]
    out = tmp_path / "barrier.png"
    out.write_bytes(b"old")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_barrier({"naive": path}, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["barrier.png"]
    assert out.read_bytes() == b"old"
    with pytest.raises(ValueError, match="curve 'bad'"):
        plot_barrier({"bad": path[:1]}, tmp_path / "other.png")
    assert not (tmp_path / "other.png").exists()
