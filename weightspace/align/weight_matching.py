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

Implementation notes (performance). Everything that depends only on the
spec (which parameters enter which space's cost, column layouts, gather
geometry) is a *plan* built once per spec object and cached; the buffers a
call fills (a *workspace*) are pooled, so a repeated call on the same
architecture neither rebuilds the layout nor touches fresh memory
(:func:`clear_cache` releases both).

The cost of space ``p`` is a product ``Acat_p @ BcatT_p``: ``Acat_p`` ``[n, K]``
concatenates the row-layout A-side matrices of every (parameter, axis) pair
of ``p``, owner columns first; ``BcatT_p`` ``[K, n]`` holds the matching B-side
matrices *transposed*, so that re-permuting another space's axis of a block
moves whole rows of ``n`` (or ``n × kernel``) contiguous values — an order of
magnitude faster than gathering columns of a row-layout block. A B-side block
is re-gathered in place (by the relative permutation from its last state, via
a scratch buffer) only when a permutation of one of its other axes changed;
blocks without permutable other axes are filled once per call. No fully
permuted copy of B is built. A space is not re-solved when no permutation its
cost depends on changed since its last solve (the assignment would return its
current permutation). A space whose products are large is not recomputed
at all after its first solve when few rows moved: its cost is updated from
the previous solve by ``ΔC = A_rows @ (B_new − B_old)_rows`` over only the B
rows that a changed permutation moved, which also never repeats the
products of parameters whose other axes are fixed (an MLP's first layer).
The permutations found are the same as with recomputed products (tested);
the cost entries differ only by float rounding. The owner columns are
multiplied separately (one extra GEMM call, same flops): the objective is the sum over spaces of
``Σ_i C_own[i, perm[i]]`` — after the last sweep it is read from the owner
products of each space's last solve instead of a pass over the weights. The
objective before the first sweep (and for a space whose owner product is
stale) is computed directly from the buffers. Memory: about three copies of
the cost parameters (A once, B transposed once — each parameter enters up to
two spaces — plus one scratch block).
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.symmetry import Permutation, check_permutation

logger = logging.getLogger(__name__)

# torch's own ``index_select``: torch_geometric replaces ``torch.index_select``
# with a Python wrapper (for its HashTensor) that costs several microseconds
# per call, and the descent makes dozens of these calls per sweep.
_index_select = getattr(torch._C._VariableFunctions, "index_select", torch.index_select)

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


# -------------------------------------------------------------------- plan
@dataclass(frozen=True)
class _Select:
    """One other axis of a B-side block to re-gather when ``space`` changes.

    The block (transposed layout) is viewed as ``[before, size, after]`` with
    the axis in the middle; every neuron of ``space`` owns ``block`` entries.
    """

    before: int
    size: int
    after: int
    space: str
    block: int


@dataclass(frozen=True)
class _Copy:
    """A (parameter, axis) pair whose layout is not a (transposed) view of
    the parameter (the axis is not the first one): copied with a permute.

    ``split`` views the parameter with its term axis split into ``(n, block)``;
    ``a_perm`` permutes that to the row layout ``a_shape = [n, block, *rest]``
    (A side of a non-owner term), ``t_perm`` to the transposed layout
    ``t_shape = [block, *rest, n]`` (B side; A side of an owner term).
    """

    parameter: str
    owner: bool
    offset: int
    width: int
    split: tuple[int, ...]
    a_perm: tuple[int, ...]
    a_shape: tuple[int, ...]
    t_perm: tuple[int, ...]
    t_shape: tuple[int, ...]


@dataclass(frozen=True)
class _Dynamic:
    """Columns ``[offset, offset + width)`` of a space's cost that depend on
    the permutations of other spaces (``deps``, one per select)."""

    offset: int
    width: int
    selects: tuple[_Select, ...]
    deps: tuple[str, ...]


@dataclass(frozen=True)
class _SpacePlan:
    """The column layout of one space's cost matrices.

    Columns ``[0, view_width)`` hold the parameters of ``views`` (owner terms
    on axis 0, whose row layout is ``W.reshape(n, -1)``: one ``torch.cat`` of
    transposed views fills them), then the ``copies``; the first ``own``
    columns are the owner terms (each cost parameter is an owner term of
    exactly one space).
    """

    name: str
    n: int
    blocks: int
    width: int
    own: int
    views: tuple[str, ...]
    view_width: int
    copies: tuple[_Copy, ...]
    dynamic: tuple[_Dynamic, ...]
    deps: tuple[str, ...]
    self_coupled: bool
    params: frozenset[str]


@dataclass(frozen=True)
class _Plan:
    """Everything weight matching needs to know about a spec (no tensors)."""

    spaces: tuple[_SpacePlan, ...]
    parameters: tuple[str, ...]
    scratch: int


def _term_layout(shape: tuple[int, ...], n: int, t: CostTerm):
    """(split, a_perm, a_shape, t_perm, t_shape, selects) of one term."""
    k, bsz, d = t.axis, t.block, len(shape)
    rest = shape[:k] + shape[k + 1:]
    split = shape[:k] + (n, bsz) + shape[k + 1:]
    a_perm = (k, k + 1, *range(k), *range(k + 2, d + 1))
    t_perm = (k + 1, *range(k), *range(k + 2, d + 1), k)
    t_shape = (bsz, *rest, n)
    selects = []
    for j, q, bq in t.others:
        pos = 1 + j if j < k else j     # the axis' place in t_shape
        selects.append(_Select(math.prod(t_shape[:pos]), t_shape[pos],
                               math.prod(t_shape[pos + 1:]), q, bq))
    return split, a_perm, (n, bsz, *rest), t_perm, t_shape, tuple(selects)


def _build_plan(spec: WeightSpaceSpec, include_buffers: bool) -> _Plan:
    terms_by_space = cost_terms(spec, include_buffers)
    spaces = []
    parameters: dict[str, None] = {}
    scratch = 0
    for s in spec.permutable_spaces:
        terms = terms_by_space[s.name]
        if not terms:
            continue
        n = s.size
        # column order: owner terms on axis 0 (views, one cat), other owner
        # terms, then the terms of parameters owned by another space
        ordered = ([t for t in terms if t.owner and t.axis == 0]
                   + [t for t in terms if t.owner and t.axis != 0]
                   + [t for t in terms if not t.owner])
        views, copies, dynamic = [], [], []
        offset = own = view_width = 0
        for t in ordered:
            shape = spec.parameter(t.parameter).shape
            parameters[t.parameter] = None
            split, a_perm, a_shape, t_perm, t_shape, selects = _term_layout(shape, n, t)
            width = math.prod(shape) // n
            if t.owner and t.axis == 0:
                views.append(t.parameter)
                view_width += width
            else:
                copies.append(_Copy(t.parameter, t.owner, offset, width, split, a_perm,
                                    a_shape, t_perm, t_shape))
            if selects:
                dynamic.append(_Dynamic(offset, width, selects,
                                        tuple(sel.space for sel in selects)))
                scratch = max(scratch, width * n)
            if t.owner:
                own += width
            offset += width
        deps = tuple(sorted({q for d in dynamic for q in d.deps}))
        spaces.append(_SpacePlan(
            name=s.name, n=n, blocks=s.permutation_blocks, width=offset, own=own,
            views=tuple(views), view_width=view_width, copies=tuple(copies),
            dynamic=tuple(dynamic), deps=deps, self_coupled=s.name in deps,
            params=frozenset(t.parameter for t in terms)))
    return _Plan(tuple(spaces), tuple(parameters), scratch)


_PLAN_CACHE: dict[tuple[int, bool], tuple[weakref.ref, _Plan]] = {}

#: A solve updates its cost from the previous one (instead of recomputing
#: the products) when the rows to update are at most this fraction of the
#: cost's columns ...
_INCREMENTAL_MAX_ROWS = 0.6
#: ... and the space's products are at least this many multiply-adds
#: (below it the extra gathers cost more than the products saved).
_INCREMENTAL_MIN_MACS = 1 << 22


def _plan(spec: WeightSpaceSpec, include_buffers: bool) -> _Plan:
    """The cached plan of ``spec``. Keyed by the spec object (held weakly):
    hashing a spec by content costs more than building its plan."""
    key = (id(spec), bool(include_buffers))
    hit = _PLAN_CACHE.get(key)
    if hit is not None and hit[0]() is spec:
        return hit[1]
    plan = _build_plan(spec, include_buffers)
    ref = weakref.ref(spec, lambda _, key=key: _PLAN_CACHE.pop(key, None))
    _PLAN_CACHE[key] = (ref, plan)
    return plan


# --------------------------------------------------------------- workspace
class _Workspace:
    """The buffers of one plan for one dtype and device, with every view the
    engine writes through made once (a call only fills them).

    Per space: ``a_own`` ``[own, n]``: A's owner columns, transposed;
    ``a_rest`` ``[n, width - own]``: A's other columns (row layout); ``bcat``
    ``[width, n]``: all of B's columns, transposed; the cost matrix and, when
    the space has both kinds of columns, its owner part.
    """

    def __init__(self, plan: _Plan, dtype: torch.dtype, device: torch.device) -> None:
        self.plan = plan
        self.key = (id(plan), dtype, device)

        def empty(*shape):
            return torch.empty(shape, dtype=dtype, device=device)

        scratch = empty(plan.scratch)
        self.a_own, self.a_rest, self.bcat, self.b_own, self.b_rest = [], [], [], [], []
        self.cost, self.cown = [], []
        self.a_views, self.b_views, self.a_copies, self.b_copies = [], [], [], []
        self.dynamic: list[list[list[tuple[Tensor, Tensor]]]] = []
        for sp in plan.spaces:
            n, own = sp.n, sp.own
            a_own, a_rest, bcat = empty(own, n), empty(n, sp.width - own), empty(sp.width, n)
            cost = empty(n, n)
            self.a_own.append(a_own)
            self.a_rest.append(a_rest)
            self.bcat.append(bcat)
            self.b_own.append(bcat[:own])
            self.b_rest.append(bcat[own:])
            self.cost.append(cost)
            self.cown.append(empty(n, n) if 0 < own < sp.width else cost)
            self.a_views.append(a_own[:sp.view_width])
            self.b_views.append(bcat[:sp.view_width])
            self.a_copies.append([
                a_own[c.offset:c.offset + c.width].view(c.t_shape) if c.owner else
                a_rest[:, c.offset - own:c.offset - own + c.width].view(c.a_shape)
                for c in sp.copies])
            self.b_copies.append([bcat[c.offset:c.offset + c.width].view(c.t_shape)
                                  for c in sp.copies])
            self.dynamic.append([
                [(bcat[d.offset:d.offset + d.width].view(sel.before, sel.size, sel.after),
                  scratch[:d.width * n].view(sel.before, sel.size, sel.after))
                 for sel in d.selects]
                for d in sp.dynamic])
        tensors = [scratch, *self.a_own, *self.a_rest, *self.bcat, *self.cost,
                   *(c for c, cost in zip(self.cown, self.cost, strict=True) if c is not cost)]
        self.nbytes = sum(t.numel() * t.element_size() for t in tensors)

    def acat(self, i: int) -> Tensor:
        """Space ``i``'s A-side columns as one row-layout ``[n, width]`` copy."""
        return torch.cat([self.a_own[i].T, self.a_rest[i]], dim=1)


#: Workspaces kept for reuse (most recently used last), and the largest one
#: kept: repeated calls reuse warm memory instead of faulting in fresh pages.
_WORKSPACES: OrderedDict[tuple, _Workspace] = OrderedDict()
_WORKSPACE_SLOTS = 2
_WORKSPACE_MAX_BYTES = 256 << 20
_WORKSPACE_LOCK = threading.Lock()


def _checkout(plan: _Plan, dtype: torch.dtype, device: torch.device) -> _Workspace:
    """A workspace of ``plan``: a pooled one (taken out of the pool, so that
    concurrent calls never share buffers) or a new one."""
    with _WORKSPACE_LOCK:
        ws = _WORKSPACES.pop((id(plan), dtype, device), None)
    if ws is not None and ws.plan is plan:
        return ws
    return _Workspace(plan, dtype, device)


def _checkin(ws: _Workspace) -> None:
    if ws.nbytes > _WORKSPACE_MAX_BYTES:
        return
    with _WORKSPACE_LOCK:
        _WORKSPACES[ws.key] = ws
        _WORKSPACES.move_to_end(ws.key)
        while len(_WORKSPACES) > _WORKSPACE_SLOTS:
            _WORKSPACES.popitem(last=False)


def clear_cache() -> None:
    """Drop the cached plans and pooled workspaces of :func:`weight_matching`
    (frees their memory; the next call on each spec builds them again)."""
    with _WORKSPACE_LOCK:
        _WORKSPACES.clear()
    _PLAN_CACHE.clear()
    _TERMS_CACHE.clear()


# ------------------------------------------------------------------ engine
class _Matcher:
    """Permutation coordinate descent on a filled workspace.

    ``record``: when a list, every solve appends ``(space, Acat, Bcat,
    updated)`` (clones; ``Bcat`` as the transposed view of the buffer, so that
    ``Acat @ Bcat.T`` is the cost the engine solves; ``updated``: the cost was
    updated from the previous solve rather than recomputed) so that a
    benchmark can time the bare products and assignments.
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        plan: _Plan,
        ws: _Workspace,
        state_a: Mapping[str, Tensor],
        state_b: Mapping[str, Tensor],
        perms: dict[str, Tensor],
        identity: dict[str, bool],
        include_buffers: bool,
        tol: float,
        record: list | None = None,
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.spaces = plan.spaces
        self.ws = ws
        self.state_a = state_a
        self.state_b = state_b
        self.perms = perms
        self.identity = identity
        self.include_buffers = include_buffers
        self.tol = tol
        self.record = record
        self.skipped = 0
        device = ws.key[2]
        self.device = device
        self.cpu = device.type == "cpu"
        self.version = dict.fromkeys(perms, 0)
        # device copies of every permutation a space has had, by version
        self.history = {name: [p.to(device)] for name, p in perms.items()}
        self._inverse_cache: dict[tuple[str, int], Tensor] = {}
        self._relative_cache: dict[tuple[str, int, int, int], Tensor] = {}
        n_spaces = len(plan.spaces)
        self.solved: list[tuple[int, ...] | None] = [None] * n_spaces
        # (dependency versions, own version) of each space's owner product
        self.own_key: list[tuple | None] = [None] * n_spaces
        # the versions each dynamic block holds; -1: unpermuted B (the fill)
        start = {name: 0 if identity[name] else -1 for name in perms}
        self.block_state = [[tuple(start[q] for q in d.deps) for d in sp.dynamic]
                            for sp in plan.spaces]
        # whether ``ws.cost[i]`` (and ``ws.cown[i]``) hold the products of the
        # B blocks as they are now: then a later solve may update them
        self.cost_ready = [False] * n_spaces
        self._changed_cache: dict[tuple[str, int, int, int], tuple[Tensor, Tensor]] = {}
        self._fill(ws.key[1], device)

    def _fill(self, dtype: torch.dtype, device: torch.device) -> None:
        """Copy A (owner columns transposed, the rest in row layout) and B
        (transposed, unpermuted) into the workspace."""
        def get(state, name):
            t = state[name]
            if t.dtype != dtype or t.device != device:
                t = t.to(device, dtype)
            return t

        a = {name: get(self.state_a, name) for name in self.plan.parameters}
        b = {name: get(self.state_b, name) for name in self.plan.parameters}
        ws = self.ws
        for i, sp in enumerate(self.spaces):
            n = sp.n
            if sp.views:
                torch.cat([a[p].reshape(n, -1).T for p in sp.views], dim=0, out=ws.a_views[i])
                torch.cat([b[p].reshape(n, -1).T for p in sp.views], dim=0, out=ws.b_views[i])
            for c, a_out, b_out in zip(sp.copies, ws.a_copies[i], ws.b_copies[i], strict=True):
                a_out.copy_(a[c.parameter].reshape(c.split).permute(
                    c.t_perm if c.owner else c.a_perm))
                b_out.copy_(b[c.parameter].reshape(c.split).permute(c.t_perm))

    # ----------------------------------------------------------- helpers
    def _inverse(self, space: str, version: int) -> Tensor:
        key = (space, version)
        inv = self._inverse_cache.get(key)
        if inv is None:
            inv = self._inverse_cache[key] = torch.argsort(self.history[space][version])
        return inv

    def _relative(self, space: str, old: int, new: int, block: int) -> Tensor:
        """Index that turns a block holding version ``old`` of ``space``'s
        permutation on an axis into one holding version ``new``: a block
        holding ``src[π_old]`` becomes ``src[π_new]`` by taking its entries
        ``π_old⁻¹[π_new]``."""
        key = (space, old, new, block)
        idx = self._relative_cache.get(key)
        if idx is None:
            p_new = self.history[space][new]
            rel = p_new if old < 0 else self._inverse(space, old)[p_new]
            idx = self._relative_cache[key] = expand_index(rel, block)
        return idx

    def _changed(self, space: str, old: int, new: int, block: int) -> tuple[Tensor, Tensor]:
        """``(changed, source)``: the axis positions whose entries a block
        holding version ``old`` must replace to hold version ``new``, and the
        positions they are taken from (``_relative`` at ``changed``)."""
        key = (space, old, new, block)
        hit = self._changed_cache.get(key)
        if hit is None:
            rel = self._relative(space, old, new, block)
            changed = (rel != torch.arange(len(rel), device=rel.device)).nonzero().view(-1)
            hit = self._changed_cache[key] = (changed, rel[changed])
        return hit

    def _update(self, i: int) -> bool:
        """Bring space ``i``'s cost up to date from its last solve by the
        change of its stale B blocks alone (``ΔC = A_rows @ ΔB_rows`` over
        the rows a permutation moved); ``False`` (nothing touched) when
        recomputing the products is cheaper or the layout does not allow it.

        Why: late in the descent a permutation moves few neurons, and the
        columns of parameters with no other permutable axis (an MLP's first
        layer) never change; recomputing every product repeats that work.
        """
        sp = self.spaces[i]
        if (not self.cost_ready[i] or sp.self_coupled
                or sp.n * sp.n * sp.width < _INCREMENTAL_MIN_MACS):
            return False
        states = self.block_state[i]
        stale, rows = [], 0
        for j, d in enumerate(sp.dynamic):
            held = tuple(self.version[q] for q in d.deps)
            if held == states[j]:
                continue
            if len(d.selects) != 1 or d.selects[0].before != 1:
                return False
            sel = d.selects[0]
            changed, source = self._changed(sel.space, states[j][0], held[0], sel.block)
            group = sel.after // sp.n        # rows of the block per axis entry
            rows += len(changed) * group
            stale.append((j, d, sel, held, changed, source, group))
        if rows > _INCREMENTAL_MAX_ROWS * sp.width:
            return False
        ws, n = self.ws, sp.n
        split = ws.cown[i] is not ws.cost[i]
        for j, d, sel, held, changed, source, group in stale:
            block, scratch = ws.dynamic[i][j][0]
            flat = block.view(-1, n)
            owner = d.offset < sp.own
            if len(changed) == sel.size:     # every row moves: whole-block views
                _index_select(block, 1, self._relative(sel.space, states[j][0], held[0],
                                                       sel.block), out=scratch)
                fresh = scratch.view(-1, n)
                delta = fresh - flat
                flat.copy_(fresh)
                lo = d.offset if owner else d.offset - sp.own
                a_side = (ws.a_own[i][lo:lo + d.width].T if owner else
                          ws.a_rest[i][:, lo:lo + d.width])
            else:
                dst, src = expand_index(changed, group), expand_index(source, group)
                fresh = flat.index_select(0, src)
                delta = fresh - flat.index_select(0, dst)
                flat.index_copy_(0, dst, fresh)
                a_side = (ws.a_own[i].index_select(0, dst + d.offset).T if owner
                          else ws.a_rest[i].index_select(1, dst + (d.offset - sp.own)))
            if owner and split:
                change = torch.mm(a_side, delta)
                ws.cown[i].add_(change)
                ws.cost[i].add_(change)
            else:
                ws.cost[i].addmm_(a_side, delta)
            states[j] = held
        return True

    def _refresh(self, i: int) -> None:
        """Bring the dynamic B blocks of space ``i`` up to date."""
        sp = self.spaces[i]
        if not sp.dynamic:
            return
        version = self.version
        states = self.block_state[i]
        views = self.ws.dynamic[i]
        for j, d in enumerate(sp.dynamic):
            key = tuple(version[q] for q in d.deps)
            held = states[j]
            if key == held:
                continue
            self.cost_ready[i] = False
            for sel, (block, scratch), old, new in zip(d.selects, views[j], held, key,
                                                       strict=True):
                if old == new:
                    continue
                _index_select(block, 1, self._relative(sel.space, old, new, sel.block),
                              out=scratch)
                block.copy_(scratch)
            states[j] = key

    def _cost(self, i: int) -> Tensor:
        """``C_p`` of space ``i`` (its owner part lands in ``ws.cown[i]``)."""
        sp, ws = self.spaces[i], self.ws
        if not sp.own:
            return torch.mm(ws.a_rest[i], ws.bcat[i], out=ws.cost[i])
        torch.mm(ws.a_own[i].T, ws.b_own[i], out=ws.cown[i])
        if sp.own == sp.width:
            return ws.cown[i]
        return torch.addmm(ws.cown[i], ws.a_rest[i], ws.b_rest[i], out=ws.cost[i])

    def objective(self, final: bool = False) -> float:
        """``Σ <W_a, π(W_b)>`` over the cost parameters: ``Σ_i a_i · b_{perm[i]}``
        over the owner columns of every space (row dots in the compute dtype,
        accumulated in float64). With ``final``, a space whose owner product
        from its last solve is still current contributes its entries
        ``C_own[i, perm[i]]`` (the same row dots) instead of a pass."""
        ws, version = self.ws, self.version
        parts = []
        for i, sp in enumerate(self.spaces):
            if not sp.own:
                continue
            current = self.history[sp.name][version[sp.name]]
            if final and self.own_key[i] == (tuple(version[q] for q in sp.deps),
                                             version[sp.name]):
                parts.append(ws.cown[i].gather(1, current[:, None]).view(-1))
                continue
            self._refresh(i)
            b = ws.b_own[i]
            if not self.identity[sp.name]:
                b = b.index_select(1, current)
            # both sides hold the owner columns transposed: column dots
            parts.append(torch.mul(ws.a_own[i], b).sum(0))
        if not parts:
            return 0.0
        return float(torch.cat(parts).double().sum())

    def _set(self, sp: _SpacePlan, perm: np.ndarray) -> None:
        p = torch.from_numpy(np.ascontiguousarray(perm, dtype=np.int64))
        self.perms[sp.name] = p
        self.history[sp.name].append(p.to(self.device))
        self.version[sp.name] += 1
        self.identity[sp.name] = False

    # -------------------------------------------------------------- step
    def step(self, i: int) -> float:
        """Solve space ``i``; return the improvement of the objective (≥ 0).

        A space whose cost matrix cannot have changed since its last solve
        (no permutation it depends on changed) is skipped: the assignment
        would return its current permutation.
        """
        sp = self.spaces[i]
        key = tuple(self.version[q] for q in sp.deps)
        if key == self.solved[i]:
            self.skipped += 1
            return 0.0
        self.solved[i] = key
        updated = self._update(i)
        if updated:
            c = self.ws.cost[i]
        else:
            self._refresh(i)
            c = self._cost(i)
            self.cost_ready[i] = True
        if self.record is not None:
            self.record.append((sp.name, self.ws.acat(i), self.ws.bcat[i].T.clone(), updated))
        cost = c.numpy() if self.cpu else c.cpu().numpy()
        if cost.dtype != np.float64:
            cost = cost.astype(np.float64)
        new = solve_assignment(cost, sp.blocks)
        old = self.perms[sp.name].numpy()
        gain = 0.0
        if not (new == old).all():
            rows = np.arange(sp.n)
            picked_new, picked_old = cost[rows, new], cost[rows, old]
            if sp.self_coupled:
                # the cost is only a linearisation when p indexes two axes of
                # one parameter: compare the exact objectives of its parameters
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
                gain = after - before
        # the owner product is exact for the space's permutation now unless
        # that permutation also enters the cost (self-coupled and changed)
        self.own_key[i] = (key, self.version[sp.name])
        return gain


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
    # the start is the identity unless ``init`` says otherwise: then B as
    # filled needs no gather before the first solve
    identity = dict.fromkeys(perms, True) if init is None else {
        name: bool(torch.equal(p, torch.arange(len(p)))) for name, p in perms.items()}
    plan = _plan(spec, include_buffers)
    first = next(iter(state_a.values()), None)
    device = first.device if first is not None else torch.device("cpu")
    ws = _checkout(plan, compute_dtype(state_a, state_b), device)
    try:
        with torch.no_grad():
            result = _run(spec, plan, ws, state_a, state_b, perms, identity, include_buffers,
                          tol, _record, max_sweeps, seed, progress)
    finally:
        _checkin(ws)
    return result


def _run(spec, plan, ws, state_a, state_b, perms, identity, include_buffers, tol, record,
         max_sweeps, seed, progress) -> WeightMatchingResult:
    """The descent of :func:`weight_matching` on a checked-out workspace."""
    matcher = _Matcher(spec, plan, ws, state_a, state_b, perms, identity, include_buffers,
                       tol, record)
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
                gain = matcher.step(i)
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
    final = matcher.objective(final=True)
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
