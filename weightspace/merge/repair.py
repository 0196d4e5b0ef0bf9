"""REPAIR: renormalise the neurons of an interpolated network.

Reference: Jordan, Sedghi, Saukh, Entezari & Neyshabur 2023, "REPAIR:
REnormalizing Permuted Activations for Interpolation Repair" (ICLR 2023).

Interpolating two aligned networks shrinks the variance of their hidden
activations layer after layer ("variance collapse"), which is what makes the
midpoint of two good networks bad. REPAIR measures, on a little data, the
per-channel mean and standard deviation of each hidden layer in both
endpoints, and rescales/shifts each channel of the interpolated network so
that its statistics are the interpolated ones::

    target_mean = (1 − λ)·mean_A + λ·mean_B
    target_std  = (1 − λ)·std_A  + λ·std_B
    y' = (y − mean_merged) · target_std / std_merged + target_mean

This is the paper's exact variant (statistics measured on the interpolated
network itself). The affine correction is folded into the layer's parameters,
so the result is a plain state dict of the same architecture.

Which values are corrected, per :class:`~weightspace.spec.LayerSpec` of the
traced spec (in topological order, so each layer is measured after the
layers before it have been corrected, and every correction is exact on the
given data):

* a hidden Linear/Conv layer without a norm: the module's output (its
  pre-activation); the correction goes into its ``weight`` and ``bias``. The
  module is the one whose path is the layer's name (true for every built-in
  model); otherwise the module owning the layer's weight parameter. Without
  a bias only the standard deviation can be matched (a warning says so).
* a hidden Linear/Conv layer followed by a LayerNorm/GroupNorm/InstanceNorm
  with a per-channel affine: the norm's output (the actual pre-activation,
  e.g. ResNet-20 with ``norm="layer"`` whose convolutions have no bias); the
  correction goes into the norm's ``weight`` and ``bias``.
* a layer followed by a BatchNorm: *not rescaled*. Resetting the BatchNorm
  statistics is what REPAIR amounts to there (after the reset, each BN output
  has mean β and std |γ| of the interpolated affine, i.e. the interpolated
  endpoint statistics); with ``reset_batchnorm=True`` (the default) each
  BatchNorm's running mean/variance is set to the statistics of its input on
  the data, in eval mode, after the layers before it were corrected.
* input and output layers, and norm layers that are not attached to a
  Linear/Conv producer, are left alone.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from weightspace.merge.batchnorm import ChannelMoments, Inputs, input_batches, iter_on_device
from weightspace.spec.containers import WeightSpaceSpec

logger = logging.getLogger(__name__)

__all__ = ["RepairPoint", "activation_stats", "repair", "repair_points"]

_STD_FLOOR = 1e-12


@dataclass(frozen=True)
class RepairPoint:
    """One place REPAIR acts on.

    Attributes:
        layer: the :class:`~weightspace.spec.LayerSpec` name.
        module: path of the module whose output is renormalised (``kind``
            ``"weight"`` or ``"norm"``) or whose running statistics are
            re-estimated from its input (``kind`` ``"batchnorm"``).
        kind: ``"weight"`` (Linear/Conv weight and bias), ``"norm"`` (the
            affine of a LayerNorm/GroupNorm/InstanceNorm) or ``"batchnorm"``.
        channel_dim: axis of the channels in the module's output (input for
            ``"batchnorm"``): 1, or -1 for Linear/LayerNorm.
    """

    layer: str
    module: str
    kind: str
    channel_dim: int


class _Stop(Exception):
    """Raised by a hook to end a forward pass once its layer has been seen."""


def _is_weight_module(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, _ConvNd) and not m.transposed)


def repair_points(model: nn.Module, spec: WeightSpaceSpec) -> list[RepairPoint]:
    """The places REPAIR corrects in ``model`` (see the module docstring), in
    topological order; skipped hidden layers are logged with the reason."""
    modules = dict(model.named_modules())
    params_by_layer: dict[str, list] = {}
    for p in spec.parameters:
        params_by_layer.setdefault(p.layer, []).append(p)
    points: list[RepairPoint] = []
    seen: set[str] = set()
    for layer in spec.layers:
        params = params_by_layer.get(layer.name, [])
        batchnorms = []
        for p in params:
            m = modules.get(p.module)
            if (p.role == "running_mean" and isinstance(m, _BatchNorm) and m.track_running_stats
                    and p.module not in seen):
                batchnorms.append(p.module)
        if batchnorms or layer.norm == "batch":
            for path in batchnorms:
                seen.add(path)
                points.append(RepairPoint(layer.name, path, "batchnorm", 1))
            logger.debug("REPAIR: layer %r is followed by a BatchNorm; handled by re-estimating "
                         "its statistics (BN reset)", layer.name)
            continue
        if spec.space(layer.space).role != "hidden":
            continue
        if not (layer.op == "linear" or layer.op.startswith(("conv", "depthwise_conv"))):
            logger.debug("REPAIR: skipping hidden layer %r (op %r is not a Linear/Conv)",
                         layer.name, layer.op)
            continue
        path = layer.name
        if not _is_weight_module(modules.get(path)):
            owners = [p.module for p in params if p.role in ("weight", "depthwise_weight")]
            path = owners[0] if owners else ""
        module = modules.get(path)
        if not _is_weight_module(module):
            logger.warning("REPAIR: skipping hidden layer %r: no Linear/Conv module found at %r "
                           "or owning its weight", layer.name, layer.name)
            continue
        if layer.norm == "none":
            if module.bias is None:
                logger.warning("REPAIR: layer %r has no bias; only its per-channel standard "
                               "deviation can be corrected, not its mean", layer.name)
            points.append(RepairPoint(layer.name, path, "weight",
                                      -1 if isinstance(module, nn.Linear) else 1))
            continue
        norm_paths = sorted({p.module for p in params if p.role == "norm_weight"})
        norm = modules.get(norm_paths[0]) if len(norm_paths) == 1 else None
        weight = getattr(norm, "weight", None)
        bias = getattr(norm, "bias", None)
        if (norm is None or not isinstance(weight, Tensor) or not isinstance(bias, Tensor)
                or weight.dim() != 1 or weight.numel() != layer.size):
            logger.warning("REPAIR: skipping layer %r: its %s norm has no per-channel affine "
                           "weight and bias to fold the correction into", layer.name, layer.norm)
            continue
        points.append(RepairPoint(layer.name, norm_paths[0], "norm",
                                  -1 if isinstance(norm, nn.LayerNorm) else 1))
    return points


def _check_model(model: nn.Module, spec: WeightSpaceSpec, label: str) -> None:
    try:
        spec.check_state_dict(model.state_dict())
    except Exception as err:
        raise ValueError(f"REPAIR: {label} does not match the spec: {err}") from err


class _Eval:
    """Put a model in eval mode for a ``with`` block, restoring every module's mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = {name: m.training for name, m in model.named_modules()}

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        for name, m in self.model.named_modules():
            m.training = self.modes[name]


@torch.no_grad()
def _measure(model: nn.Module, points: list[RepairPoint], batches: list[Tensor],
             stop_after: bool = False) -> dict[str, ChannelMoments]:
    """Per-channel moments of each point's output (input for BatchNorm points).

    With ``stop_after`` (one point), the forward pass ends as soon as that
    point has been measured.
    """
    modules = dict(model.named_modules())
    moments = {p.module: ChannelMoments() for p in points}
    hooks = []

    def make_hook(point: RepairPoint):
        def record(value: Tensor) -> None:
            moments[point.module].update(value, point.channel_dim)
            if stop_after:
                raise _Stop

        if point.kind == "batchnorm":
            return modules[point.module].register_forward_pre_hook(
                lambda module, args: record(args[0]))
        return modules[point.module].register_forward_hook(
            lambda module, args, output: record(output))

    try:
        for point in points:
            hooks.append(make_hook(point))
        with _Eval(model):
            for batch in iter_on_device(batches, model):
                try:
                    model(batch)
                except _Stop:
                    pass
    finally:
        for h in hooks:
            h.remove()
    for point in points:
        if moments[point.module].mean is None:
            raise RuntimeError(f"REPAIR: module {point.module!r} (layer {point.layer!r}) was "
                               f"not called during the forward pass")
    return moments


def activation_stats(model: nn.Module, points: list[RepairPoint], inputs: Inputs,
                     batch_size: int = 256) -> dict[str, tuple[Tensor, Tensor]]:
    """``{module: (mean, std)}`` per channel (population std, float64) of each
    point's output (its input for BatchNorm points) on ``inputs``, in eval mode."""
    moments = _measure(model, points, input_batches(inputs, batch_size))
    return {k: (m.mean, m.variance(unbiased=False).sqrt()) for k, m in moments.items()}


def _scale_rows(t: Tensor, scale: Tensor) -> Tensor:
    return t * scale.to(t.dtype).reshape(-1, *([1] * (t.dim() - 1)))


@torch.no_grad()
def _correct(model: nn.Module, points: list[RepairPoint],
             endpoints: Mapping[str, tuple[Tensor, Tensor, Tensor, Tensor]], lam: float,
             batches: list[Tensor], reset_batchnorm: bool) -> None:
    """Apply REPAIR to ``model`` in place, point by point in topological order."""
    modules = dict(model.named_modules())
    dead = 0
    for point in points:
        module = modules[point.module]
        if point.kind == "batchnorm":
            if not reset_batchnorm:
                continue
            stats = _measure(model, [point], batches, stop_after=True)[point.module]
            module.running_mean.copy_(stats.mean.to(module.running_mean.dtype))
            module.running_var.copy_(stats.variance(unbiased=True).to(module.running_var.dtype))
            continue
        mean_a, std_a, mean_b, std_b = endpoints[point.module]
        target_mean = (1.0 - lam) * mean_a + lam * mean_b
        target_std = (1.0 - lam) * std_a + lam * std_b
        stats = _measure(model, [point], batches, stop_after=True)[point.module]
        mean, std = stats.mean, stats.variance(unbiased=False).sqrt()
        alive = std > _STD_FLOOR
        dead += int((~alive).sum())
        scale = torch.where(alive, target_std / std.clamp_min(_STD_FLOOR), torch.ones_like(std))
        weight = module.weight
        weight.copy_(_scale_rows(weight.detach().to(torch.float64), scale).to(weight.dtype))
        if module.bias is not None:
            bias = module.bias
            new_bias = scale * (bias.detach().to(torch.float64) - mean) + target_mean
            bias.copy_(new_bias.to(bias.dtype))
    if dead:
        logger.warning("REPAIR: %d channels of the merged model are constant on the data; only "
                       "their mean was corrected", dead)


def _endpoint_stats(model_a: nn.Module, model_b: nn.Module, points: list[RepairPoint],
                    batches: list[Tensor]) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``{module: (mean_A, std_A, mean_B, std_B)}`` for the non-BatchNorm points."""
    targets = [p for p in points if p.kind != "batchnorm"]
    if not targets:
        return {}
    stats_a = _measure(model_a, targets, batches)
    stats_b = _measure(model_b, targets, batches)
    return {
        p.module: (stats_a[p.module].mean, stats_a[p.module].variance(unbiased=False).sqrt(),
                   stats_b[p.module].mean, stats_b[p.module].variance(unbiased=False).sqrt())
        for p in targets
    }


def repair(model_merged: nn.Module, model_a: nn.Module, model_b: nn.Module,
           spec: WeightSpaceSpec, inputs: Inputs, lam: float = 0.5, batch_size: int = 256,
           reset_batchnorm: bool = True) -> dict[str, Tensor]:
    """REPAIR an interpolated model (Jordan et al. 2023, exact variant).

    Args:
        model_merged: the interpolated network ``(1 − λ)·θ_A + λ·θ_B`` (of B
            aligned to A). It is not modified: a copy is corrected.
        model_a: endpoint A (``λ = 0``).
        model_b: endpoint B (``λ = 1``), aligned to A like the merge was.
        spec: the weight-space spec of the architecture (:func:`weightspace.trace`).
        inputs: data for the statistics: a tensor ``[N, *sample]`` or an
            iterable of batches (a few thousand samples of training data are
            plenty).
        lam: the interpolation coefficient of ``model_merged``.
        batch_size: batch size when ``inputs`` is a tensor.
        reset_batchnorm: re-estimate the running statistics of BatchNorm
            layers (which REPAIR does not rescale) on ``inputs``.

    Returns:
        The repaired state dict (same keys and shapes as ``model_merged``'s).
        See the module docstring for which layers are corrected and how.

    Raises:
        ValueError: a model that does not match ``spec``, or a non-finite
            ``lam``.
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number, got {lam!r}")
    for model, label in ((model_merged, "model_merged"), (model_a, "model_a"),
                         (model_b, "model_b")):
        _check_model(model, spec, label)
    batches = input_batches(inputs, batch_size)
    merged = copy.deepcopy(model_merged)
    points = repair_points(merged, spec)
    endpoints = _endpoint_stats(model_a, model_b, points, batches)
    _correct(merged, points, endpoints, float(lam), batches, reset_batchnorm)
    logger.debug("REPAIR: corrected %d layers, re-estimated %d BatchNorms",
                 sum(p.kind != "batchnorm" for p in points),
                 sum(p.kind == "batchnorm" for p in points) if reset_batchnorm else 0)
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
