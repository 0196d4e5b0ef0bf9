"""Observing a network's activations at the places its spec names.

Several algorithms need the values a network's neurons take on data, not
just its weights:

* Git Re-Basin activation matching (Ainsworth, Hayase & Srinivasa 2023,
  "Git Re-Basin: Merging Models modulo Permutation Symmetries", ICLR 2023,
  Sec. 3.1) correlates the neurons of two networks on the same inputs;
* REPAIR (Jordan, Sedghi, Saukh, Entezari & Neyshabur 2023, "REPAIR:
  REnormalizing Permuted Activations for Interpolation Repair", ICLR 2023)
  and the BatchNorm reset rescale or re-estimate per-channel statistics;
* probe features (Kofinas et al. 2024, Neural Graphs) read every hidden
  neuron's value on learned inputs.

This module is the one place that knows *where* a layer's values can be seen
in a forward pass and *how* to collect them: the sites of a spec
(:func:`activation_sites`), forward hooks that are always removed
(:func:`capture`), eval mode that restores every submodule's flag
(:func:`eval_mode`) and per-channel moments accumulated in float64
(:class:`ChannelMoments`, :class:`CrossMoments`). It depends on the spec and
torch only, so both :mod:`weightspace.align` and :mod:`weightspace.nn` can
use it.

Sites. :func:`activation_sites` finds, for the layers of a spec, the module
whose input or output holds the layer's values:

================== ==================================================== ======
``place``          module hooked (``kind``)                             hook
================== ==================================================== ======
``pre_activation`` the layer's BatchNorm (``"batchnorm"``, one with     output
                   running statistics); else its LayerNorm / GroupNorm
                   / InstanceNorm with a per-channel affine
                   (``"norm"``); else, for a layer without a norm, its
                   Linear/Conv (``"weight"``: the module at the layer's
                   path, or the one owning its weight)
``consumer_input`` the module owning each weight that reads the layer   input
                   (``"weight"``), i.e. what the next layer receives:
                   after the activation, and after any norm or dropout
================== ==================================================== ======

``pre_activation`` sites exist for hidden layers (a BatchNorm site for any
layer that has one); layers without a Linear/Conv producer or whose norm has
no per-channel affine are skipped with a warning. ``consumer_input`` sites
leave out weights that read a flattened conv output (the channels are not
one axis there).

Shapes:
    A site's value is ``[N, C]`` (Linear), ``[N, ..., C]`` (Linear on
    sequences, LayerNorm) or ``[N, C, *spatial]`` (Conv, BatchNorm,
    GroupNorm); ``channel_dim`` says which axis is ``C``.
    :func:`channel_samples` turns it into ``[samples, C]``, counting every
    batch and spatial position as a sample; the moments are over those
    samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from weightspace.errors import WeightspaceError
from weightspace.spec.containers import ParameterSpec, WeightSpaceSpec

logger = logging.getLogger(__name__)

__all__ = [
    "SITE_PLACES",
    "STD_FLOOR",
    "ActivationSite",
    "Capture",
    "ChannelMoments",
    "CrossMoments",
    "Inputs",
    "activation_sites",
    "batches_on_device",
    "capture",
    "channel_samples",
    "eval_mode",
    "first_tensor",
    "input_batches",
    "is_weight_module",
    "module_device",
    "tracks_running_statistics",
]

#: Where :func:`activation_sites` looks (see the module docstring).
SITE_PLACES = ("pre_activation", "consumer_input")

#: Data to observe a network on: a tensor ``[N, *sample]`` or an iterable of
#: batches (tensors, or tuples whose first element is the input).
Inputs = Tensor | Iterable[Tensor]

# a standard deviation below this is a constant channel (no correlation, no rescaling)
STD_FLOOR = 1e-12


# ----------------------------------------------------------------------------- sites
@dataclass(frozen=True)
class ActivationSite:
    """One place in a forward pass where a layer's neuron values can be read.

    Attributes:
        module: path of the hooked module in the network.
        kind: what that module is: ``"weight"`` (a Linear/Conv, or the owner
            of a weight), ``"norm"`` (a LayerNorm / GroupNorm / InstanceNorm
            with a per-channel affine) or ``"batchnorm"`` (a BatchNorm with
            running statistics).
        channel_dim: the axis of the neurons in the hooked tensor: 1, or -1
            for Linear / LayerNorm values.
        hook: ``"output"`` (the module's output, a forward hook) or
            ``"input"`` (its first positional input, a forward pre-hook).
        layer: the :class:`~weightspace.spec.LayerSpec` whose neurons these
            are (``""`` for a site found without a spec).
        space: that layer's neuron space (``""`` likewise).
    """

    module: str
    kind: str
    channel_dim: int
    hook: str = "output"
    layer: str = ""
    space: str = ""


def is_weight_module(module: nn.Module | None) -> bool:
    """A Linear or a (non-transposed) Conv: a module whose output channels are
    the rows of its ``weight``."""
    return isinstance(module, nn.Linear) or (isinstance(module, _ConvNd) and not module.transposed)


def activation_sites(model: nn.Module, spec: WeightSpaceSpec, *,
                     place: str = "pre_activation") -> list[ActivationSite]:
    """The sites of ``model`` where the values of ``spec``'s layers can be read.

    Args:
        model: a module of the architecture ``spec`` was traced from.
        spec: its weight-space spec.
        place: ``"pre_activation"`` or ``"consumer_input"`` (the table in the
            module docstring).

    Returns:
        The sites in the spec's topological layer order.

    Raises:
        WeightspaceError: an unknown ``place``.
    """
    if place == "pre_activation":
        return _pre_activation_sites(model, spec)
    if place == "consumer_input":
        return _consumer_input_sites(model, spec)
    raise WeightspaceError(f"place must be one of {SITE_PLACES}, got {place!r}", parameter="place")


def _pre_activation_sites(model: nn.Module, spec: WeightSpaceSpec) -> list[ActivationSite]:
    modules = dict(model.named_modules())
    params_by_layer: dict[str, list[ParameterSpec]] = {}
    for p in spec.parameters:
        params_by_layer.setdefault(p.layer, []).append(p)
    sites: list[ActivationSite] = []
    seen_batchnorms: set[str] = set()
    for layer in spec.layers:
        params = params_by_layer.get(layer.name, [])
        batchnorms = [p.module for p in params if p.role == "running_mean"
                      and tracks_running_statistics(modules.get(p.module)) and p.module not in seen_batchnorms]
        if batchnorms or layer.norm == "batch":
            seen_batchnorms.update(batchnorms)
            sites += [ActivationSite(path, "batchnorm", 1, layer=layer.name, space=layer.space)
                      for path in batchnorms]
            continue
        if spec.space(layer.space).role != "hidden":
            continue
        if not (layer.op == "linear" or layer.op.startswith(("conv", "depthwise_conv"))):
            logger.debug("activation sites: skipping hidden layer %r (op %r is not a Linear/Conv)",
                         layer.name, layer.op)
            continue
        site = _weight_or_norm_site(modules, layer.name, layer.norm, layer.size, params)
        if site is not None:
            sites.append(ActivationSite(site[0], site[1], site[2], layer=layer.name,
                                        space=layer.space))
    return sites


def tracks_running_statistics(module: nn.Module | None) -> bool:
    """A BatchNorm that keeps running statistics (the ones a merge leaves stale)."""
    return isinstance(module, _BatchNorm) and module.track_running_stats


def _weight_or_norm_site(modules: dict[str, nn.Module], name: str, norm: str, size: int,
                         params: Sequence[ParameterSpec]) -> tuple[str, str, int] | None:
    """``(module, kind, channel_dim)`` of a hidden Linear/Conv layer without a
    BatchNorm, or ``None`` (with a warning) when there is nothing to hook."""
    path = name
    if not is_weight_module(modules.get(path)):
        owners = [p.module for p in params if p.role in ("weight", "depthwise_weight")]
        path = owners[0] if owners else ""
    module = modules.get(path)
    if not is_weight_module(module):
        logger.warning("activation sites: skipping hidden layer %r: no Linear/Conv module found "
                       "at %r or owning its weight", name, name)
        return None
    if norm == "none":
        return path, "weight", -1 if isinstance(module, nn.Linear) else 1
    norm_paths = sorted({p.module for p in params if p.role == "norm_weight"})
    norm_module = modules.get(norm_paths[0]) if len(norm_paths) == 1 else None
    weight = getattr(norm_module, "weight", None)
    bias = getattr(norm_module, "bias", None)
    if (norm_module is None or not isinstance(weight, Tensor) or not isinstance(bias, Tensor)
            or weight.dim() != 1 or weight.numel() != size):
        logger.warning("activation sites: skipping layer %r: its %s norm has no per-channel "
                       "affine weight and bias", name, norm)
        return None
    return norm_paths[0], "norm", -1 if isinstance(norm_module, nn.LayerNorm) else 1


def _consumer_input_sites(model: nn.Module, spec: WeightSpaceSpec) -> list[ActivationSite]:
    modules = dict(model.named_modules())
    sites: list[ActivationSite] = []
    for consumer in spec.layers:
        for edge in consumer.inputs:
            if edge.kind not in ("weight", "depthwise") or edge.parameter is None:
                continue
            param = spec.parameter(edge.parameter)
            reads = param.axes[1] if len(param.axes) > 1 else None
            if reads is not None and reads.block != 1:
                continue  # a flattened conv output: the channels are not one axis
            if param.module not in modules:
                logger.warning("activation sites: the network has no module %r (owner of %r)",
                               param.module, param.name)
                continue
            source = spec.layer(edge.source)
            sites.append(ActivationSite(param.module, "weight",
                                        -1 if consumer.op == "linear" else 1, hook="input",
                                        layer=source.name, space=source.space))
    return sites


# --------------------------------------------------------------------------- capture
class _AllSitesSeen(Exception):
    """Raised by a hook to end a forward pass once every site has been recorded."""


class Capture:
    """What a :func:`capture` block has recorded.

    Attributes:
        sites: the hooked sites.
        values: ``{site: [value, ...]}``, every value seen since the last
            :meth:`clear` in call order (``record="values"``); the tensors
            are not detached, so gradients flow through them.
        moments: ``{site: ChannelMoments}`` accumulated over the whole block
            (``record="moments"``).
    """

    def __init__(self, sites: Sequence[ActivationSite], record: str, stop_early: bool) -> None:
        self.sites = tuple(dict.fromkeys(sites))  # a site listed twice is hooked once
        self.record = record
        self.stop_early = stop_early
        self.values: dict[ActivationSite, list[Any]] = {s: [] for s in self.sites}
        self.moments: dict[ActivationSite, ChannelMoments] = (
            {s: ChannelMoments() for s in self.sites} if record == "moments" else {})
        self._waiting = set(self.sites)

    def clear(self) -> None:
        """Forget the recorded values (not the moments)."""
        for values in self.values.values():
            values.clear()

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` (a forward pass); with ``stop_early`` it is
        cut short once every site has been recorded and returns ``None``."""
        self._waiting = set(self.sites)
        try:
            return fn(*args, **kwargs)
        except _AllSitesSeen:
            return None

    def _record(self, site: ActivationSite, value: Any) -> None:
        if self.record == "moments":
            if not isinstance(value, Tensor):
                raise TypeError(f"the {site.hook} of module {site.module!r} is a "
                                f"{type(value).__name__}, not a tensor")
            self.moments[site].update(value, site.channel_dim)
        else:
            self.values[site].append(value)
        self._waiting.discard(site)
        if self.stop_early and not self._waiting:
            raise _AllSitesSeen

    def check_all_seen(self, caller: str) -> None:
        """Raise ``RuntimeError`` naming the first site that recorded nothing
        (its module was not called); ``caller`` starts the message."""
        for site in self.sites:
            empty = (self.moments[site].count == 0 if self.record == "moments"
                     else not self.values[site])
            if empty:
                raise RuntimeError(f"{caller}: module {site.module!r} (layer {site.layer!r}) was "
                                   f"not called during the forward pass")


@contextmanager
def capture(model: nn.Module, sites: Iterable[ActivationSite], *, record: str = "values",
            stop_early: bool = False) -> Iterator[Capture]:
    """Hook ``sites`` of ``model`` for a ``with`` block.

    The hooks are removed when the block ends, also on an exception.

    Args:
        model: the network the sites belong to.
        sites: the sites to record (e.g. from :func:`activation_sites`).
        record: ``"values"`` (keep every hooked tensor) or ``"moments"``
            (accumulate per-channel :class:`ChannelMoments` in float64).
        stop_early: end each forward pass run through :meth:`Capture.run`
            as soon as every site has been recorded (the later layers are
            not computed). Call the model through ``run`` then.

    Yields:
        The :class:`Capture`.

    Raises:
        WeightspaceError: a bad ``record``, or a site whose module is not
            in ``model``.

    Example::

        >>> with eval_mode(model), capture(model, sites, record="moments") as seen:
        ...     for batch in batches:
        ...         model(batch)
        >>> seen.moments[sites[0]].mean
    """
    if record not in ("values", "moments"):
        raise WeightspaceError(f"record must be 'values' or 'moments', got {record!r}",
                               parameter="record")
    seen = Capture(list(sites), record, stop_early)
    modules = dict(model.named_modules())
    handles = []
    try:
        for site in seen.sites:
            module = modules.get(site.module)
            if module is None:
                raise WeightspaceError(f"the network has no module {site.module!r} (site of "
                                       f"layer {site.layer!r})", parameter="sites")
            handles.append(_register(module, site, seen))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _register(module: nn.Module, site: ActivationSite, seen: Capture):
    if site.hook == "input":
        return module.register_forward_pre_hook(
            lambda _module, args: seen._record(site, args[0] if args else None))
    if site.hook == "output":
        return module.register_forward_hook(
            lambda _module, _args, output: seen._record(site, output))
    raise WeightspaceError(f"site hook must be 'input' or 'output', got {site.hook!r} (module "
                           f"{site.module!r})", parameter="sites")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for a ``with`` block; afterwards every
    submodule gets back its own training flag (mixed modes included), also on
    an exception. Gradients are not switched off: add ``torch.no_grad()``."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


# --------------------------------------------------------------------------- moments
def channel_samples(value: Tensor, channel_dim: int) -> Tensor:
    """``[..., C, ...] → [samples, C]``: every other axis (batch, spatial,
    sequence) counts as samples. Detached, dtype kept."""
    value = value.detach().movedim(channel_dim, -1)
    return value.reshape(-1, value.shape[-1])


class ChannelMoments:
    """Running per-channel count, mean and sum of squared deviations.

    Batches are merged with Chan et al.'s parallel update in float64, so
    there is no cancellation when the mean is large compared with the spread.

    Shapes:
        - update(x): ``x`` with channels on ``channel_dim``
        - mean, variance(): ``[C]`` float64
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, x: Tensor, channel_dim: int = 1) -> None:
        x = channel_samples(x.to(torch.float64), channel_dim)
        n = x.shape[0]
        if n == 0:
            return
        mean = x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def variance(self, unbiased: bool) -> Tensor:
        """Per-channel variance (``unbiased``: divided by ``count - 1``)."""
        if self.m2 is None:
            raise RuntimeError("ChannelMoments.variance: no values were recorded")
        return self.m2 / max(self.count - 1 if unbiased else self.count, 1)

    def std(self) -> Tensor:
        """Per-channel population standard deviation."""
        return self.variance(unbiased=False).sqrt()


class CrossMoments:
    """Sufficient statistics of two sets of ``C`` channels seen on the same
    samples: count, per-channel sums and sums of squares, and the cross
    products ``Z_a^T Z_b``, all float64, so memory does not grow with the data.

    Args:
        channels: ``C``.
        device: where the sums live.

    Shapes:
        - update(za, zb): ``[samples, C]`` each
        - inner(), correlation(): ``[C, C]`` float64, rows A's channels
    """

    def __init__(self, channels: int, device: torch.device | str | None = None) -> None:
        kw = {"dtype": torch.float64, "device": device}
        self.count = 0
        self.sum_a = torch.zeros(channels, **kw)
        self.sum_b = torch.zeros(channels, **kw)
        self.sq_a = torch.zeros(channels, **kw)
        self.sq_b = torch.zeros(channels, **kw)
        self.cross = torch.zeros(channels, channels, **kw)

    def update(self, za: Tensor, zb: Tensor) -> None:
        za, zb = za.double(), zb.double()
        self.count += za.shape[0]
        self.sum_a += za.sum(0)
        self.sum_b += zb.sum(0)
        self.sq_a += (za * za).sum(0)
        self.sq_b += (zb * zb).sum(0)
        self.cross += za.T @ zb

    def inner(self) -> Tensor:
        """The mean product ``Z_a^T Z_b / n``."""
        return self.cross / self.count

    def covariance(self) -> Tensor:
        n = self.count
        return self.cross / n - (self.sum_a / n)[:, None] * (self.sum_b / n)[None, :]

    def correlation(self) -> Tensor:
        """Pearson correlation of every channel pair (0 for a constant channel)."""
        n = self.count
        var_a = (self.sq_a / n - (self.sum_a / n) ** 2).clamp_min(0)
        var_b = (self.sq_b / n - (self.sum_b / n) ** 2).clamp_min(0)
        std = var_a.sqrt().clamp_min(STD_FLOOR)[:, None] * var_b.sqrt().clamp_min(STD_FLOOR)
        return self.covariance() / std


# ------------------------------------------------------------------------------ data
def first_tensor(batch: object) -> Tensor:
    """The input of one batch: the tensor itself, or the first element of an
    ``(x, y, ...)`` tuple (a DataLoader's items)."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"inputs must be a tensor or an iterable of tensors (or of (x, ...) "
                    f"tuples), got an item of type {type(batch).__name__}")


def input_batches(inputs: Inputs, batch_size: int) -> list[Tensor]:
    """Materialise ``inputs`` as a list of batches.

    A tensor is split along its first axis into ``ceil(N / batch_size)``
    batches of (nearly) equal size, so no batch has a single sample unless
    ``N`` is 1 (BatchNorm cannot train on one value per channel). An iterable
    is taken as given batches (the first element of tuple items is used).

    Raises:
        WeightspaceError: a bad ``batch_size`` or empty ``inputs``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise WeightspaceError(f"batch_size must be a positive integer, got {batch_size!r}",
                               parameter="batch_size")
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0 or len(inputs) == 0:
            raise WeightspaceError(f"inputs must have a batch axis with at least one sample, got "
                                   f"a tensor of shape {list(inputs.shape)}", parameter="inputs")
        n_batches = -(-len(inputs) // batch_size)
        return list(torch.tensor_split(inputs, n_batches))
    batches = [first_tensor(b) for b in inputs]
    if not batches:
        raise WeightspaceError("inputs is empty: the statistics need at least one batch",
                               parameter="inputs")
    return batches


def module_device(model: nn.Module) -> torch.device | None:
    """The device of ``model``'s first parameter or buffer (``None`` without any)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return None


def batches_on_device(batches: Iterable[Tensor], model: nn.Module) -> Iterator[Tensor]:
    """``batches``, each moved to ``model``'s device."""
    device = module_device(model)
    for batch in batches:
        yield batch if device is None else batch.to(device)
