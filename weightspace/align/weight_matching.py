"""Git Re-Basin weight matching: permute model B into model A's frame.

Reference: Ainsworth, Hayase & Srinivasa 2023, "Git Re-Basin: Merging Models
modulo Permutation Symmetries" (ICLR 2023), Sec. 3.2 / Algorithm 1
("permutation coordinate descent").

Weight matching maximises the inner product of the two weight vectors over the
permutation symmetries of B,

    J(π) = Σ_parameters <W_a, π(W_b)>,

one neuron space at a time. With every other space fixed, ``J`` is linear in
the permutation ``P_p`` of space ``p``: it is ``trace(P_p^T C_p)`` with the
cost matrix

    C_p = Σ over every (parameter, axis) of p
              W_a[axis→0].reshape(n, -1) @ W_b'[axis→0].reshape(n, -1).T,

where ``W_b'`` is B with the current permutations of the *other* axes
applied. Maximising it is a linear assignment problem
(:func:`scipy.optimize.linear_sum_assignment`). A sweep solves every space
once, in a random (seeded) order; the search stops after a sweep in which no
space improved. ``J`` never decreases: a new assignment is only accepted if
it beats the current one on the same cost matrix.

Everything the spec knows is used: a residual stream is one space, so every
layer that reads or writes it contributes to its cost; a conv→linear flatten
axis (``Axis.block > 1``) lets each channel own ``block`` consecutive columns;
a GroupNorm space (``permutation_blocks = G > 1``) is solved exactly over the
permutations that map groups onto groups (an assignment inside every pair of
groups, then an assignment of groups). Buffers (BatchNorm running statistics)
are permuted with their channels by :meth:`WeightSpaceSpec.permute` but, as in
Git Re-Basin, do not enter the cost unless ``include_buffers=True``.

Implementation (performance), in private modules of this package: the
*plan* (:mod:`~weightspace.align._wm_plan`: the cost terms and the column
layout of every space's cost product, built once per spec object and cached),
the *workspace* (:mod:`~weightspace.align._wm_workspace`: the buffers a call
fills, pooled so that a repeated call on the same architecture touches no
fresh memory) and the *engine* (:mod:`~weightspace.align._wm_engine`: the
descent, which re-gathers only the B blocks a changed permutation moved and
updates a large space's cost from its previous solve instead of recomputing
its products). :func:`clear_cache` releases plans and workspaces.
:func:`inner_objective` is the plain reference implementation of ``J`` the
engine is tested against; the linear assignment (with GroupNorm blocks) is
:func:`~weightspace.align.assignment.solve_assignment`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.align._wm_engine import descend
from weightspace.align._wm_plan import clear_plans, cost_terms, inner_objective, plan_for
from weightspace.align._wm_workspace import checkin, checkout, clear_workspaces
from weightspace.align.assignment import (
    WeightMatchingResult,
    check_states,
    compute_dtype,
    resolve_init,
)
from weightspace.errors import WeightspaceError
from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.symmetry import Permutation

__all__ = ["WeightMatchingResult", "align", "align_rows", "clear_cache", "cost_terms",
           "inner_objective", "weight_matching"]


def weight_matching(
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    spec: WeightSpaceSpec,
    *,
    max_sweeps: int = 100,
    seed: int = 0,
    init: Permutation | None = None,
    include_buffers: bool = False,
    progress: bool = False,
    tol: float = 1e-9,
    _record: list | None = None,
) -> WeightMatchingResult:
    """Find the permutation of B's hidden neurons that best matches A's weights.

    Git Re-Basin weight matching (permutation coordinate descent), see the
    module docstring. Deterministic for a given ``seed``.

    Args:
        state_a: the reference state dict (every key of ``spec``).
        state_b: the state dict to permute.
        spec: the weight-space spec of both.
        max_sweeps: the most sweeps over all spaces.
        seed: seeds the order in which each sweep visits the spaces.
        init: the starting permutation (default: identity).
        include_buffers: let buffers with neuron axes (BatchNorm running
            statistics) contribute to the cost. They are permuted either way.
        progress: show a progress bar of the sweeps.
        tol: a new assignment must improve its space's objective by more than
            ``tol`` times the magnitude of the compared entries.

    Returns:
        A :class:`WeightMatchingResult`; apply it with
        ``spec.permute(state_b, result.permutation)`` or use :func:`align`.

    Raises:
        StateDictMismatchError: a state dict does not match the spec.
        NonFiniteError: NaN/infinite weights (the message names the state dict
            and the parameter).
        WeightspaceError: a negative ``max_sweeps``.
    """
    if max_sweeps < 0:
        raise WeightspaceError(f"max_sweeps must be >= 0, got {max_sweeps}",
                               parameter="max_sweeps")
    # Finiteness is checked through the objective (below), not by a pass here.
    check_states(spec, finite=False, state_a=state_a, state_b=state_b)
    perms = resolve_init(spec, init)
    # the start is the identity unless ``init`` says otherwise: then B as
    # filled needs no gather before the first solve
    identity = dict.fromkeys(perms, True) if init is None else {
        name: bool(torch.equal(p, torch.arange(len(p)))) for name, p in perms.items()}
    plan = plan_for(spec, include_buffers)
    first = next(iter(state_a.values()), None)
    device = first.device if first is not None else torch.device("cpu")
    ws = checkout(plan, compute_dtype(state_a, state_b), device)
    try:
        with torch.no_grad():
            result = descend(spec, plan, ws, state_a, state_b, perms, identity, include_buffers,
                             tol, _record, max_sweeps, seed, progress)
    finally:
        checkin(ws)
    return result


def clear_cache() -> None:
    """Drop the cached plans and pooled workspaces of :func:`weight_matching`
    (frees their memory; the next call on each spec builds them again)."""
    clear_workspaces()
    clear_plans()


def align(
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    spec: WeightSpaceSpec,
    **kwargs,
) -> dict[str, Tensor]:
    """B permuted into A's frame by :func:`weight_matching` (same keyword
    arguments); it computes exactly the same function as B."""
    result = weight_matching(state_a, state_b, spec, **kwargs)
    return spec.permute(state_b, result.permutation)


def align_rows(reference: Tensor, partner: Tensor, spec: WeightSpaceSpec, max_sweeps: int = 20,
               seed: int = 0) -> Tensor:
    """Each row of ``partner`` permuted into the frame of the same row of
    ``reference`` by :func:`weight_matching` — the ``align`` hook of
    :class:`~weightspace.zoo.mixup.WeightMixup` (mixup after alignment).

    Shapes:
        - reference, partner: ``[k, P]`` flat parameters of ``spec``
        - output: ``[k, P]``
    """
    out = partner.clone()
    for i in range(partner.shape[0]):
        state_a = spec.unflatten(reference[i].detach().cpu())
        state_b = spec.unflatten(partner[i].detach().cpu())
        perm = weight_matching(state_a, state_b, spec, max_sweeps=max_sweeps, seed=seed).permutation
        out[i] = spec.permute_flat(partner[i], perm)
    return out
