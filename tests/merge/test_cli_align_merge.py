"""``weightspace align``, ``merge`` and ``interpolate`` on real checkpoint
files: outputs, reports, configs, and bad input (one-line errors, no output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from weightspace.classify import evaluate, load_split, train_classifier
from weightspace.cli import main
from weightspace.io import load_state_dict, save_state_dict
from weightspace.models import build_model

ARGS = ["--model", "mlp", "--model-args", '{"hidden": [32, 32]}']


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("mlps")
    data = load_split("digits", (1, 64))
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = train_classifier(build_model("mlp", hidden=[32, 32]), data, epochs=6, seed=seed)
        paths.append(save_state_dict(model.state_dict(), folder / f"m{seed}.safetensors"))
    return paths


def test_align_subprocess_keeps_the_function(checkpoints, tmp_path):
    out_path = tmp_path / "b_aligned.safetensors"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "weightspace", "align", str(checkpoints[0]),
                          str(checkpoints[1]), *ARGS, "-o", str(out_path), "--data", "digits",
                          "--json"], capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["distance_after"] < report["distance_before"]
    # the same function; the loss's summation order may differ (threads)
    b, b_aligned = report["scores"]["b"], report["scores"]["b_aligned"]
    assert b.keys() == b_aligned.keys()
    for key in b:
        assert b_aligned[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9)
    data = load_split("digits", (1, 64))
    model = build_model("mlp", hidden=[32, 32]).eval()
    x = data.x_test
    with torch.no_grad():
        model.load_state_dict(load_state_dict(checkpoints[1]))
        expected = model(x)
        model.load_state_dict(load_state_dict(out_path))
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_merge_aligned_beats_naive(checkpoints, tmp_path, capsys):
    reports = {}
    for align in ("weight", "none"):
        output = tmp_path / f"merged-{align}.safetensors"
        assert main(["merge", str(checkpoints[0]), str(checkpoints[1]), *ARGS, "-o", str(output),
                     "--align", align, "--data", "digits", "--json"]) == 0
        reports[align] = json.loads(capsys.readouterr().out)
    assert reports["weight"]["scores"]["merged"]["accuracy"] > \
        reports["none"]["scores"]["merged"]["accuracy"] + 0.1
    # MergeMany for three models, and REPAIR for two.
    assert main(["merge", *map(str, checkpoints), *ARGS, "-o", str(tmp_path / "three.pt"),
                 "--data", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scores"]["merged"]["accuracy"] > 0.5
    assert main(["merge", str(checkpoints[0]), str(checkpoints[1]), *ARGS, "--repair",
                 "-o", str(tmp_path / "repaired.safetensors"), "--data", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["corrections"] == ["repair"]


def test_merge_task_methods_and_config(checkpoints, tmp_path, capsys):
    for method, extra in (("task-arith", ["--scaling", "0.5"]), ("ties", ["--density", "0.5"]),
                          ("dare", ["--density", "0.5"])):
        assert main(["merge", str(checkpoints[1]), str(checkpoints[2]), *ARGS, "--method", method,
                     "--base", str(checkpoints[0]), "--align", "none", *extra,
                     "-o", str(tmp_path / f"{method}.safetensors")]) == 0, method
    capsys.readouterr()
    assert main(["merge", str(checkpoints[1]), str(checkpoints[2]), *ARGS, "--method",
                 "task-arith", "--base", str(checkpoints[0]), "--density", "0.5",
                 "-o", str(tmp_path / "bad.safetensors")]) == 1
    assert "does not take density" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "merge_method": "ties", "base_model": str(checkpoints[0]),
        "models": [{"model": str(checkpoints[1]), "parameters": {"weight": 1.0}},
                   {"model": str(checkpoints[2]), "parameters": {"weight": 0.5}}],
        "parameters": {"density": 0.3},
        "architecture": {"model": "mlp", "model_args": {"hidden": [32, 32]},
                         "input_shape": [1, 64]},
        "align": "none"}))
    output = tmp_path / "from-config.safetensors"
    assert main(["merge", "--config", str(config), "-o", str(output)]) == 0
    assert output.exists()
    copied = yaml.safe_load(Path(f"{output}.yaml").read_text())
    assert copied["merge_method"] == "ties" and copied["parameters"]["density"] == 0.3

    # a flag the config sets is refused, not silently ignored
    capsys.readouterr()
    refused = tmp_path / "refused.safetensors"
    assert main(["merge", "--config", str(config), "--method", "average",
                 "-o", str(refused)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--method" in err and "merge_method" in err
    assert not refused.exists()

    # --model fills in a missing architecture:, and is refused beside one
    data = yaml.safe_load(config.read_text())
    del data["architecture"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(data))
    filled = tmp_path / "filled.safetensors"
    assert main(["merge", "--config", str(bare), "--model", "mlp", "--model-args",
                 '{"hidden": [32, 32]}', "-o", str(filled)]) == 0
    assert filled.exists()
    assert yaml.safe_load(Path(f"{filled}.yaml").read_text())["architecture"]["model"] == "mlp"
    assert main(["merge", "--config", str(config), "--model", "mlp", "-o", str(refused)]) == 1
    assert "--model" in capsys.readouterr().err and not refused.exists()


def test_interpolate_writes_plot_and_json(checkpoints, tmp_path, capsys):
    plot, report = tmp_path / "barrier.png", tmp_path / "barrier.json"
    assert main(["interpolate", str(checkpoints[0]), str(checkpoints[1]), *ARGS, "--steps", "5",
                 "--plot", str(plot), "--json-out", str(report)]) == 0
    out = capsys.readouterr().out
    assert "weight matching" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(report.read_text())
    # the text gives the accuracy barrier in points; the JSON keeps the fraction
    naive_line = next(line for line in out.splitlines() if line.startswith("naive"))
    points = float(naive_line.split("accuracy barrier")[1].split("points")[0])
    assert points == pytest.approx(100 * data["barriers"]["naive"]["accuracy_barrier"], abs=0.06)
    assert [p["lam"] for p in data["paths"]["naive"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert data["barriers"]["weight matching"]["loss_barrier"] < \
        data["barriers"]["naive"]["loss_barrier"]
    state = load_state_dict(checkpoints[0])
    model = build_model("mlp", hidden=[32, 32])
    split = load_split("digits", (1, 64))
    loss, _ = evaluate(model, split.x_test, split.y_test, state)
    assert data["paths"]["naive"][0]["loss"] == pytest.approx(loss, rel=1e-6)
    # --json prints the report on stdout, as every verb's --json does
    assert main(["interpolate", str(checkpoints[0]), str(checkpoints[1]), *ARGS, "--steps", "3",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["barriers"]) == {"naive", "weight matching", "activation matching"}
    assert all(0 <= b["accuracy_barrier"] <= 1 for b in printed["barriers"].values())


def test_bad_input_one_line_error_and_no_output(checkpoints, tmp_path, capsys):
    other = save_state_dict(build_model("mlp", hidden=[16, 32]).state_dict(),
                            tmp_path / "other.safetensors")
    broken = dict(load_state_dict(checkpoints[1]))
    broken["layers.0.weight"] = broken["layers.0.weight"].clone()
    broken["layers.0.weight"][0, 0] = float("nan")
    nan = save_state_dict(broken, tmp_path / "nan.safetensors")
    missing = dict(load_state_dict(checkpoints[1]))
    del missing["layers.3.bias"]
    missing_path = save_state_dict(missing, tmp_path / "missing.safetensors")
    cases = [
        (["align", str(checkpoints[0]), str(other)], "other.safetensors"),
        (["align", str(checkpoints[0]), str(nan)], "'layers.0.weight'"),
        (["merge", str(checkpoints[0]), str(missing_path)], "layers.3.bias"),
        (["interpolate", str(checkpoints[0]), str(nan), "--plot", str(tmp_path / "p.png")],
         "NaN"),
    ]
    for argv, needle in cases:
        output = tmp_path / "out.safetensors"
        full = [*argv, *ARGS] + (["-o", str(output)] if argv[0] != "interpolate" else [])
        assert main(full) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
        assert not output.exists() and not (tmp_path / "p.png").exists()
