"""Differentiable weight matching with soft permutations (Sinkhorn).

What :func:`sinkhorn_matching` computes: the entropy-regularised relaxation of
Git Re-Basin weight matching (see :mod:`weightspace.align.weight_matching`),
in the spirit of Peña et al. 2023, "Re-basin via implicit Sinkhorn
differentiation" (CVPR 2023). Every permutable space ``p`` gets a doubly
stochastic matrix ``S_p`` (``[n, n]``, rows and columns sum to 1) instead of a
permutation; ``S_p[i, j]`` is the weight with which B's neuron ``j`` goes to
position ``i`` of A's frame, so a hard permutation ``perm`` corresponds to
``S[i, perm[i]] = 1`` and a soft-permuted weight is ``S_p @ W`` along every
axis of ``p`` (:func:`soft_permute`).

The matrices are found by block coordinate ascent, like weight matching:
``iterations`` sweeps visit the spaces in a random (seeded) order; for space
``p`` the cost ``C_p`` is the weight-matching cost with the *soft*
permutations of the other axes applied to B, standardised to zero mean and
unit standard deviation (statistics not differentiated), and

    S_p = Sinkhorn(C_p / tau)

(alternate row and column normalisation in log space until the rows and
columns sum to one). ``tau`` → 0 approaches the hard assignment, large ``tau``
the uniform matrix. Every operation is a differentiable torch operation, so
``S_p`` and the soft objective carry gradients to both models' weights (use
them for straight-through or learned re-basin objectives).

The hard projection (:attr:`SinkhornResult.permutation`) is the linear
assignment maximising ``Σ_i S_p[i, perm[i]]``; for GroupNorm spaces it is
restricted to group-preserving permutations (the soft matrices themselves
are not).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from weightspace.align.assignment import (
    axes_by_parameter,
    check_states,
    compute_dtype,
    resolve_init,
    solve_assignment,
)
from weightspace.align.weight_matching import cost_terms
from weightspace.errors import WeightspaceError
from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.symmetry import Permutation

__all__ = ["SinkhornResult", "sinkhorn", "sinkhorn_matching", "soft_permute"]


@dataclass(frozen=True)
class SinkhornResult:
    """The outcome of :func:`sinkhorn_matching`.

    Attributes:
        soft: ``space -> S_p``, doubly stochastic ``[n, n]`` matrices
            (differentiable w.r.t. the weights when they require grad).
        permutation: the hard projection; ``spec.permute(state_b,
            permutation)`` is B in A's frame.
        objective: the soft objective ``Σ <W_a, S(W_b)>`` over the cost
            parameters (a differentiable 0-d tensor).
    """

    soft: Mapping[str, Tensor]
    permutation: Permutation
    objective: Tensor


def sinkhorn(log_alpha: Tensor, iterations: int = 1000, tol: float = 1e-7) -> Tensor:
    """Sinkhorn normalisation of ``exp(log_alpha)`` into a doubly stochastic
    matrix (log-space; stops early once the row sums are within ``tol`` of 1
    after a column normalisation).

    Shapes:
        log_alpha: ``[n, n]``; output: ``[n, n]``.
    """
    for i in range(iterations):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=0, keepdim=True)
        if i % 5 == 4:
            with torch.no_grad():
                err = (torch.logsumexp(log_alpha, dim=1).exp() - 1).abs().max()
            if float(err) < tol:
                break
    return log_alpha.exp()


def _apply_soft(t: Tensor, axis: int, s: Tensor, block: int) -> Tensor:
    """``S @ t`` along ``axis`` (each neuron owning ``block`` entries)."""
    moved = t.movedim(axis, 0)
    rest = moved.shape[1:]
    n = s.shape[0]
    out = (s @ moved.reshape(n, -1)).reshape(n * block, *rest)
    return out.movedim(0, axis)


def soft_permute(
    spec: WeightSpaceSpec, state: Mapping[str, Tensor], soft: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Apply soft permutations ``space -> S [n, n]`` to every axis of every
    parameter (buffers included; spaces absent from ``soft`` stay). With
    one-hot matrices this equals :meth:`WeightSpaceSpec.permute`.
    Differentiable."""
    spec.check_state_dict(state)
    axes = axes_by_parameter(spec, soft)  # applied in each parameter's axis order
    out = {}
    for p in spec.parameters:
        t = state[p.name]
        if t.is_floating_point():
            for axis, space, block in axes.get(p.name, ()):
                t = _apply_soft(t, axis, soft[space].to(t.dtype), block)
        out[p.name] = t
    return out


def _one_hot(perm: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    n = len(perm)
    m = torch.zeros(n, n, dtype=dtype, device=device)
    m[torch.arange(n), perm.to(device)] = 1.0
    return m


def sinkhorn_matching(
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    spec: WeightSpaceSpec,
    *,
    tau: float = 0.5,
    iterations: int = 10,
    sinkhorn_iterations: int = 1000,
    seed: int = 0,
    init: Permutation | None = None,
    include_buffers: bool = False,
) -> SinkhornResult:
    """Soft (doubly stochastic) weight matching of B onto A; see the module
    docstring for what is computed.

    Args:
        state_a, state_b, spec: as for :func:`weight_matching`.
        tau: temperature, relative to the standard deviation of each cost
            matrix's entries (smaller: closer to a permutation). Sinkhorn
            converges slowly for small ``tau`` (its rate degrades like
            ``exp(-range/tau)``); below about 0.3 raise ``sinkhorn_iterations``
            (a warning says when the rows do not sum to 1 within 1e-4).
        iterations: sweeps over the spaces.
        sinkhorn_iterations: the most normalisation rounds per Sinkhorn call
            (it stops once the rows sum to 1 within 1e-7).
        seed: seeds the order of the spaces in each sweep.
        init: starting (hard) permutation; the identity by default.
        include_buffers: let BatchNorm running statistics enter the cost.

    Returns:
        A :class:`SinkhornResult` (soft matrices, hard projection, soft
        objective).

    Raises:
        StateDictMismatchError: a state dict does not match the spec.
        NonFiniteError: NaN/infinite weights (the message names the state dict
            and the parameter).
        WeightspaceError: ``tau <= 0`` or ``iterations < 1``.
    """
    if tau <= 0:
        raise WeightspaceError(f"tau must be > 0, got {tau}", parameter="tau")
    if iterations < 1:
        raise WeightspaceError(f"iterations must be >= 1, got {iterations}",
                               parameter="iterations")
    check_states(spec, state_a=state_a, state_b=state_b)
    perms = resolve_init(spec, init)
    dtype = compute_dtype(state_a, state_b)
    first = next(iter(state_a.values()), None)
    device = first.device if first is not None else torch.device("cpu")

    def get(state, name):
        return state[name].to(device, dtype)

    terms = cost_terms(spec, include_buffers)
    active = [s for s in spec.permutable_spaces if terms[s.name]]
    soft: dict[str, Tensor] = {s.name: _one_hot(perms[s.name], dtype, device)
                               for s in spec.permutable_spaces}
    a_mats = {
        s.name: [get(state_a, t.parameter).movedim(t.axis, 0).reshape(s.size, -1)
                 for t in terms[s.name]]
        for s in active
    }
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
        for i in rng.permutation(len(active)):
            space = active[i]
            cost = None
            for t, a_mat in zip(terms[space.name], a_mats[space.name], strict=True):
                wb = get(state_b, t.parameter)
                for axis, q, block in t.others:
                    wb = _apply_soft(wb, axis, soft[q], block)
                c = a_mat @ wb.movedim(t.axis, 0).reshape(space.size, -1).T
                cost = c if cost is None else cost + c
            with torch.no_grad():
                mean, std = cost.mean(), cost.std()
            z = (cost - mean) / (std + torch.finfo(dtype).tiny) if space.size > 1 else cost * 0
            soft[space.name] = sinkhorn(z / tau, sinkhorn_iterations)

    with torch.no_grad():
        worst = max((float((m.sum(1) - 1).abs().max()) for m in soft.values()), default=0.0)
    if worst > 1e-4:
        warnings.warn(
            f"Sinkhorn did not converge: row sums are off by {worst:.1e}; raise tau "
            f"(now {tau}) or sinkhorn_iterations (now {sinkhorn_iterations})",
            RuntimeWarning, stacklevel=2)

    hard = {}
    for s in spec.permutable_spaces:
        m = soft[s.name].detach().to("cpu", torch.float64).numpy()
        hard[s.name] = torch.from_numpy(
            np.ascontiguousarray(solve_assignment(m, s.permutation_blocks), dtype=np.int64))

    permuted = soft_permute(spec, state_b, soft)
    objective = torch.zeros((), dtype=dtype, device=device)
    # every cost parameter once (its owner term), in a fixed order
    for name in [t.parameter for s in active for t in terms[s.name] if t.owner]:
        objective = objective + (get(state_a, name) * permuted[name].to(device, dtype)).sum()
    return SinkhornResult(soft=soft, permutation=Permutation(hard), objective=objective)
