"""Fixtures of the job tests: small trained checkpoints on real files, and
the CLI's ``--json`` output of a verb, to compare with a job's report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from weightspace.classify import load_split, train_classifier
from weightspace.io import save_state_dict
from weightspace.models import build_model
from weightspace.spec import trace

HIDDEN = [24, 24]
#: The CLI's model flags for the architecture of :func:`mlp`.
MODEL_ARGS = ["--model", "mlp", "--model-args", json.dumps({"hidden": HIDDEN})]


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models: one intra-op thread is faster on a busy machine (and the
    scores of a job and of the CLI are summed in the same order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp():
    """``(model, spec)`` of the checkpoints' architecture."""
    model = build_model("mlp", hidden=HIDDEN)
    return model, trace(model, (1, 64))


@pytest.fixture(scope="package")
def checkpoints(tmp_path_factory) -> list[Path]:
    """Three digits MLPs trained from different seeds, as .safetensors files."""
    folder = tmp_path_factory.mktemp("job-mlps")
    data = load_split("digits", (1, 64))
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = train_classifier(build_model("mlp", hidden=HIDDEN), data, epochs=4, seed=seed)
        paths.append(save_state_dict(model.state_dict(), folder / f"mlp{seed}.safetensors"))
    return paths


@pytest.fixture
def cli_json(capsys) -> Callable[..., dict]:
    """``cli_json(*argv)``: run ``weightspace argv --json`` in process and
    return the JSON it printed (the exit status must be 0)."""
    from weightspace.cli import main

    def run(*argv: str) -> dict:
        capsys.readouterr()
        assert main([*map(str, argv), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    return run


def as_json(report) -> dict:
    """``report.to_dict()`` through JSON (so it must serialise), as ``--json``
    prints it."""
    return json.loads(json.dumps(report.to_dict()))
