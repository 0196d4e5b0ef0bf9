"""Align checkpoint B to checkpoint A: the job behind ``weightspace align``.

Both checkpoints are checked against the architecture's spec (keys, shapes,
finite values) before anything is computed. B's hidden neurons are permuted
into A's frame by weight matching (data-free; Ainsworth et al., "Git
Re-Basin", ICLR 2023) or activation matching (needs data); the aligned B
computes exactly what B computes, so its accuracy must not change (the
report has both when data is given). The output is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.align import WeightMatchingResult, activation_matching, weight_matching
from weightspace.data import Split
from weightspace.errors import WeightspaceError
from weightspace.io import save_state_dict
from weightspace.jobs.checkpoints import load_checked, load_data, score_state
from weightspace.jobs.report import report_dict
from weightspace.spec import WeightSpaceSpec

#: How a job brings B into A's frame: ``"weight"`` matching (data-free) or
#: ``"activation"`` matching (needs data).
MATCHING_METHODS = ("weight", "activation")


@dataclass(frozen=True)
class AlignReport:
    """What :func:`align_checkpoints` did (``--json`` prints :meth:`to_dict`).

    Args:
        output: the aligned B that was written.
        method: ``"weight"`` or ``"activation"``.
        sweeps: coordinate-descent sweeps of the matching.
        objective: its final objective.
        distance_before: L2 distance from A to B over the floating entries.
        distance_after: the same to the aligned B.
        permuted_spaces: spaces whose permutation is not the identity.
        scores: with data, ``{"b": {"loss", "accuracy"}, "b_aligned": ...}``
            (equal up to summation order); else ``None``.
    """

    output: str
    method: str
    sweeps: int
    objective: float
    distance_before: float
    distance_after: float
    permuted_spaces: int
    scores: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return report_dict(self, omit_if_none=("scores",))


def check_matching_method(method: str, data: Any, parameter: str = "method") -> None:
    """Refuse an unknown matching method, or activation matching without data.

    Args:
        method: the requested matching method.
        data: the job's data argument (``None`` when not given).
        parameter: the job's name for the method argument (``"method"`` for
            :func:`align_checkpoints`, ``"align"`` for a merge).
    """
    if method not in MATCHING_METHODS:
        raise WeightspaceError(f"{parameter}={method!r} is not a matching method; use one of "
                               f"{', '.join(map(repr, MATCHING_METHODS))}", parameter=parameter)
    if method == "activation" and data is None:
        raise WeightspaceError(f"{parameter}='activation' needs data to measure activations; "
                               f"pass data='digits' or data='file.npz'", parameter="data")


def match(method: str, model: nn.Module | None, state_a: Mapping[str, Tensor],
          state_b: Mapping[str, Tensor], spec: WeightSpaceSpec, data: Split | None,
          seed: int = 0) -> WeightMatchingResult:
    """The permutation that brings ``state_b`` into ``state_a``'s frame.

    Args:
        method: ``"weight"`` (data-free) or ``"activation"`` (runs ``model``
            on ``data``'s training inputs).
        model: a module of the architecture (activation matching only).
        data: the split whose training inputs activation matching uses.
        seed: order of the matching sweeps.
    """
    if method == "activation":
        return activation_matching(model, state_a, state_b, spec, data.x_train, seed=seed)
    return weight_matching(state_a, state_b, spec, seed=seed)


def state_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """L2 distance between two state dicts over their floating entries (float64)."""
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum()
                     for k in a if a[k].is_floating_point()) ** 0.5)


def align_checkpoints(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str],
                      model: nn.Module, spec: WeightSpaceSpec, output: str | os.PathLike[str],
                      method: str = "weight", seed: int = 0,
                      data: str | None = None) -> AlignReport:
    """Align checkpoint B to A and write the aligned B to ``output``.

    Args:
        path_a: the reference checkpoint.
        path_b: the checkpoint to permute.
        model: a module of the architecture (its own weights are not used).
        spec: ``model``'s spec.
        output: the aligned B (``.safetensors`` or ``.pt``, written atomically).
        method: ``"weight"`` or ``"activation"`` matching (:data:`MATCHING_METHODS`).
        seed: order of the matching sweeps.
        data: ``"digits"`` or an ``.npz``: the activations of activation
            matching, and B's accuracy before and after.

    Returns:
        The :class:`AlignReport`.

    Raises:
        WeightspaceError: an unknown ``method``, activation matching without
            ``data``, or a checkpoint that does not match ``spec``.
    """
    check_matching_method(method, data)
    state_a, state_b = load_checked(path_a, spec), load_checked(path_b, spec)
    split = load_data(data, spec) if data is not None else None
    result = match(method, model, state_a, state_b, spec, split, seed)
    aligned = spec.permute(state_b, result.permutation)
    save_state_dict(aligned, output)
    scores = None
    if split is not None:
        scores = {"b": score_state(model, state_b, split),
                  "b_aligned": score_state(model, aligned, split)}
    return AlignReport(
        output=str(output), method=method, sweeps=result.sweeps, objective=result.objective,
        distance_before=state_distance(state_a, state_b),
        distance_after=state_distance(state_a, aligned),
        permuted_spaces=sum(not torch.equal(p, torch.arange(len(p)))
                            for p in result.permutation.perms.values()),
        scores=scores)


__all__ = ["MATCHING_METHODS", "AlignReport", "align_checkpoints", "check_matching_method",
           "match", "state_distance"]
