"""``weightspace train-pruner`` then ``weightspace prune --method meta`` on real
files: a tiny digits-cnn zoo, a saved pruner, a pruned checkpoint that loads
again; bad input gives a one-line error and writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.prune.common import build_tiny_cnn_zoo
from weightspace.cli import EXIT_BAD_INPUT, main
from weightspace.io import save_state_dict
from weightspace.prune import load_pruned
from weightspace.prune.meta import load_meta_pruner, training_notes
from weightspace.zoo import open_zoo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory) -> tuple[Path, str]:
    """The tiny digits-cnn zoo (4 runs, a few seconds) and its largest group."""
    return build_tiny_cnn_zoo(tmp_path_factory.mktemp("zoo"))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "weightspace", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_train_pruner_then_prune_with_it(tiny_zoo, tmp_path):
    path, group = tiny_zoo
    pruner_path = tmp_path / "pruner.safetensors"
    out = _run("train-pruner", str(path), "--group", group, "-o", str(pruner_path),
               "--epochs", "2", "--hidden", "8", "--layers", "1", "--batch-size", "2", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["group"] == group and report["networks"] >= 1 and report["epochs"] == 2
    assert report["last"]["task_loss"] > 0 and report["group_lasso_ratio"] > 0
    pruner = load_meta_pruner(pruner_path)
    assert pruner.config["hidden"] == 8 and pruner.mode == "edit"
    assert training_notes(pruner_path)["group"] == group

    # a checkpoint of the zoo's architecture, pruned through the CLI with the pruner
    zoo = open_zoo(path)
    try:
        row = int(zoo.select(group=group, last_checkpoint=True)[0])
        state, model_def = zoo.state_dict(row), zoo.group(group).model_def
    finally:
        zoo.close()
    checkpoint = save_state_dict(state, tmp_path / "cnn.safetensors")
    output = tmp_path / "small.safetensors"
    model_args = ["--model", model_def.family, "--model-args", json.dumps(dict(model_def.args)),
                  "--input-shape", ",".join(map(str, model_def.input_shape))]
    out = _run("prune", str(checkpoint), *model_args, "--structured", "--speedup", "2",
               "--method", "meta", "--metanet", str(pruner_path), "--latency-batch", "0",
               "-o", str(output), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["method"] == "meta" and report["mac_reduction"] >= 2.0
    model = model_def.build()
    small = load_pruned(output, model, model_def.trace())
    assert sum(p.numel() for p in small.parameters()) == report["after"]["parameters"]
    with torch.no_grad():
        assert small(torch.zeros(2, *model_def.input_shape[1:])).shape == (2, 10)


def test_train_pruner_bad_input_is_one_line_and_writes_nothing(tiny_zoo, tmp_path, capsys):
    path, _ = tiny_zoo
    output = tmp_path / "pruner.safetensors"
    cases = [
        ([str(path), "--group", "no-such-group", "-o", str(output)], "no group 'no-such-group'"),
        ([str(path), "-o", str(tmp_path / "pruner.pt")], "saved as .safetensors"),
        ([str(tmp_path / "missing.h5"), "-o", str(output)], "missing.h5"),
    ]
    for args, message in cases:
        assert main(["train-pruner", *args, "--epochs", "1"]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not output.exists()
