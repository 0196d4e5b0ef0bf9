"""Metanetworks by name, for configuration files and the command line."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

from weightspace.graph.template import GraphTemplate

#: name -> ("module:Class", fixed keyword arguments, input kind)
METANETWORKS: dict[str, tuple[str, dict[str, Any], str]] = {
    "gmn": ("weightspace.nn.gmn:GMN", {}, "graph"),
    "transformer": ("weightspace.nn.transformer:GraphTransformer", {}, "graph"),
    "deepsets": ("weightspace.nn.deepsets:EdgeDeepSets", {}, "graph"),
    "nfn-np": ("weightspace.nn.nfn:NFN", {"mode": "np"}, "flat"),
    "nfn-hnp": ("weightspace.nn.nfn:NFN", {"mode": "hnp"}, "flat"),
    "dwsnet": ("weightspace.nn.dwsnet:DWSNet", {}, "flat"),
    "statnn": ("weightspace.nn.statnn:StatNN", {}, "flat"),
    "flat-mlp": ("weightspace.nn.flat_mlp:FlatMLP", {}, "flat"),
}
"""Graph models take batches of any architecture the graph can express (mixed
batches included); flat models are built for one architecture."""


def metanetwork_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``."""
    if name not in METANETWORKS:
        raise ValueError(f"unknown metanetwork {name!r}; choose one of {sorted(METANETWORKS)}")
    target = METANETWORKS[name][0]
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def is_graph_model(name: str) -> bool:
    """Whether ``name`` takes parameter graphs of any architecture (else one
    architecture's flat parameters)."""
    metanetwork_class(name)  # validates the name
    return METANETWORKS[name][2] == "graph"


def build_metanetwork(name: str, template: GraphTemplate, out_dim: int,
                      model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """``METANETWORKS[name]`` built for ``template``'s graphs with ``out_dim``
    outputs and ``model_args`` (``hidden``, ``num_layers``, ``head`` …).

    Raises:
        ValueError: an unknown name, or an argument the model does not take
            (the message lists the model's arguments).
    """
    cls = metanetwork_class(name)
    kwargs = dict(METANETWORKS[name][1])
    kwargs.update(model_args or {})
    try:
        return cls(template, out_dim, **kwargs)
    except TypeError as exc:
        import inspect

        accepted = [p for p in inspect.signature(cls).parameters if p not in ("template", "out_dim")]
        raise ValueError(f"cannot build {name!r} with {kwargs}: {exc}; its arguments are {accepted}") from exc


def count_trainable_parameters(model: nn.Module) -> int:
    """Trainable values of a module (entries of its parameters that require
    a gradient), e.g. a metanetwork's size; for the values of an
    architecture from its spec, see :func:`weightspace.prune.count_spec_parameters`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["METANETWORKS", "build_metanetwork", "count_trainable_parameters", "is_graph_model", "metanetwork_class"]
