"""Weight matching's engine: permutation coordinate descent on a workspace.

:class:`_Matcher` runs Git Re-Basin's descent (see
:mod:`weightspace.align.weight_matching`) on the buffers of a
:class:`~weightspace.align._wm_workspace.Workspace` laid out by the
:class:`~weightspace.align._wm_plan.Plan`; :func:`descend` drives it sweep by
sweep. Why it is fast:

* No fully permuted copy of B is built. A B-side block is re-gathered in
  place (by the relative permutation from its last state, via a scratch
  buffer) only when a permutation of one of its other axes changed; blocks
  without permutable other axes are filled once per call.
* A space is not re-solved when no permutation its cost depends on changed
  since its last solve (the assignment would return its current permutation).
* A space whose products are large is not recomputed at all after its first
  solve when few rows moved: its cost is updated from the previous solve by
  ``ΔC = A_rows @ (B_new − B_old)_rows`` over only the B rows that a changed
  permutation moved, which also never repeats the products of parameters
  whose other axes are fixed (an MLP's first layer). The permutations found
  are the same as with recomputed products (tested); the cost entries differ
  only by float rounding.
* The owner columns are multiplied separately (one extra GEMM call, same
  flops): the objective is the sum over spaces of ``Σ_i C_own[i, perm[i]]``;
  after the last sweep it is read from the owner products of each space's
  last solve instead of a pass over the weights. The objective before the
  first sweep (and for a space whose owner product is stale) is computed
  directly from the buffers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from weightspace.align._wm_plan import Plan, SpacePlan, inner_objective
from weightspace.align._wm_workspace import Workspace
from weightspace.align.assignment import WeightMatchingResult, solve_assignment
from weightspace.spec.containers import WeightSpaceSpec, check_finite
from weightspace.spec.symmetry import Permutation, expand_index

logger = logging.getLogger("weightspace.align.weight_matching")

__all__ = ["descend"]

# torch's own ``index_select``: torch_geometric replaces ``torch.index_select``
# with a Python wrapper (for its HashTensor) that costs several microseconds
# per call, and the descent makes dozens of these calls per sweep.
_index_select = getattr(torch._C._VariableFunctions, "index_select", torch.index_select)

#: A solve updates its cost from the previous one (instead of recomputing
#: the products) when the rows to update are at most this fraction of the
#: cost's columns ...
_INCREMENTAL_MAX_ROWS = 0.6
#: ... and the space's products are at least this many multiply-adds
#: (below it the extra gathers cost more than the products saved).
_INCREMENTAL_MIN_MACS = 1 << 22


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
        plan: Plan,
        ws: Workspace,
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

    def _set(self, sp: SpacePlan, perm: np.ndarray) -> None:
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



def descend(spec: WeightSpaceSpec, plan: Plan, ws: Workspace, state_a: Mapping[str, Tensor],
            state_b: Mapping[str, Tensor], perms: dict[str, Tensor], identity: dict[str, bool],
            include_buffers: bool, tol: float, record: list | None, max_sweeps: int, seed: int,
            progress: bool) -> WeightMatchingResult:
    """The descent of :func:`~weightspace.align.weight_matching` on a
    checked-out workspace (arguments as there; ``identity[space]``: B as
    filled already holds ``perms[space]``, i.e. it is the identity)."""
    matcher = _Matcher(spec, plan, ws, state_a, state_b, perms, identity, include_buffers,
                       tol, record)
    # every cost value enters the objective once: a non-finite objective
    # flags NaN/inf weights without a separate pass over the parameters
    objective = matcher.objective()
    if not math.isfinite(objective):
        # name the entry; returns when every value is finite (it overflowed)
        check_finite(state_a, "state_a", plan.parameters)
        check_finite(state_b, "state_b", plan.parameters)
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
