"""``weightspace prune`` on real checkpoint files: reports, outputs that load
again, and bad input (one-line errors, no output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightspace.classify import evaluate, load_split, train_classifier
from weightspace.cli import main
from weightspace.io import load_metadata, load_state_dict, save_state_dict
from weightspace.models import build_model
from weightspace.prune import load_pruned
from weightspace.spec import trace

HIDDEN = [48, 48]
ARGS = ["--model", "mlp", "--model-args", json.dumps({"hidden": HIDDEN}), "--latency-batch", "32"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    data = load_split("digits", (1, 64))
    model = train_classifier(build_model("mlp", hidden=HIDDEN), data, epochs=8)
    return save_state_dict(model.state_dict(), tmp_path_factory.mktemp("mlp") / "mlp.safetensors")


def _model():
    model = build_model("mlp", hidden=HIDDEN)
    return model, trace(model, (1, 64))


def test_structured_subprocess_gives_a_smaller_model_that_loads(checkpoint, tmp_path):
    output = tmp_path / "small.safetensors"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "weightspace", "prune", str(checkpoint), *ARGS,
                          "--structured", "--sparsity", "0.5", "--finetune-epochs", "2",
                          "-o", str(output), "--json"],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["pruned_sizes"] == {"layers.0": 24, "layers.3": 24}
    assert report["after"]["parameters"] == 64 * 24 + 24 + 24 * 24 + 24 + 24 * 10 + 10
    assert report["mac_reduction"] == pytest.approx((64 * 48 + 48 * 48 + 480) / (64 * 24 + 24 * 24 + 240))
    assert report["after"]["accuracy"] > 0.85
    model, spec = _model()
    small = load_pruned(output, model, spec)
    assert small.layers[0].out_features == 24
    data = load_split("digits", (1, 64))
    assert evaluate(small, data.x_test, data.y_test)[1] == pytest.approx(
        report["after"]["accuracy"])
    assert json.loads(load_metadata(output)["weightspace.pruned_sizes"]) == report["pruned_sizes"]


def test_unstructured_keeps_masks_through_finetuning(checkpoint, tmp_path, capsys):
    output = tmp_path / "sparse.safetensors"
    assert main(["prune", str(checkpoint), *ARGS, "--sparsity", "0.8", "--finetune-epochs", "2",
                 "-o", str(output)]) == 0
    text = capsys.readouterr().out
    assert "unstructured magnitude" in text and "wrote" in text
    state = load_state_dict(output)
    weights = [state[k] for k in state if k.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.8 * sum(w.numel() for w in weights))
    assert all(int((state[k] == 0).sum()) == 0 for k in state if k.endswith("bias"))


def test_speedup_and_taylor(checkpoint, tmp_path, capsys):
    output = tmp_path / "fast.safetensors"
    assert main(["prune", str(checkpoint), *ARGS, "--structured", "--speedup", "2",
                 "--method", "taylor", "-o", str(output), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mac_reduction"] >= 2.0
    assert report["method"] == "taylor"


@pytest.mark.parametrize("extra, message", [
    (["--sparsity", "1.5"], "sparsity"),
    # the library names its parameters; the CLI shows the flag of the one at fault
    (["--speedup", "2"], "argument --speedup: speedup needs structured=True"),
    ([], "argument --sparsity: give exactly one of sparsity and speedup"),
    (["--sparsity", "0.5", "--method", "meta"], "argument --metanet: method='meta' needs metanet"),
])
def test_bad_arguments(checkpoint, tmp_path, capsys, extra, message):
    output = tmp_path / "never.safetensors"
    assert main(["prune", str(checkpoint), *ARGS, *extra, "-o", str(output)]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not output.exists()


def test_bad_checkpoints_name_the_parameter(checkpoint, tmp_path, capsys):
    state = load_state_dict(checkpoint)
    state["layers.3.weight"][0, 0] = float("nan")
    broken = save_state_dict(state, tmp_path / "nan.safetensors")
    output = tmp_path / "never.safetensors"
    assert main(["prune", str(broken), *ARGS, "--sparsity", "0.5", "-o", str(output)]) != 0
    assert "'layers.3.weight'" in capsys.readouterr().err
    other = ["--model", "mlp", "--model-args", '{"hidden": [48, 40]}']
    assert main(["prune", str(checkpoint), *other, "--sparsity", "0.5", "-o", str(output)]) != 0
    assert "layers.3" in capsys.readouterr().err
    assert not output.exists()


def test_help():
    out = subprocess.run([sys.executable, "-m", "weightspace", "prune", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--structured" in out.stdout
