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

Implementation notes (performance). The cost of space ``p`` is computed as one
matrix product ``Acat_p @ Bcat_p.T``: ``Acat_p`` concatenates the reshaped
A-side matrices of all (parameter, axis) pairs of ``p`` once, ``Bcat_p`` is a
persistent buffer holding the matching B-side matrices. A B-side block is
re-gathered (one ``index_select`` written straight into the buffer) only when
the permutation of a space on one of its other axes changed since it was last
filled; blocks without permutable other axes (biases, norm parameters, first
layers) are filled once. No fully permuted copy of B is built per sweep. A
space is not re-solved when no permutation its cost depends on changed since
its last solve (the assignment would return its current permutation), which
saves a third to a half of the solves in late sweeps without changing the
result. The objective is computed from the same buffers (owner columns only,
so each parameter counts once) before the first and after the last sweep, and
tracked in between from the cost matrices. Memory: about four extra copies
of the cost parameters (A and B, each in two layouts).
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.symmetry import Permutation, check_permutation

logger = logging.getLogger(__name__)

__all__ = ["WeightMatchingResult", "align", "weight_matching"]


# ---------------------------------------------------------------- checking
def check_states(spec: WeightSpaceSpec, finite: bool = True,
                 **states: Mapping[str, Tensor]) -> None:
    """Check that every state dict matches ``spec`` and (``finite=True``)
    holds finite values.

    Raises:
        StateDictMismatchError: a missing/extra key or a wrong shape (the
            message names the key).
        ValueError: NaN or infinite values; the message names the state dict
            and the parameter.
    """
    for label, state in states.items():
        if not isinstance(state, Mapping):
            raise TypeError(f"{label} must be a state dict (a mapping of tensors), "
                            f"got {type(state).__name__}")
        spec.check_state_dict(state)
        if not finite:
            continue
        for p in spec.parameters:
            t = state[p.name]
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = "NaN" if bool(torch.isnan(t).any()) else "infinite"
                raise ValueError(
                    f"{label}[{p.name!r}] contains {bad} values; weight matching needs "
                    f"finite weights (is the checkpoint diverged or corrupted?)"
                )


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


# ------------------------------------------------------------ cost structure
@dataclass(frozen=True)
class CostTerm:
    """One (parameter, axis) pair that contributes to the cost of ``space``.

    ``others`` lists the other axes of the parameter that index a permutable
    space, as ``(axis, space, block)`` in the parameter's own axis order.
    ``owner`` marks the term of the parameter's first permutable axis: summing
    ``<W_a, π(W_b)>`` over the owner terms counts every parameter once.
    ``vector``: a 1-D parameter (bias, norm parameter) — one column of cost.
    """

    parameter: str
    axis: int
    space: str
    block: int
    others: tuple[tuple[int, str, int], ...]
    owner: bool
    vector: bool = False


_TERMS_CACHE: dict[tuple[int, bool], tuple[weakref.ref, dict[str, tuple[CostTerm, ...]]]] = {}


def cost_terms(spec: WeightSpaceSpec, include_buffers: bool) -> dict[str, tuple[CostTerm, ...]]:
    """``space -> terms`` for every permutable space: owner terms first, each
    group in parameter order. Cached per spec object.

    Parameters without axes (``num_batches_tracked``), non-floating entries
    and — unless ``include_buffers`` — buffers are left out.
    """
    key = (id(spec), bool(include_buffers))
    hit = _TERMS_CACHE.get(key)
    if hit is not None and hit[0]() is spec:
        return hit[1]
    permutable = {s.name for s in spec.permutable_spaces}
    owners: dict[str, list[CostTerm]] = {name: [] for name in permutable}
    vectors: dict[str, list[CostTerm]] = {name: [] for name in permutable}
    rest: dict[str, list[CostTerm]] = {name: [] for name in permutable}
    for p in spec.parameters:
        if p.is_buffer and not include_buffers:
            continue
        if not getattr(torch, p.dtype).is_floating_point:
            continue
        axes = [(k, a.space, a.block) for k, a in enumerate(p.axes)
                if a is not None and a.space in permutable]
        for i, (k, space, block) in enumerate(axes):
            others = tuple(o for o in axes if o[0] != k)
            vector = len(p.shape) == 1 and block == 1
            group = vectors if vector else owners if i == 0 else rest
            group[space].append(CostTerm(p.name, k, space, block, others, i == 0, vector))
    # column order of a space's cost matrices: owner matrices, owner vectors
    # (stacked into one block), then the axes the space does not own
    out = {name: tuple(owners[name] + vectors[name] + rest[name]) for name in permutable}
    ref = weakref.ref(spec, lambda _, key=key: _TERMS_CACHE.pop(key, None))
    _TERMS_CACHE[key] = (ref, out)
    return out


def expand_index(index: Tensor, block: int) -> Tensor:
    """Neuron index -> axis index when every neuron owns ``block`` entries."""
    if block == 1:
        return index
    return (index[:, None] * block + torch.arange(block, device=index.device)).reshape(-1)


def inner_objective(
    spec: WeightSpaceSpec,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    perms: Mapping[str, Tensor],
    include_buffers: bool = False,
    names: set[str] | None = None,
) -> float:
    """``Σ <W_a, π(W_b)>`` over the cost parameters (or only ``names``), in
    float64 (a plain reference implementation)."""
    total = 0.0
    for terms in cost_terms(spec, include_buffers).values():
        for t in terms:
            if not t.owner or (names is not None and t.parameter not in names):
                continue
            p = spec.parameter(t.parameter)
            a = state_a[p.name].detach()
            b = state_b[p.name].detach().to(a.device)
            for axis, ax in enumerate(p.axes):
                if ax is not None and ax.space in perms:
                    b = b.index_select(axis, expand_index(perms[ax.space].to(b.device), ax.block))
            total += float((a.double() * b.double()).sum())
    return total


# ------------------------------------------------------------- assignment
def solve_assignment(cost: np.ndarray, blocks: int = 1) -> np.ndarray:
    """The permutation ``perm`` maximising ``Σ_i cost[i, perm[i]]``.

    With ``blocks = G > 1`` only permutations that map each of the ``G``
    contiguous blocks onto a block are allowed (GroupNorm groups); the optimum
    over that group is exact: the best assignment inside every (block, block)
    pair, then the best assignment of blocks under those values.
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


# ------------------------------------------------------------------ engine
class _DynamicBlock:
    """A B-side block of ``Bcat_p`` that depends on other spaces' permutations."""

    __slots__ = ("source", "selects", "deps", "out", "key")

    def __init__(self, source: Tensor, selects: list[tuple[int, str, int]], out: Tensor) -> None:
        self.source = source            # B as [n, block, *rest] (term axis first)
        self.selects = selects          # (dim in source, space, block)
        self.deps = tuple(s for _, s, _ in selects)
        self.out = out                  # the block's slice of Bcat, shaped like source
        self.key: tuple[int, ...] | None = None


class _Space:
    __slots__ = ("name", "n", "blocks", "acat", "bcat", "own", "dynamic", "self_coupled",
                 "params", "deps", "solved")

    def __init__(self, name: str, n: int, blocks: int) -> None:
        self.name = name
        self.n = n
        self.blocks = blocks
        self.own = 0                    # width of the owner columns (first in acat/bcat)
        self.dynamic: list[_DynamicBlock] = []
        self.self_coupled = False
        self.params: set[str] = set()
        self.deps: tuple[str, ...] = ()   # spaces whose permutations enter the cost
        self.solved: tuple[int, ...] | None = None  # their versions at the last solve


class _Matcher:
    """Permutation coordinate descent with cached, incrementally updated costs.

    ``record``: when a list, every solve appends ``(space, Acat, Bcat)``
    (clones) so that a benchmark can time the bare products and assignments.
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        state_a: Mapping[str, Tensor],
        state_b: Mapping[str, Tensor],
        perms: dict[str, Tensor],
        include_buffers: bool,
        tol: float,
        record: list | None = None,
    ) -> None:
        self.spec = spec
        self.state_a = state_a
        self.state_b = state_b
        self.perms = perms
        self.tol = tol
        self.record = record
        self.include_buffers = include_buffers
        first = next(iter(state_a.values()), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = compute_dtype(state_a, state_b)
        self.device = device
        self.version = dict.fromkeys(perms, 0)
        self.skipped = 0
        self.identity = {name: bool(torch.equal(p, torch.arange(len(p))))
                         for name, p in perms.items()}
        self._index_cache: dict[tuple[str, int], tuple[int, Tensor]] = {}
        self._perm_dev = {name: p.to(device) for name, p in perms.items()}

        def get(state, name):
            t = state[name]
            if t.dtype != dtype or t.device != device:
                t = t.to(device, dtype)
            return t

        self.spaces: list[_Space] = []
        for s in spec.permutable_spaces:
            terms = cost_terms(spec, include_buffers)[s.name]
            if not terms:
                continue
            n = s.size
            sp = _Space(s.name, n, s.permutation_blocks)
            # [n, block, *rest] views of A and B with the term's axis first (no
            # copies yet); 1-D owner terms are stacked into one [n, k] block
            layout: list[tuple[Tensor, Tensor, CostTerm | None]] = []
            vec_a: list[Tensor] = []
            vec_b: list[Tensor] = []
            for i, t in enumerate(terms):
                sp.params.add(t.parameter)
                wa, wb = get(state_a, t.parameter), get(state_b, t.parameter)
                if t.vector:
                    vec_a.append(wa)
                    vec_b.append(wb)
                    if i + 1 == len(terms) or not terms[i + 1].vector:
                        layout.append((torch.stack(vec_a, dim=1), torch.stack(vec_b, dim=1),
                                       None))
                        sp.own += len(vec_a)
                    continue
                if t.axis != 0:
                    wa, wb = wa.movedim(t.axis, 0), wb.movedim(t.axis, 0)
                shape = (n, t.block, *wa.shape[1:])
                layout.append((wa.reshape(shape), wb.reshape(shape), t))
                if t.owner:
                    sp.own += wa.numel() // n
            width = sum(a.numel() // n for a, _, _ in layout)
            sp.acat = torch.empty(n, width, dtype=dtype, device=device)
            sp.bcat = torch.empty(n, width, dtype=dtype, device=device)
            offset = 0
            for a, b, t in layout:
                w = a.numel() // n
                sp.acat[:, offset:offset + w].view(a.shape).copy_(a)
                out = sp.bcat[:, offset:offset + w].view(b.shape)
                # a dynamic block starts unpermuted: exact while its
                # dependencies are the identity, refreshed otherwise
                out.copy_(b)
                offset += w
                if t is None or not t.others:
                    continue
                # dims of the other axes in [n, block, *rest] (t.axis moved to 0)
                selects = [(j + 2 if j < t.axis else j + 1, q, bl) for j, q, bl in t.others]
                sp.self_coupled |= any(q == s.name for _, q, _ in selects)
                blk = _DynamicBlock(b, selects, out)
                if all(self.identity[q] for q in blk.deps):
                    blk.key = tuple(self.version[q] for q in blk.deps)
                sp.dynamic.append(blk)
            sp.deps = tuple(sorted({q for blk in sp.dynamic for q in blk.deps}))
            self.spaces.append(sp)

    # ----------------------------------------------------------- helpers
    def _index(self, space: str, block: int) -> Tensor:
        version = self.version[space]
        hit = self._index_cache.get((space, block))
        if hit is not None and hit[0] == version:
            return hit[1]
        idx = expand_index(self._perm_dev[space], block)
        self._index_cache[(space, block)] = (version, idx)
        return idx

    def _refresh(self, sp: _Space) -> None:
        version = self.version
        for blk in sp.dynamic:
            key = tuple(version[q] for q in blk.deps)
            if key == blk.key:
                continue
            if len(blk.selects) == 1:
                dim, q, b = blk.selects[0]
                torch.index_select(blk.source, dim, self._index(q, b), out=blk.out)
            else:
                t = blk.source
                for dim, q, b in blk.selects:
                    t = t.index_select(dim, self._index(q, b))
                blk.out.copy_(t)
            blk.key = key

    def cost(self, sp: _Space) -> Tensor:
        """The current cost matrix ``C_p`` (compute dtype, on the device)."""
        self._refresh(sp)
        return torch.mm(sp.acat, sp.bcat.T)

    def objective(self) -> float:
        """``Σ <W_a, π(W_b)>`` over the cost parameters: the owner columns of
        every space, B's rows permuted. Row sums in the compute dtype (cascade
        summation), rows accumulated in float64; temporaries are bounded to
        about 1 MB (chunks of rows), which is faster than full-size copies."""
        parts = []
        for sp in self.spaces:
            if not sp.own:
                continue
            self._refresh(sp)
            a, b = sp.acat[:, :sp.own], sp.bcat[:, :sp.own]
            perm = None if self.identity[sp.name] else self._perm_dev[sp.name]
            rows = max(1, (1 << 18) // sp.own)
            for start in range(0, sp.n, rows):
                stop = min(start + rows, sp.n)
                bb = b[start:stop] if perm is None else b[perm[start:stop]]
                parts.append(torch.mul(a[start:stop], bb).sum(1))
        if not parts:
            return 0.0
        return float(torch.cat(parts).double().sum())

    def _set(self, sp: _Space, perm: np.ndarray) -> None:
        p = torch.from_numpy(np.ascontiguousarray(perm, dtype=np.int64))
        self.perms[sp.name] = p
        self._perm_dev[sp.name] = p.to(self.device)
        self.version[sp.name] += 1
        self.identity[sp.name] = False

    # -------------------------------------------------------------- step
    def step(self, sp: _Space) -> float:
        """Solve space ``sp``; return the improvement of the objective (≥ 0).

        A space whose cost matrix cannot have changed since its last solve
        (no permutation it depends on changed) is skipped: the assignment
        would return its current permutation.
        """
        key = tuple(self.version[q] for q in sp.deps)
        if key == sp.solved:
            self.skipped += 1
            return 0.0
        sp.solved = key
        c = self.cost(sp)
        if self.record is not None:
            self.record.append((sp.name, sp.acat.clone(), sp.bcat.clone()))
        cost = c.cpu().numpy() if c.device.type != "cpu" else c.numpy()
        if cost.dtype != np.float64:
            cost = cost.astype(np.float64)
        new = solve_assignment(cost, sp.blocks)
        old = self.perms[sp.name].numpy()
        if (new == old).all():
            return 0.0
        rows = np.arange(sp.n)
        picked_new, picked_old = cost[rows, new], cost[rows, old]
        if sp.self_coupled:
            # the cost is only a linearisation when p indexes two axes of one
            # parameter: compare the exact objectives of the parameters of p
            before = inner_objective(self.spec, self.state_a, self.state_b, self.perms,
                                     self.include_buffers, sp.params)
            trial = dict(self.perms)
            trial[sp.name] = torch.from_numpy(np.asarray(new, dtype=np.int64))
            after = inner_objective(self.spec, self.state_a, self.state_b, trial,
                                    self.include_buffers, sp.params)
        else:
            before, after = float(picked_old.sum()), float(picked_new.sum())
        scale = float(np.abs(picked_new).sum() + np.abs(picked_old).sum())
        if after - before > self.tol * scale:
            self._set(sp, new)
            return after - before
        return 0.0


def _raise_non_finite(spec, include_buffers, **states) -> None:
    """Name the first non-finite cost parameter (called when the objective is
    not finite; returns if every value is finite, i.e. it merely overflowed)."""
    names = [t.parameter for terms in cost_terms(spec, include_buffers).values()
             for t in terms if t.owner]
    for label, state in states.items():
        for name in names:
            t = state[name]
            if not bool(torch.isfinite(t).all()):
                bad = "NaN" if bool(torch.isnan(t).any()) else "infinite"
                raise ValueError(
                    f"{label}[{name!r}] contains {bad} values; weight matching needs "
                    f"finite weights (is the checkpoint diverged or corrupted?)"
                )


# -------------------------------------------------------------------- API
@dataclass(frozen=True)
class WeightMatchingResult:
    """The outcome of :func:`weight_matching`.

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
        ValueError: NaN/infinite weights (the message names the parameter), a
            negative ``max_sweeps``.
    """
    if max_sweeps < 0:
        raise ValueError(f"max_sweeps must be >= 0, got {max_sweeps}")
    # Finiteness is checked through the objective (below), not by a pass here.
    check_states(spec, finite=False, state_a=state_a, state_b=state_b)
    perms = resolve_init(spec, init)
    with torch.no_grad():
        matcher = _Matcher(spec, state_a, state_b, perms, include_buffers, tol, _record)
        # every cost value enters the objective once: a non-finite objective
        # flags NaN/inf weights without a separate pass over the parameters
        objective = matcher.objective()
        if not math.isfinite(objective):
            _raise_non_finite(spec, include_buffers, state_a=state_a, state_b=state_b)
        history = [objective]
        rng = np.random.default_rng(seed)
        converged = not matcher.spaces
        sweeps = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_sweeps, desc="weight matching", unit="sweep")
        try:
            while not converged and sweeps < max_sweeps:
                improved = False
                for i in rng.permutation(len(matcher.spaces)):
                    gain = matcher.step(matcher.spaces[i])
                    if gain > 0:
                        improved = True
                        objective += gain
                sweeps += 1
                history.append(objective)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(objective=f"{objective:.6g}")
                logger.debug("weight matching sweep %d: objective %.8g", sweeps, objective)
                converged = not improved
        finally:
            if bar is not None:
                bar.close()
        final = matcher.objective()
        solves = sweeps * len(matcher.spaces) - matcher.skipped
    return WeightMatchingResult(
        permutation=Permutation(dict(matcher.perms)),
        sweeps=sweeps,
        objective=final,
        history=tuple(history),
        converged=converged,
        solves=solves,
    )


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
