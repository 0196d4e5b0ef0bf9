"""Checkpoint files in, aligned / merged / interpolated results out: the
library calls behind ``weightspace align``, ``merge`` and ``interpolate``.

Every input is checked before anything is computed: each checkpoint must
match the architecture's spec (the error names the file and the key) and hold
finite weights (the error names the file and the parameter). Outputs are
written atomically, so a failure leaves no output file.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.align.batchnorm import batchnorm_modules
from weightspace.classify import evaluate, load_split
from weightspace.io import CheckpointError, atomic_write, load_state_dict, save_state_dict
from weightspace.spec import WeightSpaceSpec
from weightspace.spec.errors import StateDictMismatchError

logger = logging.getLogger(__name__)


def load_checked(path: str | os.PathLike[str], spec: WeightSpaceSpec) -> dict[str, Tensor]:
    """A checkpoint that matches ``spec`` and holds only finite values."""
    state = load_state_dict(path)
    try:
        spec.check_state_dict(state)
    except StateDictMismatchError as err:
        raise StateDictMismatchError(f"{path}: {err}") from err
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: parameter {name!r} holds NaN or Inf values; "
                                  f"refusing to use it")
    return {name: state[name] for name in spec.offsets}


@dataclass
class Scores:
    """Test loss and accuracy of named models (``None`` without data)."""

    results: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, name: str, model: nn.Module, state: Mapping[str, Tensor], data) -> None:
        loss, accuracy = evaluate(model, data.x_test, data.y_test, state)
        self.results[name] = {"loss": loss, "accuracy": accuracy}


# ------------------------------------------------------------------- align
def align_checkpoints(path_a, path_b, model: nn.Module, spec: WeightSpaceSpec,
                      output: str | os.PathLike[str], method: str = "weight", seed: int = 0,
                      data: str | None = None) -> dict[str, Any]:
    """Align checkpoint B to A and write the aligned B to ``output``.

    Returns:
        A JSON-able report: sweeps, objective, distance to A before and after,
        and (with ``data``) the accuracy of B before and after, which must
        agree: alignment does not change the function.
    """
    if method not in ("weight", "activation"):
        raise ValueError(f"alignment method {method!r} is not available; use 'weight' or "
                         f"'activation'")
    if method == "activation" and data is None:
        raise ValueError("activation matching needs data: pass --data digits or --data file.npz")
    state_a, state_b = load_checked(path_a, spec), load_checked(path_b, spec)
    split = load_split(data, (1, *spec.input_shape)) if data is not None else None
    result = _match(method, model, state_a, state_b, spec, split, seed)
    aligned = spec.permute(state_b, result.permutation)
    save_state_dict(aligned, output)
    report = {
        "output": str(output), "method": method, "sweeps": result.sweeps,
        "objective": result.objective,
        "distance_before": _distance(state_a, state_b),
        "distance_after": _distance(state_a, aligned),
        "permuted_spaces": sum(not torch.equal(p, torch.arange(len(p)))
                               for p in result.permutation.perms.values()),
    }
    if split is not None:
        scores = Scores()
        scores.add("b", model, state_b, split)
        scores.add("b_aligned", model, aligned, split)
        report["scores"] = scores.results
    return report


def _match(method: str, model: nn.Module, state_a, state_b, spec: WeightSpaceSpec, split,
           seed: int):
    from weightspace.align import activation_matching, weight_matching

    if method == "activation":
        return activation_matching(model, state_a, state_b, spec, split.x_train, seed=seed)
    return weight_matching(state_a, state_b, spec, seed=seed)


def _distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum()
                     for k in a if a[k].is_floating_point()) ** 0.5)


def _align_all(states: list[dict[str, Tensor]], spec: WeightSpaceSpec,
               base: dict[str, Tensor] | None, seed: int, method: str = "weight",
               model: nn.Module | None = None, split=None) -> list[dict[str, Tensor]]:
    """Every state in one frame: the base's if given, else (two models) the
    first one's, else MergeMany's common frame (weight matching only)."""
    from weightspace.align import merge_many

    def match(a, b):
        return _match(method, model, a, b, spec, split, seed).permutation

    if base is not None:
        return [spec.permute(s, match(base, s)) for s in states]
    if len(states) == 2:
        return [states[0], spec.permute(states[1], match(states[0], states[1]))]
    if method != "weight":
        raise ValueError("more than two models are merged with MergeMany, which uses weight "
                         "matching; pass --align weight, or --base")
    result = merge_many(states, spec, seed=seed)
    return [spec.permute(s, p) for s, p in zip(states, result.permutations, strict=True)]


# ------------------------------------------------------------------- merge
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
) -> dict[str, Any]:
    """Align (optionally) and merge checkpoints; write the merged state dict.

    After the merge, BatchNorm statistics are re-estimated on the training
    data when the model has BatchNorm and ``data`` is given; ``repair=True``
    applies REPAIR (two models, ``average``). With ``data``, the report has the
    test loss and accuracy of every input and of the merged model.
    ``config_copy`` is written beside the output as ``<output>.yaml``;
    ``dtype`` (e.g. ``"float16"``) casts the merged floating-point tensors.
    """
    from weightspace.align.repair import repair as repair_model
    from weightspace.merge.methods import merge

    if align not in ("weight", "activation", "none"):
        raise ValueError(f"--align {align!r} is not available; use weight, activation or none")
    if align == "activation" and data is None:
        raise ValueError("--align activation needs data: pass --data digits or --data file.npz")
    if len(paths) < 2 and base is None:
        raise ValueError("merging needs at least two checkpoints (or one and --base)")
    if repair and (method != "average" or len(paths) != 2 or data is None):
        raise ValueError("--repair needs exactly two checkpoints, --method average and --data")
    states = [load_checked(p, spec) for p in paths]
    base_state = load_checked(base, spec) if base is not None else None
    split = load_split(data, (1, *spec.input_shape)) if data is not None else None
    if align != "none":
        states = _align_all(states, spec, base_state, seed, align, model, split)
    merged = merge(method, states, base=base_state, weights=weights, **dict(parameters or {}))
    corrections = []
    if split is not None and repair:
        merged_model, model_a, model_b = (_loaded(model, s) for s in (merged, *states))
        merged = repair_model(merged_model, model_a, model_b, spec, split.x_train)
        corrections.append("repair")
    elif split is not None and bool(batchnorm_modules(model)):
        from weightspace.align.batchnorm import reset_batchnorm

        merged_model = reset_batchnorm(_loaded(model, merged), split.x_train)
        merged = {k: v.detach().clone() for k, v in merged_model.state_dict().items()}
        corrections.append("batchnorm-reset")
    if dtype is not None:
        cast = getattr(torch, dtype)
        merged = {k: v.to(cast) if v.is_floating_point() else v for k, v in merged.items()}
    save_state_dict(merged, output)
    report: dict[str, Any] = {"output": str(output), "method": method, "align": align,
                              "models": [str(p) for p in paths], "corrections": corrections}
    if config_copy is not None:
        import yaml

        with atomic_write(f"{output}.yaml", "w") as handle:
            yaml.safe_dump(dict(config_copy), handle, sort_keys=False)
        report["config_copy"] = f"{output}.yaml"
    if split is not None:
        scores = Scores()
        for i, state in enumerate(states):
            scores.add(f"model{i}" + ("_aligned" if align != "none" else ""), model, state,
                       split)
        scores.add("merged", model, merged, split)
        report["scores"] = scores.results
    return report


def _loaded(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    clone = copy.deepcopy(model)
    clone.load_state_dict(dict(state))
    return clone.eval()


# -------------------------------------------------------------- interpolate
def interpolate_checkpoints(path_a, path_b, model: nn.Module, spec: WeightSpaceSpec,
                            data: str = "digits", steps: int = 25, seed: int = 0,
                            plot: str | os.PathLike[str] | None = None,
                            json_path: str | os.PathLike[str] | None = None,
                            repair: bool = False) -> dict[str, Any]:
    """Loss and accuracy along the linear path from A to B, naive, after
    weight matching and after activation matching (and with REPAIR / BN reset
    when asked or needed), the barriers, a PNG plot and a JSON file."""
    from weightspace.align import activation_matching, weight_matching
    from weightspace.merge.barrier import barrier, interpolation_path, plot_barrier

    state_a, state_b = load_checked(path_a, spec), load_checked(path_b, spec)
    split = load_split(data, (1, *spec.input_shape))
    aligned = spec.permute(state_b, weight_matching(state_a, state_b, spec, seed=seed).permutation)
    bn_inputs = split.x_train if bool(batchnorm_modules(model)) else None
    curves: dict[str, list[dict[str, float]]] = {}
    common = dict(inputs=split.x_test, targets=split.y_test, steps=steps,
                  batchnorm_reset_inputs=bn_inputs)
    curves["naive"] = interpolation_path(model, state_a, state_b, **common)
    curves["weight matching"] = interpolation_path(model, state_a, aligned, **common)
    by_activations = spec.permute(state_b, activation_matching(
        model, state_a, state_b, spec, split.x_train, seed=seed).permutation)
    curves["activation matching"] = interpolation_path(model, state_a, by_activations, **common)
    if repair:
        curves["weight matching + REPAIR"] = interpolation_path(
            model, state_a, aligned, repair_inputs=split.x_train, spec=spec, **common)
    report = {"a": str(path_a), "b": str(path_b), "data": data, "steps": steps,
              "batchnorm_reset": bn_inputs is not None,
              "barriers": {name: barrier(path) for name, path in curves.items()},
              "paths": curves}
    if plot is not None:
        report["plot"] = str(plot_barrier(curves, plot, title=f"{Path(path_a).name} -> "
                                                           f"{Path(path_b).name}"))
    if json_path is not None:
        with atomic_write(json_path, "w") as handle:
            json.dump(report, handle, indent=1)
        report["json"] = str(json_path)
    return report
