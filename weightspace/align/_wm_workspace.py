"""Weight matching's workspace: the buffers one call fills, pooled for reuse.

A :class:`Workspace` holds, for one :class:`~weightspace.align._wm_plan.Plan`,
dtype and device, every buffer the engine writes (A's and B's cost columns,
the cost matrices, a scratch block) and every view into them, made once.
Workspaces are pooled (:func:`checkout` / :func:`checkin`): a repeated call on
the same architecture neither rebuilds the views nor touches fresh memory
(faulting in new pages costs as much as the products of a small model).
A checked-out workspace belongs to one call, so concurrent calls never share
buffers. Memory: about three copies of the cost parameters (A once, B
transposed once — each parameter enters up to two spaces — plus one scratch
block).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch import Tensor

from weightspace.align._wm_plan import Plan

__all__ = ["Workspace", "checkin", "checkout", "clear_workspaces"]


class Workspace:
    """The buffers of one plan for one dtype and device, with every view the
    engine writes through made once (a call only fills them).

    Per space: ``a_own`` ``[own, n]``: A's owner columns, transposed;
    ``a_rest`` ``[n, width - own]``: A's other columns (row layout); ``bcat``
    ``[width, n]``: all of B's columns, transposed; the cost matrix and, when
    the space has both kinds of columns, its owner part.
    """

    def __init__(self, plan: Plan, dtype: torch.dtype, device: torch.device) -> None:
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
_WORKSPACES: OrderedDict[tuple, Workspace] = OrderedDict()
_WORKSPACE_SLOTS = 2
_WORKSPACE_MAX_BYTES = 256 << 20
_WORKSPACE_LOCK = threading.Lock()


def checkout(plan: Plan, dtype: torch.dtype, device: torch.device) -> Workspace:
    """A workspace of ``plan``: a pooled one (taken out of the pool, so that
    concurrent calls never share buffers) or a new one."""
    with _WORKSPACE_LOCK:
        ws = _WORKSPACES.pop((id(plan), dtype, device), None)
    if ws is not None and ws.plan is plan:
        return ws
    return Workspace(plan, dtype, device)


def checkin(ws: Workspace) -> None:
    """Return ``ws`` to the pool (the most recent ``_WORKSPACE_SLOTS`` are
    kept; one over ``_WORKSPACE_MAX_BYTES`` is dropped instead)."""
    if ws.nbytes > _WORKSPACE_MAX_BYTES:
        return
    with _WORKSPACE_LOCK:
        _WORKSPACES[ws.key] = ws
        _WORKSPACES.move_to_end(ws.key)
        while len(_WORKSPACES) > _WORKSPACE_SLOTS:
            _WORKSPACES.popitem(last=False)


def clear_workspaces() -> None:
    """Drop every pooled workspace (frees their memory)."""
    with _WORKSPACE_LOCK:
        _WORKSPACES.clear()
