"""The command line, run as a subprocess on real checkpoint files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weightspace.graph import load_graphs
from weightspace.models import build_model

MODEL_FILE = '''
import torch.nn as nn

def make(width=8):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))
'''


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "weightspace", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def mlp_checkpoints(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("ckpts")
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        sd = build_model("mlp", hidden=[16, 8]).state_dict()
        states.append(sd)
        save_file(sd, folder / f"a{seed}.safetensors")
    torch.save(states[0], folder / "b.pt")
    return folder, states


def test_help_on_every_verb(capsys):
    out = run("--help")  # once as a real process; the verbs in-process (same parser)
    assert out.returncode == 0 and "usage: weightspace" in out.stdout
    from weightspace.cli import main

    for verb in ("inspect", "convert", "demo", "align", "merge", "interpolate"):
        with pytest.raises(SystemExit) as exit_info:
            main([verb, "--help"])
        assert exit_info.value.code == 0
        assert "usage: weightspace " + verb in capsys.readouterr().out


def test_inspect_builtin_text_and_json():
    out = run("inspect", "--model", "resnet20", "--model-args", '{"width": 1}')
    assert out.returncode == 0, out.stderr
    assert "symmetries: permutation" in out.stdout
    out = run("inspect", "--model", "cnn", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["num_parameters"] == sum(p.numel() for p in build_model("cnn").state_dict().values())
    assert data["graph"]["edge_dim"] == 9
    assert [s["role"] for s in data["spec"]["spaces"]].count("hidden") == 3


def test_inspect_user_model_file(tmp_path):
    (tmp_path / "mynet.py").write_text(MODEL_FILE)
    out = run("inspect", "--model", "mynet.py:make", "--model-args", '{"width": 6}',
              "--input-shape", "1,3,8,8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "running_mean" in out.stdout and "size 6" in out.stdout


def test_convert_directory_glob_and_files_round_trip(tmp_path, mlp_checkpoints):
    folder, states = mlp_checkpoints
    target = tmp_path / "graphs.pt"
    out = run("convert", str(folder / "a*.safetensors"), str(folder / "b.pt"), "--model", "mlp",
              "--model-args", '{"hidden": [16, 8]}', "-o", str(target), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["num_graphs"] == 4
    loaded = load_graphs(target)
    assert loaded.batch.num_graphs == 4
    back = loaded.state_dicts()
    for got, want in zip(back, [*states, states[0]], strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)
    # the file is plain tensors and strings: loadable with weights_only=True
    assert torch.load(target, weights_only=True)["format"] == "weightspace.graphs/1"

    out = run("convert", str(folder), "--model", "mlp", "--model-args", '{"hidden": [16, 8]}',
              "-o", str(tmp_path / "dir.pt"), "-q")
    assert out.returncode == 0, out.stderr
    assert load_graphs(tmp_path / "dir.pt").batch.num_graphs == 4


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["inspect", "--model", "nosuchfamily"], "nosuchfamily"),
        (["inspect", "--model", "mlp", "--model-args", "{bad json"], "--model-args"),
        (["inspect", "--model", "mlp", "--input-shape", "1,x"], "--input-shape"),
        (["inspect", "--model", "torch.nn:Linear", "--model-args", '{"in_features": 3, "out_features": 2}'],
         "--input-shape is required"),
        (["convert", "missing.safetensors", "--model", "mlp", "-o", "o.pt"], "missing.safetensors"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, fragment):
    out = run(*args, cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert fragment in lines[0]
    assert not (tmp_path / "o.pt").exists()


def test_convert_rejects_mismatched_checkpoint_naming_file_and_key(tmp_path, mlp_checkpoints):
    folder, _ = mlp_checkpoints
    out = run("convert", str(folder / "a0.safetensors"), "--model", "mlp", "-o", str(tmp_path / "o.pt"))
    assert out.returncode != 0
    line = out.stderr.strip()
    assert "a0.safetensors" in line and "layers" in line and len(line.splitlines()) == 1
    assert not (tmp_path / "o.pt").exists()


class Payload:
    """Unpickling this would run code: the CLI must refuse it."""

    def __reduce__(self):
        return (Path.touch, (Path("/tmp/weightspace-cli-pwned"),))


def test_convert_refuses_pickled_code(tmp_path):
    marker = Path("/tmp/weightspace-cli-pwned")
    marker.unlink(missing_ok=True)
    bad = tmp_path / "evil.pt"
    torch.save({"layers.0.weight": torch.zeros(1), "x": Payload()}, bad)
    out = run("convert", str(bad), "--model", "mlp", "-o", str(tmp_path / "o.pt"))
    assert out.returncode != 0
    assert "evil.pt" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_demo_runs_end_to_end(tmp_path):
    out = run("demo", "--workdir", str(tmp_path), "-q", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["round_trip_exact"] is True and report["verified"] is True
    assert report["build"]["rows_written"] == report["info"]["rows"] > 0
    assert report["permutation"]["graph_relabelled"] is True
    assert report["permutation"]["accuracy"] == report["permutation"]["accuracy_permuted"]
    assert report["permutation"]["values_moved"] > 0
    assert report["permutation"]["accuracy"] == pytest.approx(
        report["permutation"]["recorded_accuracy"])
    assert (tmp_path / "graphs.pt").exists() and (tmp_path / "digits-cnn-tiny.h5").exists()
    barriers = report["merging"]["barriers"]
    assert barriers["weight matching"]["loss_barrier"] < barriers["naive"]["loss_barrier"]
    assert (tmp_path / "barrier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = report["metanetworks"]["models"]
    assert set(meta) == {"gmn", "statnn"}
    # 10 classes: chance is 0.1; the GMN with probe features reads the INRs (~0.55 measured)
    assert meta["gmn"]["test"]["accuracy"] > 0.3
    assert (tmp_path / "digits-inr-gmn" / "metrics.json").exists()
    pruning = report["pruning"]
    structured, sparse = pruning["structured"], pruning["unstructured"]
    assert structured["mac_reduction"] >= 2.0
    assert sparse["after"]["nonzero"] < 0.25 * sparse["before"]["nonzero"]
    # a 64-64 MLP keeps most of its accuracy after brief fine-tuning (measured ~0.95)
    assert structured["after"]["accuracy"] > 0.85 and sparse["after"]["accuracy"] > 0.85
    assert (tmp_path / "mlp-pruned-structured.safetensors").exists()
