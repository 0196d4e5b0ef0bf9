"""The prune and meta-pruner jobs called from Python on real files: their
options dataclasses, frozen reports whose ``to_dict()`` is what the CLI
prints with ``--json``, and errors that name the option at fault."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.jobs.conftest import MODEL_ARGS, as_json, mlp
from tests.prune.common import build_tiny_cnn_zoo
from weightspace.classify import load_split
from weightspace.cli import main
from weightspace.io import load_metadata
from weightspace.jobs import (
    MetaPrunerOptions,
    MetaPrunerReport,
    PruneOptions,
    PruneReport,
    prune_checkpoint,
    prune_model,
    train_meta_pruner,
)
from weightspace.prune import PruneError, load_pruned
from weightspace.prune.meta import load_meta_pruner, training_notes


@pytest.mark.parametrize("options_class", [PruneOptions, MetaPrunerOptions])
def test_options_are_frozen_with_defaults_and_help(options_class):
    options = options_class()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 1
    for f in dataclasses.fields(options_class):
        assert f.default is not dataclasses.MISSING, f.name
        assert f.metadata["help"] and "--" not in f.metadata["help"], f.name


def test_prune_job_structured_report_and_cli_json(checkpoints, tmp_path, cli_json):
    model, spec = mlp()
    output = tmp_path / "small.safetensors"
    options = PruneOptions(sparsity=0.5, structured=True, latency_batch=0)
    report = prune_checkpoint(checkpoints[0], model, spec, output, options)
    assert isinstance(report, PruneReport)
    assert report.pruned_sizes == {"layers.0": 12, "layers.3": 12}
    assert report.scope == "space" and report.importance == "l2"
    assert report.after["parameters"] == 64 * 12 + 12 + 12 * 12 + 12 + 12 * 10 + 10
    assert json.loads(load_metadata(output)["weightspace.pruned_sizes"]) == report.pruned_sizes
    assert load_pruned(output, model, spec).layers[0].out_features == 12
    assert as_json(report) == cli_json("prune", checkpoints[0], *MODEL_ARGS, "--structured",
                                       "--sparsity", "0.5", "--latency-batch", "0",
                                       "-o", output)


def test_prune_model_in_memory_keeps_the_input(checkpoints):
    model, spec = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = load_split("digits", (1, 64))
    outcome = prune_model(model, spec, data, PruneOptions(sparsity=0.75, method="random"))
    weights = [v for k, v in outcome.model.state_dict().items() if k.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.75 * sum(w.numel() for w in weights))
    assert outcome.pruned_sizes is None and outcome.spec is spec
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("options, parameter", [
    (PruneOptions(), "sparsity"),
    (PruneOptions(sparsity=0.5, speedup=2.0, structured=True), "sparsity"),
    (PruneOptions(sparsity=1.5), "sparsity"),
    (PruneOptions(speedup=2.0), "speedup"),
    (PruneOptions(sparsity=0.5, method="meta"), "metanet"),
    (PruneOptions(sparsity=0.5, method="lucky"), "method"),
    (PruneOptions(sparsity=0.5, scope="space"), "scope"),
    (PruneOptions(sparsity=0.5, structured=True, scope="layer"), "scope"),
    (PruneOptions(sparsity=0.5, finetune_epochs=-1), "finetune_epochs"),
])
def test_prune_job_refuses_bad_options_before_reading(checkpoints, tmp_path, options,
                                                      parameter):
    model, spec = mlp()
    output = tmp_path / "never.safetensors"
    with pytest.raises(PruneError) as info:
        prune_checkpoint(tmp_path / "not-read.safetensors", model, spec, output, options)
    assert info.value.parameter == parameter and "--" not in str(info.value)
    assert not output.exists()


def test_prune_model_without_data_names_data():
    model, spec = mlp()
    with pytest.raises(PruneError, match="need data") as info:
        prune_model(model, spec, None, PruneOptions(sparsity=0.5, finetune_epochs=1))
    assert info.value.parameter == "data"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """The tiny digits-cnn zoo (4 runs, a few seconds) and its largest group."""
    return build_tiny_cnn_zoo(tmp_path_factory.mktemp("zoo"))


def test_meta_pruner_job_report_and_cli_json(tiny_zoo, tmp_path, cli_json):
    path, group = tiny_zoo
    output = tmp_path / "pruner.safetensors"
    options = MetaPrunerOptions(group=group, hidden=8, num_layers=1, epochs=1, batch_size=2)
    report = train_meta_pruner(path, output, options)
    assert isinstance(report, MetaPrunerReport)
    assert report.group == group and report.networks == len(report.rows) >= 1
    assert report.last["epoch"] == 1 and report.group_lasso_ratio > 0
    assert "rows" not in report.to_dict()
    pruner = load_meta_pruner(output)
    assert pruner.config["hidden"] == 8 and pruner.config["num_layers"] == 1
    assert training_notes(output)["networks"] == report.networks
    printed = cli_json("train-pruner", path, "--group", group, "--hidden", "8", "--layers", "1",
                       "--epochs", "1", "--batch-size", "2", "-o", output)
    # the same run again: everything but the wall time is reproduced
    assert {k: v for k, v in as_json(report).items() if k != "seconds"} == \
        {k: v for k, v in printed.items() if k != "seconds"}


def test_meta_pruner_job_errors_name_the_parameter(tiny_zoo, tmp_path, capsys):
    path, _ = tiny_zoo
    with pytest.raises(PruneError, match="no group 'nope'") as info:
        train_meta_pruner(path, tmp_path / "p.safetensors", MetaPrunerOptions(group="nope"))
    assert info.value.parameter == "group"
    with pytest.raises(PruneError, match="saved as .safetensors") as info:
        train_meta_pruner(path, tmp_path / "p.pt")
    assert info.value.parameter == "output"
    assert main(["train-pruner", str(path), "--group", "nope", "-o",
                 str(tmp_path / "p.safetensors")]) == 1
    assert "error: argument --group: " in capsys.readouterr().err
