"""The linear assignment every hard alignment solves, and what the searches share.

Weight matching (:mod:`weightspace.align.weight_matching`), activation
matching (:mod:`weightspace.align.activation_matching`) and the hard
projection of Sinkhorn matching (:mod:`weightspace.align.sinkhorn`) all end in
the same problem: given a cost matrix ``C [n, n]`` between A's and B's neurons
of one space, find the permutation maximising ``Σ_i C[i, perm[i]]``
(:func:`solve_assignment`, by :func:`scipy.optimize.linear_sum_assignment`;
GroupNorm spaces are solved exactly over the permutations that keep their
groups together). This module also holds what those searches share around
it: the result of a hard search (:class:`WeightMatchingResult`), the check of
the labelled state dicts they take, their compute dtype, their starting
permutation and the neuron-to-axis index expansion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.symmetry import Permutation, check_permutation

__all__ = [
    "WeightMatchingResult",
    "axes_by_parameter",
    "check_states",
    "compute_dtype",
    "resolve_init",
    "solve_assignment",
]


@dataclass(frozen=True)
class WeightMatchingResult:
    """The outcome of a hard alignment (:func:`~weightspace.align.weight_matching`,
    :func:`~weightspace.align.activation_matching`).

    Attributes:
        permutation: maps B onto A's frame: ``spec.permute(state_b,
            permutation)`` is the aligned B. Holds every permutable space.
        sweeps: number of sweeps run (the last one found no improvement when
            ``converged``).
        objective: the final ``Σ <W_a, π(W_b)>`` over the cost parameters,
            recomputed from the weights (products in the compute dtype, float64
            accumulation).
        history: the objective before the first sweep, then after every sweep
            (tracked from the cost matrices; non-decreasing).
        converged: ``True`` when a sweep found no improvement, ``False`` when
            ``max_sweeps`` stopped the search.
        solves: assignment problems solved; a space is skipped (not counted)
            when no permutation its cost depends on changed since its last
            solve, which cannot change the result.
    """

    permutation: Permutation
    sweeps: int
    objective: float
    history: tuple[float, ...] = field(repr=False)
    converged: bool
    solves: int = 0


def solve_assignment(cost: np.ndarray, blocks: int = 1) -> np.ndarray:
    """The permutation ``perm`` maximising ``Σ_i cost[i, perm[i]]``.

    With ``blocks = G > 1`` only permutations that map each of the ``G``
    contiguous blocks onto a block are allowed (GroupNorm groups); the optimum
    over that group is exact: the best assignment inside every (block, block)
    pair, then the best assignment of blocks under those values.

    Shapes:
        - cost: ``[n, n]``
        - output: ``[n]`` (int64)
    """
    n = cost.shape[0]
    if blocks <= 1 or blocks >= n:
        _, col = linear_sum_assignment(cost, maximize=True)
        return col
    size = n // blocks
    sub = cost.reshape(blocks, size, blocks, size).transpose(0, 2, 1, 3)
    values = np.empty((blocks, blocks))
    inner = np.empty((blocks, blocks, size), dtype=np.int64)
    rows = np.arange(size)
    for g in range(blocks):
        for h in range(blocks):
            _, col = linear_sum_assignment(sub[g, h], maximize=True)
            inner[g, h] = col
            values[g, h] = sub[g, h][rows, col].sum()
    _, block_col = linear_sum_assignment(values, maximize=True)
    return (block_col[:, None] * size + inner[np.arange(blocks), block_col]).reshape(-1)


def check_states(spec: WeightSpaceSpec, finite: bool = True,
                 **states: Mapping[str, Tensor]) -> None:
    """Check every state dict, named by its keyword (``state_a=…``), with
    :meth:`WeightSpaceSpec.check_state_dict`.

    Args:
        spec: the architecture every state dict must match.
        finite: also require finite floating values.
        **states: ``label=state_dict``; the label names the state dict in the
            messages (``state_b['4.weight'] contains NaN values …``).

    Raises:
        TypeError: a state dict is not a mapping (a wrong argument, not a
            wrong checkpoint).
        StateDictMismatchError: a missing/extra key or a wrong shape.
        NonFiniteError: ``finite=True`` and NaN or infinite values.
    """
    for label, state in states.items():
        if not isinstance(state, Mapping):
            raise TypeError(f"{label} must be a state dict (a mapping of tensors), "
                            f"got {type(state).__name__}")
        spec.check_state_dict(state, finite=finite, label=label)


def compute_dtype(*states: Mapping[str, Tensor]) -> torch.dtype:
    """float64 if any floating entry is float64, else float32."""
    for state in states:
        for t in state.values():
            if t.dtype == torch.float64:
                return torch.float64
    return torch.float32


def resolve_init(spec: WeightSpaceSpec, init: Permutation | None) -> dict[str, Tensor]:
    """The starting permutation of every permutable space (identity by default)."""
    perms = {s.name: torch.arange(s.size) for s in spec.permutable_spaces}
    if init is not None:
        if not isinstance(init, Permutation):
            raise TypeError(f"init must be a Permutation, got {type(init).__name__}")
        check_permutation(spec, init)
        for name, p in init.perms.items():
            perms[name] = p.detach().to("cpu", torch.long).clone()
    return perms


def axes_by_parameter(spec: WeightSpaceSpec, spaces: Iterable[str]
                      ) -> dict[str, list[tuple[int, str, int]]]:
    """``parameter -> [(axis, space, block), ...]``: the axes of each parameter
    that index one of ``spaces`` (read from :meth:`WeightSpaceSpec.axes_of`),
    in the parameter's own axis order; parameters indexing none are left out.
    """
    out: dict[str, list[tuple[int, str, int]]] = {}
    for space in spaces:
        for ref in spec.axes_of(space):
            out.setdefault(ref.parameter, []).append((ref.axis, space, ref.block))
    return {name: sorted(axes) for name, axes in out.items()}
