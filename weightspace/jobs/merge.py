"""Checkpoints in, one merged checkpoint out: the job behind ``weightspace merge``.

Every checkpoint is checked against the architecture's spec (keys, shapes,
finite values) first. The models are brought into one frame — the base
model's when there is one, the first model's for two, else MergeMany's
common frame (Ainsworth et al., "Git Re-Basin", ICLR 2023) — then merged
with a method of :mod:`weightspace.merge.methods` (averaging, task
arithmetic, TIES, DARE). With data the merged model is corrected: REPAIR
(Jordan et al., ICLR 2023) for two averaged models when asked, otherwise a
BatchNorm reset when the model has BatchNorm. The output (and a copy of a
merge config beside it) is written atomically.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from weightspace.align import merge_many
from weightspace.align.batchnorm import batchnorm_modules, reset_batchnorm
from weightspace.align.repair import repair as repair_merged
from weightspace.data import Split
from weightspace.errors import WeightspaceError
from weightspace.io import atomic_write, save_state_dict
from weightspace.jobs.align import check_matching_method, match
from weightspace.jobs.checkpoints import load_checked, load_data, score_state
from weightspace.jobs.report import report_dict
from weightspace.merge.config import (
    ALIGN_METHODS,
    NO_ALIGNMENT,
    MergeConfig,
    MergeConfigError,
    load_merge_config,
)
from weightspace.merge.methods import merge
from weightspace.spec import WeightSpaceSpec, trace


@dataclass(frozen=True)
class MergeReport:
    """What :func:`merge_checkpoints` did (``--json`` prints :meth:`to_dict`).

    Args:
        output: the merged checkpoint that was written.
        method: the merge method.
        align: ``"weight"``, ``"activation"`` or ``"none"``.
        models: the merged checkpoints, in order.
        corrections: what corrected the merged model: ``["repair"]``,
            ``["batchnorm-reset"]`` or ``[]``.
        config_copy: the copy of the merge config written beside the
            output, if any.
        scores: with data, test ``{"loss", "accuracy"}`` of every input
            (``model0_aligned``… or ``model0``… without alignment) and of
            the ``merged`` model; else ``None``.
    """

    output: str
    method: str
    align: str
    models: list[str]
    corrections: list[str]
    config_copy: str | None = None
    scores: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return report_dict(self, omit_if_none=("config_copy", "scores"))


def align_all(states: list[dict[str, Tensor]], spec: WeightSpaceSpec,
              base: dict[str, Tensor] | None, seed: int, method: str = "weight",
              model: nn.Module | None = None, data: Split | None = None
              ) -> list[dict[str, Tensor]]:
    """Every state in one frame: the base's if given, else (two models) the
    first one's, else MergeMany's common frame (weight matching only).

    Args:
        method: ``"weight"`` or ``"activation"`` matching (the latter runs
            ``model`` on ``data``).
    """
    def permutation(a: dict[str, Tensor], b: dict[str, Tensor]):
        return match(method, model, a, b, spec, data, seed).permutation

    if base is not None:
        return [spec.permute(s, permutation(base, s)) for s in states]
    if len(states) == 2:
        return [states[0], spec.permute(states[1], permutation(states[0], states[1]))]
    if method != "weight":
        raise WeightspaceError("more than two models are merged with MergeMany, which uses "
                               "weight matching; pass align='weight', or a base", parameter="align")
    result = merge_many(states, spec, seed=seed)
    return [spec.permute(s, p) for s, p in zip(states, result.permutations, strict=True)]


def _check_request(paths: Sequence[Any], method: str, base: Any, align: str, repair: bool,
                   data: str | None) -> None:
    if align != NO_ALIGNMENT and align not in ALIGN_METHODS:
        choices = [*ALIGN_METHODS.names(), NO_ALIGNMENT]
        raise WeightspaceError(f"align={align!r} is not available; use one of "
                               f"{', '.join(map(repr, choices))}", parameter="align")
    if align != NO_ALIGNMENT:
        check_matching_method(align, data, parameter="align")
    if len(paths) < 2 and base is None:
        raise WeightspaceError("merging needs at least two checkpoints in paths (or one and a "
                               "base)", parameter="paths")
    if repair and (method != "average" or len(paths) != 2 or data is None):
        raise WeightspaceError("repair=True needs exactly two checkpoints, method='average' and "
                               "data", parameter="repair")


def _merged(method: str, states: list[dict[str, Tensor]], base: dict[str, Tensor] | None,
            weights: Sequence[float] | None, parameters: Mapping[str, Any]
            ) -> dict[str, Tensor]:
    return merge(method, states, base=base, weights=weights, **dict(parameters))


def _corrected(merged: dict[str, Tensor], states: list[dict[str, Tensor]], model: nn.Module,
               spec: WeightSpaceSpec, data: Split | None, repair: bool
               ) -> tuple[dict[str, Tensor], list[str]]:
    """REPAIR (two models) or a BatchNorm reset of the merged model, with data."""
    if data is not None and repair:
        merged_model, model_a, model_b = (_loaded(model, s) for s in (merged, *states))
        return repair_merged(merged_model, model_a, model_b, spec, data.x_train), ["repair"]
    if data is not None and bool(batchnorm_modules(model)):
        merged_model = reset_batchnorm(_loaded(model, merged), data.x_train)
        return ({k: v.detach().clone() for k, v in merged_model.state_dict().items()},
                ["batchnorm-reset"])
    return merged, []


def merge_checkpoints(
    paths: Sequence[str | os.PathLike[str]],
    model: nn.Module,
    spec: WeightSpaceSpec,
    output: str | os.PathLike[str],
    method: str = "average",
    base: str | os.PathLike[str] | None = None,
    align: str = "weight",
    weights: Sequence[float] | None = None,
    parameters: Mapping[str, Any] | None = None,
    repair: bool = False,
    data: str | None = None,
    seed: int = 0,
    config_copy: Mapping[str, Any] | None = None,
    dtype: str | None = None,
) -> MergeReport:
    """Align (optionally) and merge checkpoints; write the merged state dict.

    Args:
        paths: the checkpoints to merge (at least two, or one and ``base``).
        model: a module of the architecture (its own weights are not used).
        spec: ``model``'s spec.
        output: the merged checkpoint (written atomically).
        method: a merge method (:data:`weightspace.merge.MERGE_METHODS`).
        base: the base model of task vectors (``task-arith``, ``ties``,
            ``dare``); also the frame the models are aligned to.
        align: ``"weight"``, ``"activation"`` (needs ``data``) or ``"none"``.
        weights: one weight per model.
        parameters: the method's keyword arguments (``scaling``, ``density``,
            ``seed`` …).
        repair: REPAIR the merged model (two models, ``average``, needs
            ``data``); without it a model with BatchNorm gets its statistics
            re-estimated when ``data`` is given.
        data: ``"digits"`` or an ``.npz``: corrections and test scores.
        seed: order of the matching sweeps.
        config_copy: a merge config written beside the output as
            ``<output>.yaml``.
        dtype: cast the merged floating-point tensors (e.g. ``"float16"``).

    Returns:
        The :class:`MergeReport`.

    Raises:
        WeightspaceError: a request that cannot be met (the error names the
            parameter), or a checkpoint that does not match ``spec``.
    """
    _check_request(paths, method, base, align, repair, data)
    states = [load_checked(p, spec) for p in paths]
    base_state = load_checked(base, spec) if base is not None else None
    split = load_data(data, spec) if data is not None else None
    if align != NO_ALIGNMENT:
        states = align_all(states, spec, base_state, seed, align, model, split)
    merged = _merged(method, states, base_state, weights, parameters or {})
    merged, corrections = _corrected(merged, states, model, spec, split, repair)
    if dtype is not None:
        cast = getattr(torch, dtype)
        merged = {k: v.to(cast) if v.is_floating_point() else v for k, v in merged.items()}
    save_state_dict(merged, output)
    copy_path = None
    if config_copy is not None:
        copy_path = f"{output}.yaml"
        with atomic_write(copy_path, "w") as handle:
            yaml.safe_dump(dict(config_copy), handle, sort_keys=False)
    scores = None
    if split is not None:
        suffix = "_aligned" if align != NO_ALIGNMENT else ""
        scores = {f"model{i}{suffix}": score_state(model, state, split)
                  for i, state in enumerate(states)}
        scores["merged"] = score_state(model, merged, split)
    return MergeReport(output=str(output), method=method, align=align,
                       models=[str(p) for p in paths], corrections=corrections,
                       config_copy=copy_path, scores=scores)


def merge_from_config(config: MergeConfig | str | os.PathLike[str],
                      output: str | os.PathLike[str], seed: int = 0) -> MergeReport:
    """Merge what a mergekit-style YAML config describes
    (:func:`weightspace.merge.load_merge_config`): its models, method,
    parameters, alignment, corrections and dtype, on the architecture it
    names; a copy of the config (absolute paths) is written beside the output.

    Args:
        config: the config file, or one already loaded.
        output: the merged checkpoint.
        seed: order of the matching sweeps.

    Raises:
        MergeConfigError: a config without an ``architecture`` (or without
            an input shape for user code), or any problem of the file.
    """
    if not isinstance(config, MergeConfig):
        config = load_merge_config(config)
    if config.architecture is None:
        raise MergeConfigError(f"{config.path}: field 'architecture' is required to merge from a "
                               f"config (the module the checkpoints belong to)",
                               parameter="config")
    model, shape = config.architecture.build()
    if shape is None:
        raise MergeConfigError(f"{config.path}: field 'architecture.input_shape' is required for "
                               f"{config.architecture.model!r}", parameter="config")
    kwargs = config.method_kwargs()
    weights = kwargs.pop("weights")
    return merge_checkpoints(
        [m.model for m in config.models], model, trace(model, shape), output,
        method=config.merge_method, base=config.base_model, align=config.align,
        weights=weights, parameters=kwargs, repair=config.repair,
        data=None if config.data is None else str(config.data), seed=seed,
        config_copy=config.as_dict(), dtype=config.dtype)


def _loaded(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    clone = copy.deepcopy(model)
    clone.load_state_dict(dict(state))
    return clone.eval()


__all__ = ["MergeReport", "align_all", "merge_checkpoints", "merge_from_config"]
