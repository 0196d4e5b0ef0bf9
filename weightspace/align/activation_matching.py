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

Which activations. The hooked values are the ``pre_activation`` sites of
:func:`weightspace.activations.activation_sites`: for every layer of a
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

from weightspace.activations import (
    ActivationSite,
    Capture,
    CrossMoments,
    activation_sites,
    capture,
    channel_samples,
    eval_mode,
    first_tensor,
)
from weightspace.align.weight_matching import (
    WeightMatchingResult,
    check_states,
    solve_assignment,
)
from weightspace.errors import WeightspaceError
from weightspace.models.activations import make_activation
from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.symmetry import Permutation

logger = logging.getLogger(__name__)

__all__ = ["activation_matching", "matching_sites"]

_COSTS = ("correlation", "inner")


def matching_sites(model: nn.Module, spec: WeightSpaceSpec) -> dict[str, list[ActivationSite]]:
    """``{space: [sites]}``: where each permutable space's features are read
    (see the module docstring). A permutable space without a hookable layer
    is left out (a warning names it)."""
    permutable = {s.name for s in spec.permutable_spaces}
    out: dict[str, list[ActivationSite]] = {name: [] for name in permutable}
    for site in activation_sites(model, spec):
        if site.space in out:
            out[site.space].append(site)
    for name in [n for n, sites in out.items() if not sites]:
        logger.warning("activation matching: no Linear/Conv/norm module found for space %r; "
                       "it keeps the identity permutation", name)
        del out[name]
    return out


def _batches(inputs: Tensor | Iterable[Tensor], batch_size: int, max_samples: int | None,
             seed: int) -> Iterable[Tensor]:
    """Yield batches of at most ``batch_size`` samples (``max_samples`` in all)."""
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0 or len(inputs) == 0:
            raise WeightspaceError(f"inputs is empty: activation matching needs at least one "
                                   f"sample, got a tensor of shape {list(inputs.shape)}",
                                   parameter="inputs")
        if max_samples is not None and max_samples < len(inputs):
            g = torch.Generator().manual_seed(seed)
            index = torch.randperm(len(inputs), generator=g)[:max_samples].sort().values
            inputs = inputs[index.to(inputs.device)]
        yield from torch.split(inputs, batch_size)
        return
    seen = 0
    for item in inputs:
        batch = first_tensor(item)
        if batch.dim() == 0:
            raise WeightspaceError("inputs: every batch needs a batch axis, got a 0-d tensor",
                                   parameter="inputs")
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


def _check_arguments(model: nn.Module, batch_size: int, max_samples: int | None,
                     tie_break: float, cost: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise WeightspaceError(f"batch_size must be a positive integer, got {batch_size!r}",
                               parameter="batch_size")
    if max_samples is not None and (isinstance(max_samples, bool)
                                    or not isinstance(max_samples, int) or max_samples < 1):
        raise WeightspaceError(f"max_samples must be a positive integer or None, got "
                               f"{max_samples!r}", parameter="max_samples")
    if not (isinstance(tie_break, (int, float)) and math.isfinite(tie_break) and tie_break >= 0):
        raise WeightspaceError(f"tie_break must be a finite number >= 0, got {tie_break!r}",
                               parameter="tie_break")
    if cost not in _COSTS:
        raise WeightspaceError(f"cost must be one of {_COSTS}, got {cost!r}", parameter="cost")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def _nonlinearities(spec: WeightSpaceSpec,
                    sites: Mapping[str, list[ActivationSite]]) -> dict[ActivationSite, nn.Module]:
    """The nonlinearity applied to each site's values to get post-activation
    features; sites of residual layers (whose nonlinearity follows the
    addition) and of linear layers have none."""
    out: dict[ActivationSite, nn.Module] = {}
    for site in (site for space_sites in sites.values() for site in space_sites):
        layer = spec.layer(site.layer)
        residual = any(i.kind == "residual" for i in layer.inputs)
        if not residual and layer.activation != "identity":
            try:
                out[site] = make_activation(layer.activation)
            except ValueError:
                logger.warning("activation matching: unknown activation %r of layer %r; "
                               "using its pre-activation", layer.activation, layer.name)
    return out


class _Statistics:
    """The moments of every matched space, post-activation and (for the
    tie-break) pre-activation, accumulated batch by batch."""

    def __init__(self, spec: WeightSpaceSpec, sites: Mapping[str, list[ActivationSite]],
                 nonlinearities: Mapping[ActivationSite, nn.Module], tie_break: float,
                 device: torch.device) -> None:
        self.sites, self.nonlinearities = sites, nonlinearities
        self.sizes = {name: spec.space(name).size for name in sites}
        self.device = device
        self.post = {name: CrossMoments(self.sizes[name], device) for name in sites}
        self.pre: dict[str, CrossMoments] = {}
        self.tie_break = tie_break
        self.samples = 0

    def update(self, features: tuple[dict[ActivationSite, Tensor], dict[ActivationSite, Tensor]]
               ) -> None:
        """Add one batch: ``features`` are the hooked values of A and of B."""
        for name, sites in self.sites.items():
            post: tuple[list, list] = ([], [])
            pre: tuple[list, list] = ([], [])
            for site in sites:
                for side, store in enumerate(features):
                    value = channel_samples(store[site], site.channel_dim)
                    pre[side].append(value)
                    if site in self.nonlinearities:
                        value = self.nonlinearities[site](value)
                    post[side].append(value)
            self.post[name].update(torch.cat(post[0]), torch.cat(post[1]))
            if self.tie_break > 0 and any(site in self.nonlinearities for site in sites):
                if name not in self.pre:
                    self.pre[name] = CrossMoments(self.sizes[name], self.device)
                self.pre[name].update(torch.cat(pre[0]), torch.cat(pre[1]))


def _forward_features(seen: Capture, model: nn.Module, state: Mapping[str, Tensor],
                      batch: Tensor) -> dict[ActivationSite, Tensor]:
    """The hooked value of every site for ``model`` with ``state`` on ``batch``
    (the last call's, for a module that runs more than once)."""
    seen.clear()
    functional_call(model, dict(state), (batch,))
    seen.check_all_seen("activation matching")
    return {site: values[-1] for site, values in seen.values.items()}


def _collect_statistics(model: nn.Module, state_a: Mapping[str, Tensor],
                        state_b: Mapping[str, Tensor], stats: _Statistics,
                        batches: Iterable[Tensor]) -> None:
    """Run A and B on every batch (eval mode, no gradients) into ``stats``."""
    sites = [site for space_sites in stats.sites.values() for site in space_sites]
    dtype = next((t.dtype for t in state_a.values() if t.is_floating_point()), torch.float32)
    with eval_mode(model), torch.no_grad(), capture(model, sites) as seen:
        for batch in batches:
            batch = batch.to(stats.device)
            if batch.is_floating_point():
                batch = batch.to(dtype)
            stats.samples += len(batch)
            stats.update((_forward_features(seen, model, state_a, batch),
                          _forward_features(seen, model, state_b, batch)))
    if stats.samples == 0:
        raise WeightspaceError("inputs is empty: activation matching needs at least one sample",
                               parameter="inputs")


def _space_cost(moments: CrossMoments, cost: str) -> Tensor:
    return moments.inner() if cost == "inner" else moments.correlation()


def _solve_spaces(spec: WeightSpaceSpec, stats: _Statistics,
                  cost: str) -> tuple[dict[str, Tensor], float]:
    """One assignment per matched space: ``(permutations, objective)``; the
    objective sums the matched post-activation cost entries."""
    perms = {s.name: torch.arange(s.size) for s in spec.permutable_spaces}
    objective = 0.0
    for s in spec.permutable_spaces:
        if s.name not in stats.post:
            continue
        c = _space_cost(stats.post[s.name], cost)
        if s.name in stats.pre:
            solve = c + stats.tie_break * _space_cost(stats.pre[s.name], cost)
        else:
            solve = c
        if not bool(torch.isfinite(solve).all()):
            raise WeightspaceError(f"activation matching: the activations of space {s.name!r} "
                                   f"are not finite (NaN/inf weights or inputs?)",
                                   parameter="inputs")
        col = solve_assignment(solve.cpu().numpy(), s.permutation_blocks)
        objective += float(c.cpu().numpy()[np.arange(s.size), col].sum())
        perms[s.name] = torch.from_numpy(np.ascontiguousarray(col, dtype=np.int64))
    if not math.isfinite(objective):
        raise WeightspaceError("activation matching: the objective is not finite",
                               parameter="inputs")
    return perms, objective


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
        WeightspaceError: empty inputs, a bad ``batch_size`` / ``max_samples``
            / ``tie_break`` / ``cost`` (``parameter`` names it), or non-finite
            activations (the message names the space).
    """
    _check_arguments(model, batch_size, max_samples, tie_break, cost)
    check_states(spec, state_a=state_a, state_b=state_b)
    sites = matching_sites(model, spec)
    first = next(iter(state_a.values()), None)
    device = first.device if first is not None else torch.device("cpu")
    stats = _Statistics(spec, sites, _nonlinearities(spec, sites), tie_break, device)
    _collect_statistics(model, state_a, state_b, stats,
                        _batches(inputs, batch_size, max_samples, seed))
    perms, objective = _solve_spaces(spec, stats, cost)
    return WeightMatchingResult(
        permutation=Permutation(perms),
        sweeps=1,
        objective=objective,
        history=(objective,),
        converged=True,
        solves=len(stats.post),
    )
