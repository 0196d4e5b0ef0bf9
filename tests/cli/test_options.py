"""Flags generated from a frozen options dataclass (``add_options`` /
``options_from_args``), as the prune and train-pruner options will use."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from weightspace.cli._common import add_options, options_from_args


class LoadedPruner:
    """Stands for an object that only Python callers pass (a loaded model)."""


@dataclass(frozen=True)
class SampleOptions:
    epochs: int = field(metadata={"help": "passes over the data"})
    sparsity: float | None = field(default=None, metadata={"help": "fraction of weights zeroed"})
    structured: bool = field(default=False, metadata={"help": "remove neurons"})
    rescale: bool = field(default=True, metadata={"help": "rescale what is kept"})
    method: str = field(default="magnitude", metadata={"help": "importance"})
    num_layers: int = field(default=3, metadata={"help": "GMN layers"})
    metanet: str | os.PathLike[str] | LoadedPruner | None = field(
        default=None, metadata={"help": "a trained pruner"})
    weights: tuple[float, ...] | None = field(default=None, metadata={"help": "one per model"})
    lr: int | float = 1e-3


def _parser(**kwargs: Any) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sample")
    add_options(parser, SampleOptions, **kwargs)
    return parser


def test_defaults_round_trip_to_the_dataclass():
    args = _parser().parse_args(["--epochs", "5"])
    assert options_from_args(args, SampleOptions) == SampleOptions(epochs=5)


def test_types_switches_sequences_and_the_flag_table():
    args = _parser(choices={"method": ["magnitude", "taylor"]}).parse_args(
        ["--epochs", "2", "--sparsity", "0.5", "--structured", "--no-rescale", "--method",
         "taylor", "--layers", "4", "--metanet", "p.safetensors", "--weights", "1", "0.5",
         "--lr", "0.01"])
    options = options_from_args(args, SampleOptions)
    # num_layers is --layers: the flag comes from PARAMETER_FLAGS, the one table
    assert options == SampleOptions(epochs=2, sparsity=0.5, structured=True, rescale=False,
                                    method="taylor", num_layers=4, metanet="p.safetensors",
                                    weights=(1.0, 0.5), lr=0.01)
    assert isinstance(options.weights, tuple) and isinstance(options.lr, float)


def test_required_field_choices_and_help(capsys):
    parser = _parser(choices={"method": ["magnitude", "taylor"]})
    with pytest.raises(SystemExit) as info:
        parser.parse_args([])
    assert info.value.code == 2 and "--epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--epochs", "1", "--method", "meta"])
    assert "invalid choice: 'meta'" in capsys.readouterr().err
    text = parser.format_help()
    for words in ("--layers LAYERS", "GMN layers (default 3)", "--structured",
                  "--rescale, --no-rescale", "fraction of weights zeroed", "--weights WEIGHTS"):
        assert words in text, words
    assert "--num-layers" not in text and "--method {magnitude,taylor}" in text


def test_excluded_fields_are_set_by_the_verb():
    args = _parser(exclude=("epochs", "metanet")).parse_args([])
    assert not hasattr(args, "epochs") and not hasattr(args, "metanet")
    assert options_from_args(args, SampleOptions, epochs=7).epochs == 7


def test_mistakes_in_the_options_class_are_type_errors():
    @dataclass(frozen=True)
    class Bad:
        mapping: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="Bad.mapping"):
        add_options(argparse.ArgumentParser(), Bad)
    with pytest.raises(TypeError, match="not flags"):
        _parser(choices={"no_such_field": ["x"]})
