"""Git Re-Basin activation matching: permute model B into model A's frame.

Reference: Ainsworth, Hayase & Srinivasa 2023, "Git Re-Basin: Merging Models
modulo Permutation Symmetries" (ICLR 2023), Sec. 3.1 ("matching
activations").

Both networks are run on the same data; for every permutable neuron space the
neurons of B are assigned to the neurons of A whose activations they
correlate with best::

    C_p[i, j] = corr(Z_a[:, i], Z_b[:, j])      (or the plain inner product)
    P_p = argmax_P  trace(P^T C_p)               (linear_sum_assignment)

Spaces are independent (each cost only depends on the data and the two
fixed networks), so one assignment per space solves the problem: there are no
sweeps.

Which activations. The hooked values are found by
:func:`weightspace.merge.repair.repair_points`: for every layer of a
permutable space, the output of its norm (BatchNorm / LayerNorm /
GroupNorm …) if it has one, else the output of its Linear/Conv module. For a
layer without a residual input the layer's nonlinearity (``LayerSpec
.activation``, e.g. ReLU) is then applied, so the features are the
post-activation values that Git Re-Basin uses (plus ``tie_break`` times
the same cost on the pre-activations, which only decides between neurons the
post-activations cannot separate, such as ReLU units dead on the data). A layer with a residual input
(ResNet blocks writing into a residual stream) applies its nonlinearity after
the addition; there the *branch* output (pre-addition, pre-activation) is
used. A residual stream (several layers writing into one space) gets the
features of all its layers stacked as extra samples (rows), so one
permutation fits all of them. Conv features count every spatial position as a
sample (``[N, C, H, W] → [N·H·W, C]``).

Only sufficient statistics are kept per space (count, per-neuron sums and
sums of squares, and the cross products ``Z_a^T Z_b``, all float64), so memory
does not grow with the data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from weightspace.align.assignment import (
    WeightMatchingResult,
    check_states,
    solve_assignment,
)
from weightspace.merge.batchnorm import _first_tensor
from weightspace.merge.repair import RepairPoint, _Eval, repair_points
from weightspace.models.activations import make_activation
from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.symmetry import Permutation

logger = logging.getLogger(__name__)

__all__ = ["activation_matching", "activation_points"]

_STD_FLOOR = 1e-12
_COSTS = ("correlation", "inner")


def activation_points(model: nn.Module, spec: WeightSpaceSpec) -> dict[str, list[RepairPoint]]:
    """``{space: [points]}``: the modules whose outputs give each permutable
    space's features (see the module docstring). A permutable space without a
    hookable layer is left out (a warning names it)."""
    permutable = {s.name for s in spec.permutable_spaces}
    out: dict[str, list[RepairPoint]] = {name: [] for name in permutable}
    for point in repair_points(model, spec):
        space = spec.layer(point.layer).space
        if space in out:
            out[space].append(point)
    for name in [n for n, pts in out.items() if not pts]:
        logger.warning("activation matching: no Linear/Conv/norm module found for space %r; "
                       "it keeps the identity permutation", name)
        del out[name]
    return out


class _Stats:
    """Sufficient statistics of (Z_a, Z_b) for one space, in float64."""

    def __init__(self, n: int, device: torch.device) -> None:
        kw = {"dtype": torch.float64, "device": device}
        self.count = 0
        self.sum_a = torch.zeros(n, **kw)
        self.sum_b = torch.zeros(n, **kw)
        self.sq_a = torch.zeros(n, **kw)
        self.sq_b = torch.zeros(n, **kw)
        self.cross = torch.zeros(n, n, **kw)

    def update(self, za: Tensor, zb: Tensor) -> None:
        za, zb = za.double(), zb.double()
        self.count += za.shape[0]
        self.sum_a += za.sum(0)
        self.sum_b += zb.sum(0)
        self.sq_a += (za * za).sum(0)
        self.sq_b += (zb * zb).sum(0)
        self.cross += za.T @ zb

    def cost(self, kind: str) -> Tensor:
        n = self.count
        if kind == "inner":
            return self.cross / n
        mean_a, mean_b = self.sum_a / n, self.sum_b / n
        var_a = (self.sq_a / n - mean_a**2).clamp_min(0)
        var_b = (self.sq_b / n - mean_b**2).clamp_min(0)
        cov = self.cross / n - mean_a[:, None] * mean_b[None, :]
        std = var_a.sqrt().clamp_min(_STD_FLOOR)[:, None] * var_b.sqrt().clamp_min(_STD_FLOOR)
        return cov / std


def _features(value: Tensor, channel_dim: int) -> Tensor:
    """``[..., C, ...] → [samples, C]`` (every position a sample)."""
    value = value.detach().movedim(channel_dim, -1)
    return value.reshape(-1, value.shape[-1])


def _batches(inputs: Tensor | Iterable[Tensor], batch_size: int, max_samples: int | None,
             seed: int) -> Iterable[Tensor]:
    """Yield batches of at most ``batch_size`` samples (``max_samples`` in all)."""
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0 or len(inputs) == 0:
            raise ValueError(f"inputs is empty: activation matching needs at least one sample, "
                             f"got a tensor of shape {list(inputs.shape)}")
        if max_samples is not None and max_samples < len(inputs):
            g = torch.Generator().manual_seed(seed)
            index = torch.randperm(len(inputs), generator=g)[:max_samples].sort().values
            inputs = inputs[index.to(inputs.device)]
        yield from torch.split(inputs, batch_size)
        return
    seen = 0
    for item in inputs:
        batch = _first_tensor(item)
        if batch.dim() == 0:
            raise ValueError("inputs: every batch needs a batch axis, got a 0-d tensor")
        if max_samples is not None:
            batch = batch[: max_samples - seen]
        if len(batch) == 0:
            if max_samples is not None and seen >= max_samples:
                return
            continue
        yield from torch.split(batch, batch_size)
        seen += len(batch)
        if max_samples is not None and seen >= max_samples:
            return


def activation_matching(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    spec: WeightSpaceSpec,
    inputs: Tensor | Iterable[Tensor],
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
    seed: int = 0,
    cost: str = "correlation",
    tie_break: float = 1e-4,
) -> WeightMatchingResult:
    """Find the permutation of B's hidden neurons whose activations best match A's.

    Git Re-Basin activation matching, see the module docstring.

    Args:
        model: a module of the architecture (its own parameters are not used:
            A and B are run with :func:`torch.func.functional_call`, in eval
            mode; the model's modes are restored afterwards).
        state_a: the reference state dict (every key of ``spec``).
        state_b: the state dict to permute.
        spec: the weight-space spec of the architecture.
        inputs: data: a tensor ``[N, *sample]`` or an iterable of batches
            (tensors or ``(x, ...)`` tuples).
        batch_size: the largest batch run at once.
        max_samples: use at most this many input samples (a random subset,
            drawn with ``seed``, of a tensor; the first ones of an iterable).
        seed: seeds that subset.
        cost: ``"correlation"`` (Pearson correlation of each neuron pair, as in
            Git Re-Basin) or ``"inner"`` (the mean product ``Z_a^T Z_b / n``).
        tie_break: weight of the same cost computed on the pre-activations,
            added to the post-activation cost of spaces with a nonlinearity.
            It only decides between neurons the post-activations cannot tell
            apart (e.g. ReLU units that are dead on the data, whose
            correlation is 0 with everything); ``0`` disables it.

    Returns:
        A :class:`~weightspace.align.WeightMatchingResult`: ``permutation``
        maps B onto A's frame (``spec.permute(state_b, result.permutation)``);
        ``objective`` is the sum over spaces of the matched cost entries
        (post-activation cost, without the tie-break term);
        ``sweeps = 1``, ``history = (objective,)``, ``converged = True``.

    Raises:
        StateDictMismatchError: a state dict does not match the spec.
        ValueError: empty inputs, a bad ``batch_size``/``max_samples``/``cost``,
            or non-finite activations (the message names the space).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_samples is not None and (isinstance(max_samples, bool)
                                    or not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    if not (isinstance(tie_break, (int, float)) and math.isfinite(tie_break) and tie_break >= 0):
        raise ValueError(f"tie_break must be a finite number >= 0, got {tie_break!r}")
    if cost not in _COSTS:
        raise ValueError(f"cost must be one of {_COSTS}, got {cost!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_states(spec, state_a=state_a, state_b=state_b)

    points = activation_points(model, spec)
    modules = dict(model.named_modules())
    first = next(iter(state_a.values()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = next((t.dtype for t in state_a.values() if t.is_floating_point()), torch.float32)
    sizes = {s.name: s.size for s in spec.permutable_spaces}
    stats = {name: _Stats(sizes[name], device) for name in points}
    pre_stats: dict[str, _Stats] = {}
    activations: dict[str, nn.Module] = {}
    for pts in points.values():
        for p in pts:
            layer = spec.layer(p.layer)
            residual = any(i.kind == "residual" for i in layer.inputs)
            if not residual and layer.activation != "identity":
                try:
                    activations[p.module] = make_activation(layer.activation)
                except ValueError:
                    logger.warning("activation matching: unknown activation %r of layer %r; "
                                   "using its pre-activation", layer.activation, layer.name)

    captured: dict[str, Tensor] = {}
    hooks = []

    def make_hook(path: str):
        def hook(module, args, output):
            captured[path] = output
        return hook

    sample_count = 0
    try:
        for pts in points.values():
            for p in pts:
                hooks.append(modules[p.module].register_forward_hook(make_hook(p.module)))
        with _Eval(model), torch.no_grad():
            for batch in _batches(inputs, batch_size, max_samples, seed):
                batch = batch.to(device)
                if batch.is_floating_point():
                    batch = batch.to(dtype)
                sample_count += len(batch)
                feats = []
                for state in (state_a, state_b):
                    captured.clear()
                    functional_call(model, dict(state), (batch,))
                    feats.append(dict(captured))
                for name, pts in points.items():
                    post: tuple[list, list] = ([], [])
                    pre: tuple[list, list] = ([], [])
                    for p in pts:
                        for store, side in zip(feats, (0, 1), strict=True):
                            if p.module not in store:
                                raise RuntimeError(
                                    f"activation matching: module {p.module!r} (layer "
                                    f"{p.layer!r}) was not called during the forward pass")
                            value = _features(store[p.module], p.channel_dim)
                            pre[side].append(value)
                            if p.module in activations:
                                value = activations[p.module](value)
                            post[side].append(value)
                    stats[name].update(torch.cat(post[0]), torch.cat(post[1]))
                    if any(p.module in activations for p in pts) and tie_break > 0:
                        if name not in pre_stats:
                            pre_stats[name] = _Stats(sizes[name], device)
                        pre_stats[name].update(torch.cat(pre[0]), torch.cat(pre[1]))
    finally:
        for h in hooks:
            h.remove()
    if sample_count == 0:
        raise ValueError("inputs is empty: activation matching needs at least one sample")

    perms = {s.name: torch.arange(s.size) for s in spec.permutable_spaces}
    objective = 0.0
    for s in spec.permutable_spaces:
        if s.name not in stats:
            continue
        c = stats[s.name].cost(cost)
        solve = c if s.name not in pre_stats else c + tie_break * pre_stats[s.name].cost(cost)
        if not bool(torch.isfinite(solve).all()):
            raise ValueError(f"activation matching: the activations of space {s.name!r} are not "
                             f"finite (NaN/inf weights or inputs?)")
        col = solve_assignment(solve.cpu().numpy(), s.permutation_blocks)
        objective += float(c.cpu().numpy()[np.arange(s.size), col].sum())
        perms[s.name] = torch.from_numpy(np.ascontiguousarray(col, dtype=np.int64))
    if not math.isfinite(objective):
        raise ValueError("activation matching: the objective is not finite")
    return WeightMatchingResult(
        permutation=Permutation(perms),
        sweeps=1,
        objective=objective,
        history=(objective,),
        converged=True,
        solves=len(stats),
    )
