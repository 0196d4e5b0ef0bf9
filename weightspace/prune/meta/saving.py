"""Saving and loading a :class:`~weightspace.prune.meta.MetaPruner`.

A pruner is one ``.safetensors`` file: its weights, and in the header (plain
JSON, so loading never runs code) its constructor arguments, the spec of its
architecture, a format version and optional training notes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from weightspace.prune.meta.pruner import MetaPruner
from weightspace.prune.structured import PruneError
from weightspace.spec import WeightSpaceSpec

__all__ = ["CONFIG_METADATA", "FORMAT_METADATA", "FORMAT_VERSION", "GMN_ARGUMENTS",
           "SPEC_METADATA", "TRAINING_METADATA", "load_meta_pruner", "save_meta_pruner",
           "training_notes"]

#: Metadata keys of a saved :class:`MetaPruner` (``.safetensors`` header).
CONFIG_METADATA = "weightspace.meta_pruner.config"
SPEC_METADATA = "weightspace.meta_pruner.spec"
FORMAT_METADATA = "weightspace.meta_pruner.format"
TRAINING_METADATA = "weightspace.meta_pruner.training"
FORMAT_VERSION = "1"

#: Constructor arguments of :class:`MetaPruner` that a saved config may set,
#: with the type each must have (loading builds the module from these alone).
GMN_ARGUMENTS: dict[str, type | tuple[type, ...]] = {
    "hidden": int, "num_layers": int, "fourier": int, "fourier_scale": (int, float),
    "aggr": str, "dropout": (int, float), "seed": int, "mode": str,
}


def save_meta_pruner(pruner: MetaPruner, path: str | os.PathLike[str],
                     training: Mapping[str, Any] | None = None) -> Path:
    """Save a pruner as ``.safetensors``: its weights, and in the header its
    constructor arguments and the spec of its architecture (JSON), so
    :func:`load_meta_pruner` rebuilds it without running code.

    Args:
        training: optional JSON-ready notes on how it was trained (stored
            under ``weightspace.meta_pruner.training``).
    """
    from weightspace.io import save_state_dict

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise PruneError(f"{path}: a meta-pruner is saved as .safetensors (its config lives in "
                         f"the header)", parameter="path")
    metadata = {FORMAT_METADATA: FORMAT_VERSION,
                CONFIG_METADATA: json.dumps(pruner.config, sort_keys=True),
                SPEC_METADATA: pruner.spec.to_json()}
    if training is not None:
        metadata[TRAINING_METADATA] = json.dumps(dict(training), sort_keys=True)
    state = {k: v.detach().cpu().contiguous() for k, v in pruner.state_dict().items()}
    return save_state_dict(state, path, metadata=metadata)


def _config_from_metadata(metadata: Mapping[str, str], source: str) -> dict[str, Any]:
    missing = [k for k in (FORMAT_METADATA, CONFIG_METADATA, SPEC_METADATA) if k not in metadata]
    if missing:
        raise PruneError(f"{source}: not a saved meta-pruner (metadata {missing} missing); save "
                         f"one with weightspace.prune.meta.save_meta_pruner")
    if metadata[FORMAT_METADATA] != FORMAT_VERSION:
        raise PruneError(f"{source}: meta-pruner format {metadata[FORMAT_METADATA]!r}, this "
                         f"version reads {FORMAT_VERSION!r}")
    try:
        config = json.loads(metadata[CONFIG_METADATA])
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except ValueError as err:
        raise PruneError(f"{source}: metadata {CONFIG_METADATA!r} is corrupt ({err})") from err
    unknown = sorted(set(config) - set(GMN_ARGUMENTS))
    if unknown:
        raise PruneError(f"{source}: unknown meta-pruner arguments {unknown}")
    for key, value in config.items():
        expected = GMN_ARGUMENTS[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise PruneError(f"{source}: meta-pruner argument {key}={value!r} has the wrong type")
    return config


def load_meta_pruner(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                     ) -> MetaPruner:
    """Load a pruner saved by :func:`save_meta_pruner`; the module is built
    from the header's plain-JSON arguments and spec and the tensors are read
    with safetensors, so loading never runs code.

    Returns:
        The pruner, in eval mode.
    """
    from weightspace.io import load_metadata, load_state_dict

    metadata = load_metadata(path)
    config = _config_from_metadata(metadata, str(path))
    spec = WeightSpaceSpec.from_json(metadata[SPEC_METADATA])
    pruner = MetaPruner(spec, **config)
    state = load_state_dict(path)
    try:
        pruner.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PruneError(f"{path}: the weights do not match the meta-pruner its header "
                         f"describes ({err})") from err
    return pruner.to(map_location).eval()


def training_notes(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``training`` notes stored by :func:`save_meta_pruner`, or ``None``."""
    from weightspace.io import load_metadata

    text = load_metadata(path).get(TRAINING_METADATA)
    return None if text is None else json.loads(text)
