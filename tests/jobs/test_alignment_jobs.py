"""The align, merge and interpolate jobs called from Python on real
checkpoint files: outputs, frozen reports whose ``to_dict()`` is what the CLI
prints with ``--json``, and errors that name the parameter, never a flag."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from tests.jobs.conftest import MODEL_ARGS, as_json, mlp
from weightspace.errors import WeightspaceError
from weightspace.io import load_state_dict, save_state_dict
from weightspace.jobs import (
    AlignReport,
    InterpolationReport,
    MergeReport,
    align_checkpoints,
    interpolate_checkpoints,
    load_checked,
    merge_checkpoints,
    merge_from_config,
)
from weightspace.spec import NonFiniteError, StateDictMismatchError


def test_align_job_report_and_output(checkpoints, tmp_path, cli_json):
    model, spec = mlp()
    output = tmp_path / "b-aligned.safetensors"
    report = align_checkpoints(checkpoints[0], checkpoints[1], model, spec, output,
                               data="digits")
    assert isinstance(report, AlignReport)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.sweeps = 0
    assert report.output == str(output) and report.method == "weight"
    assert report.distance_after < report.distance_before and report.permuted_spaces == 2
    # the aligned B computes what B computes
    x = torch.randn(16, 64)
    with torch.no_grad():
        model.load_state_dict(load_state_dict(checkpoints[1]))
        expected = model(x)
        model.load_state_dict(load_state_dict(output))
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert report.scores["b_aligned"]["accuracy"] == report.scores["b"]["accuracy"]
    assert as_json(report) == cli_json("align", checkpoints[0], checkpoints[1], *MODEL_ARGS,
                                       "-o", output, "--data", "digits")
    # without data there are no scores, and the key is absent rather than null
    bare = align_checkpoints(checkpoints[0], checkpoints[1], model, spec, output)
    assert bare.scores is None and "scores" not in bare.to_dict()
    assert as_json(bare) == cli_json("align", checkpoints[0], checkpoints[1], *MODEL_ARGS,
                                     "-o", output)


def test_merge_job_report_and_cli_json(checkpoints, tmp_path, cli_json):
    model, spec = mlp()
    output = tmp_path / "merged.safetensors"
    report = merge_checkpoints(checkpoints[:2], model, spec, output, data="digits")
    assert isinstance(report, MergeReport)
    assert report.models == [str(p) for p in checkpoints[:2]] and report.corrections == []
    assert set(report.scores) == {"model0_aligned", "model1_aligned", "merged"}
    assert set(load_state_dict(output)) == set(spec.offsets)
    assert as_json(report) == cli_json("merge", *checkpoints[:2], *MODEL_ARGS, "-o", output,
                                       "--data", "digits")
    three = merge_checkpoints(checkpoints, model, spec, tmp_path / "three.safetensors",
                              method="ties", base=checkpoints[0], align="none",
                              parameters={"density": 0.5})
    assert three.method == "ties" and "scores" not in three.to_dict()


def test_merge_from_config_writes_the_copy(checkpoints, tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "merge_method": "task-arith", "base_model": str(checkpoints[0]),
        "models": [{"model": str(checkpoints[1])}, {"model": str(checkpoints[2])}],
        "parameters": {"lambda": 0.5}, "align": "none",
        "architecture": {"model": "mlp", "model_args": {"hidden": [24, 24]}}}))
    output = tmp_path / "from-config.safetensors"
    report = merge_from_config(config, output)
    assert report.method == "task-arith" and report.config_copy == f"{output}.yaml"
    assert yaml.safe_load(open(report.config_copy))["parameters"] == {"scaling": 0.5}
    json.dumps(report.to_dict())
    no_architecture = tmp_path / "bare.yaml"
    no_architecture.write_text(yaml.safe_dump({
        "merge_method": "average", "models": [{"model": str(p)} for p in checkpoints[:2]]}))
    with pytest.raises(WeightspaceError, match="'architecture' is required") as info:
        merge_from_config(no_architecture, output)
    assert info.value.parameter == "config"


@pytest.mark.parametrize("kwargs, parameter, message", [
    (dict(align="activation"), "data", r"align='activation' needs data"),
    (dict(align="sideways"), "align", r"align='sideways' is not available"),
    (dict(repair=True), "repair", r"repair=True needs exactly two checkpoints"),
])
def test_merge_job_errors_name_the_parameter(checkpoints, tmp_path, kwargs, parameter, message):
    model, spec = mlp()
    output = tmp_path / "never.safetensors"
    with pytest.raises(WeightspaceError, match=message) as info:
        merge_checkpoints(checkpoints[:2], model, spec, output, **kwargs)
    assert info.value.parameter == parameter and "--" not in str(info.value)
    assert not output.exists()
    with pytest.raises(WeightspaceError) as info:
        merge_checkpoints(checkpoints[:1], model, spec, output)
    assert info.value.parameter == "paths"


def test_cli_shows_the_flag_of_the_parameter(checkpoints, tmp_path, capsys):
    from weightspace.cli import main

    output = tmp_path / "never.safetensors"
    assert main(["merge", *map(str, checkpoints[:2]), *MODEL_ARGS, "--align", "activation",
                 "-o", str(output)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("weightspace merge: error: argument --data: align='activation' needs "
                          "data") and len(err.splitlines()) == 1
    assert not output.exists()


def test_interpolate_job_report_is_the_json_file(checkpoints, tmp_path):
    model, spec = mlp()
    plot, json_path = tmp_path / "barrier.png", tmp_path / "barrier.json"
    report = interpolate_checkpoints(checkpoints[0], checkpoints[1], model, spec, steps=3,
                                     plot=plot, json_path=json_path)
    assert isinstance(report, InterpolationReport)
    assert list(report.paths) == ["naive", "weight matching", "activation matching"]
    assert [p["lam"] for p in report.paths["naive"]] == [0.0, 0.5, 1.0]
    assert report.plot == str(plot) and report.json == str(json_path)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads(json_path.read_text())
    assert written == {k: v for k, v in as_json(report).items() if k != "json"}
    bare = interpolate_checkpoints(checkpoints[0], checkpoints[1], model, spec, steps=3)
    assert "plot" not in bare.to_dict() and "json" not in bare.to_dict()


def test_load_checked_names_file_and_entry(checkpoints, tmp_path):
    _, spec = mlp()
    state = load_checked(checkpoints[0], spec)
    assert list(state) == list(spec.offsets)
    broken = dict(state)
    broken["layers.3.weight"] = broken["layers.3.weight"].clone()
    broken["layers.3.weight"][0, 0] = float("inf")
    path = save_state_dict(broken, tmp_path / "inf.safetensors")
    with pytest.raises(NonFiniteError, match=r"inf\.safetensors\['layers\.3\.weight'\].*infinite"):
        load_checked(path, spec)
    del broken["layers.3.weight"]
    path = save_state_dict(broken, tmp_path / "missing.safetensors")
    with pytest.raises(StateDictMismatchError, match=r"missing\.safetensors is missing "
                                                     r"'layers\.3\.weight'"):
        load_checked(path, spec)
