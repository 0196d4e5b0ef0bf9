"""Weight matching's plan: which products make each space's cost, laid out how.

Everything here depends only on the spec (no tensors) and is built once per
spec object and cached (:func:`cost_terms`, :func:`plan_for`; held weakly, so
a spec that goes away takes its plan with it; hashing a spec by content costs
more than building its plan).

* :func:`cost_terms`: every (parameter, axis) pair that enters the cost of a
  permutable space (read from :meth:`WeightSpaceSpec.axes_of`), and which of
  them *owns* its parameter (summing ``<W_a, π(W_b)>`` over the owner terms
  counts every parameter once). :func:`inner_objective` computes the
  objective directly from those terms: the plain reference every fast path is
  checked against.
* :func:`plan_for`: the column layout of each space's cost product
  ``Acat_p @ BcatT_p``. ``Acat_p`` ``[n, K]`` concatenates the row-layout
  A-side matrices of every term of ``p``, owner columns first; ``BcatT_p``
  ``[K, n]`` holds the matching B-side matrices *transposed*, so that
  re-permuting another space's axis of a block moves whole rows of ``n`` (or
  ``n × kernel``) contiguous values, an order of magnitude faster than
  gathering columns of a row-layout block. The plan records, per block,
  whether it is a view or a permuted copy of its parameter and which other
  spaces' permutations it must follow (:class:`Select`); the engine
  (:mod:`weightspace.align._wm_engine`) fills and updates the buffers.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from weightspace.align.assignment import axes_by_parameter
from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.symmetry import expand_index

__all__ = ["CostTerm", "Plan", "SpacePlan", "clear_plans", "cost_terms", "inner_objective",
           "plan_for"]

_T = TypeVar("_T")

#: ``(id(spec), include_buffers, kind) -> (weak reference to spec, value)``
_CACHE: dict[tuple[int, bool, str], tuple[weakref.ref, object]] = {}


def _per_spec(spec: WeightSpaceSpec, include_buffers: bool, kind: str,
              build: Callable[[WeightSpaceSpec, bool], _T]) -> _T:
    """``build(spec, include_buffers)``, cached per spec object (held weakly:
    the entry goes when the spec does; an id reused by a new spec misses)."""
    key = (id(spec), bool(include_buffers), kind)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is spec:
        return hit[1]
    value = build(spec, include_buffers)
    ref = weakref.ref(spec, lambda _, key=key: _CACHE.pop(key, None))
    _CACHE[key] = (ref, value)
    return value


def clear_plans() -> None:
    """Drop every cached cost-term list and plan."""
    _CACHE.clear()


# ------------------------------------------------------------ cost terms
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


def cost_terms(spec: WeightSpaceSpec, include_buffers: bool) -> dict[str, tuple[CostTerm, ...]]:
    """``space -> terms`` for every permutable space (in the spec's order):
    owner terms first, each group in parameter order. Cached per spec object.

    Parameters without axes (``num_batches_tracked``), non-floating entries
    and — unless ``include_buffers`` — buffers are left out.
    """
    return _per_spec(spec, include_buffers, "terms", _build_terms)


def _build_terms(spec: WeightSpaceSpec, include_buffers: bool) -> dict[str, tuple[CostTerm, ...]]:
    permutable = [s.name for s in spec.permutable_spaces]
    axes = axes_by_parameter(spec, permutable)
    owners: dict[str, list[CostTerm]] = {name: [] for name in permutable}
    vectors: dict[str, list[CostTerm]] = {name: [] for name in permutable}
    rest: dict[str, list[CostTerm]] = {name: [] for name in permutable}
    for p in spec.parameters:
        if p.name not in axes or (p.is_buffer and not include_buffers):
            continue
        if not getattr(torch, p.dtype).is_floating_point:
            continue
        for i, (k, space, block) in enumerate(axes[p.name]):
            others = tuple(o for o in axes[p.name] if o[0] != k)
            vector = len(p.shape) == 1 and block == 1
            group = vectors if vector else owners if i == 0 else rest
            group[space].append(CostTerm(p.name, k, space, block, others, i == 0, vector))
    # column order of a space's cost matrices: owner matrices, owner vectors
    # (stacked into one block), then the axes the space does not own
    return {name: tuple(owners[name] + vectors[name] + rest[name]) for name in permutable}


def inner_objective(
    spec: WeightSpaceSpec,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    perms: Mapping[str, Tensor],
    include_buffers: bool = False,
    names: set[str] | None = None,
) -> float:
    """``Σ <W_a, π(W_b)>`` over the cost parameters (or only ``names``), in
    float64: a plain reference implementation of weight matching's objective.

    Args:
        spec: the architecture of both state dicts.
        state_a, state_b: the two models.
        perms: ``space -> permutation`` applied to B (spaces left out stay).
        include_buffers: count buffers with neuron axes too.
        names: only these parameters (default: every cost parameter).
    """
    total = 0.0
    for terms in cost_terms(spec, include_buffers).values():
        for t in terms:
            if not t.owner or (names is not None and t.parameter not in names):
                continue
            a = state_a[t.parameter].detach()
            b = state_b[t.parameter].detach().to(a.device)
            # an owner term's axis is its parameter's first permutable axis:
            # together with ``others`` these are all of them, in axis order
            for axis, space, block in ((t.axis, t.space, t.block), *t.others):
                if space in perms:
                    b = b.index_select(axis, expand_index(perms[space].to(b.device), block))
            total += float((a.double() * b.double()).sum())
    return total


# ------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Select:
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
class Copy:
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
class Dynamic:
    """Columns ``[offset, offset + width)`` of a space's cost that depend on
    the permutations of other spaces (``deps``, one per select)."""

    offset: int
    width: int
    selects: tuple[Select, ...]
    deps: tuple[str, ...]


@dataclass(frozen=True)
class SpacePlan:
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
    copies: tuple[Copy, ...]
    dynamic: tuple[Dynamic, ...]
    deps: tuple[str, ...]
    self_coupled: bool
    params: frozenset[str]


@dataclass(frozen=True)
class Plan:
    """Everything weight matching needs to know about a spec (no tensors)."""

    spaces: tuple[SpacePlan, ...]
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
        selects.append(Select(math.prod(t_shape[:pos]), t_shape[pos],
                               math.prod(t_shape[pos + 1:]), q, bq))
    return split, a_perm, (n, bsz, *rest), t_perm, t_shape, tuple(selects)


def _build_plan(spec: WeightSpaceSpec, include_buffers: bool) -> Plan:
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
                copies.append(Copy(t.parameter, t.owner, offset, width, split, a_perm,
                                    a_shape, t_perm, t_shape))
            if selects:
                dynamic.append(Dynamic(offset, width, selects,
                                        tuple(sel.space for sel in selects)))
                scratch = max(scratch, width * n)
            if t.owner:
                own += width
            offset += width
        deps = tuple(sorted({q for d in dynamic for q in d.deps}))
        spaces.append(SpacePlan(
            name=s.name, n=n, blocks=s.permutation_blocks, width=offset, own=own,
            views=tuple(views), view_width=view_width, copies=tuple(copies),
            dynamic=tuple(dynamic), deps=deps, self_coupled=s.name in deps,
            params=frozenset(t.parameter for t in terms)))
    return Plan(tuple(spaces), tuple(parameters), scratch)


def plan_for(spec: WeightSpaceSpec, include_buffers: bool) -> Plan:
    """The cached :class:`Plan` of ``spec``."""
    return _per_spec(spec, include_buffers, "plan", _build_plan)
