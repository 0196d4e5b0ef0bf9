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

Which values are corrected: the ``pre_activation`` sites of the traced spec
(:func:`weightspace.activations.activation_sites`), one per
:class:`~weightspace.spec.LayerSpec` in topological order, so each layer is
measured after the layers before it have been corrected, and every
correction is exact on the given data:

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
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from weightspace.activations import (
    STD_FLOOR,
    ActivationSite,
    ChannelMoments,
    Inputs,
    activation_sites,
    batches_on_device,
    capture,
    eval_mode,
    input_batches,
)
from weightspace.errors import WeightspaceError
from weightspace.spec.containers import WeightSpaceSpec

logger = logging.getLogger(__name__)

__all__ = ["EndpointStatistics", "activation_stats", "apply_repair", "endpoint_statistics",
           "repair", "repair_points"]


def repair_points(model: nn.Module, spec: WeightSpaceSpec) -> list[ActivationSite]:
    """The places REPAIR corrects in ``model`` (see the module docstring), in
    topological order.

    Each is an :class:`~weightspace.activations.ActivationSite`: ``kind``
    ``"weight"`` or ``"norm"`` (the module's output is renormalised) or
    ``"batchnorm"`` (its running statistics are re-estimated from its
    *input*, which is what they describe).
    """
    modules = dict(model.named_modules())
    points = []
    for site in activation_sites(model, spec):
        if site.kind == "batchnorm":
            logger.debug("REPAIR: layer %r is followed by a BatchNorm; handled by re-estimating "
                         "its statistics (BN reset)", site.layer)
            points.append(replace(site, hook="input"))
            continue
        if site.kind == "weight" and modules[site.module].bias is None:
            logger.warning("REPAIR: layer %r has no bias; only its per-channel standard "
                           "deviation can be corrected, not its mean", site.layer)
        points.append(site)
    return points


def _check_model(model: nn.Module, spec: WeightSpaceSpec, label: str) -> None:
    try:
        spec.check_state_dict(model.state_dict())
    except Exception as err:
        raise WeightspaceError(f"REPAIR: {label} does not match the spec: {err}",
                               parameter=label) from err


@torch.no_grad()
def _measure(model: nn.Module, points: list[ActivationSite], batches: list[Tensor],
             stop_early: bool = False) -> dict[str, ChannelMoments]:
    """``{module: moments}`` per channel of each point, in eval mode.

    With ``stop_early`` each forward pass ends as soon as every point has
    been measured.
    """
    with (eval_mode(model),
          capture(model, points, record="moments", stop_early=stop_early) as seen):
        for batch in batches_on_device(batches, model):
            seen.run(model, batch)
    seen.check_all_seen("REPAIR")
    return {site.module: moments for site, moments in seen.moments.items()}


def activation_stats(model: nn.Module, points: list[ActivationSite], inputs: Inputs,
                     batch_size: int = 256) -> dict[str, tuple[Tensor, Tensor]]:
    """``{module: (mean, std)}`` per channel (population std, float64) of each
    point's output (its input for BatchNorm points) on ``inputs``, in eval mode."""
    moments = _measure(model, points, input_batches(inputs, batch_size))
    return {k: (m.mean, m.std()) for k, m in moments.items()}


@dataclass(frozen=True)
class EndpointStatistics:
    """Per-channel mean and population standard deviation (float64) of one
    REPAIR point in endpoint A and in endpoint B.

    Shapes:
        - every field: ``[C]``
    """

    mean_a: Tensor
    std_a: Tensor
    mean_b: Tensor
    std_b: Tensor

    def target(self, lam: float) -> tuple[Tensor, Tensor]:
        """The interpolated ``(mean, std)`` REPAIR gives the channels at ``lam``."""
        return ((1.0 - lam) * self.mean_a + lam * self.mean_b,
                (1.0 - lam) * self.std_a + lam * self.std_b)


def endpoint_statistics(model_a: nn.Module, model_b: nn.Module, points: list[ActivationSite],
                        batches: list[Tensor]) -> dict[str, EndpointStatistics]:
    """``{module: statistics}`` of the non-BatchNorm points in both endpoints.

    Measured once, they serve every λ of an interpolation path
    (:func:`apply_repair`).
    """
    targets = [p for p in points if p.kind != "batchnorm"]
    if not targets:
        return {}
    stats_a = _measure(model_a, targets, batches)
    stats_b = _measure(model_b, targets, batches)
    return {p.module: EndpointStatistics(stats_a[p.module].mean, stats_a[p.module].std(),
                                         stats_b[p.module].mean, stats_b[p.module].std())
            for p in targets}


def _scale_rows(t: Tensor, scale: Tensor) -> Tensor:
    return t * scale.to(t.dtype).reshape(-1, *([1] * (t.dim() - 1)))


@torch.no_grad()
def apply_repair(model: nn.Module, points: list[ActivationSite],
                 endpoints: Mapping[str, EndpointStatistics], lam: float,
                 batches: list[Tensor], reset_batchnorm: bool = True) -> None:
    """Apply REPAIR to ``model`` in place, point by point in topological order.

    Args:
        model: the interpolated network (modified).
        points: :func:`repair_points` of ``model``.
        endpoints: :func:`endpoint_statistics` of the two endpoints.
        lam: the interpolation coefficient of ``model``.
        batches: the data, as a list of input batches.
        reset_batchnorm: re-estimate the running statistics of the
            BatchNorm points from their inputs.
    """
    modules = dict(model.named_modules())
    dead = 0
    for point in points:
        module = modules[point.module]
        if point.kind == "batchnorm":
            if not reset_batchnorm:
                continue
            stats = _measure(model, [point], batches, stop_early=True)[point.module]
            module.running_mean.copy_(stats.mean.to(module.running_mean.dtype))
            module.running_var.copy_(stats.variance(unbiased=True).to(module.running_var.dtype))
            continue
        target_mean, target_std = endpoints[point.module].target(lam)
        stats = _measure(model, [point], batches, stop_early=True)[point.module]
        mean, std = stats.mean, stats.std()
        alive = std > STD_FLOOR
        dead += int((~alive).sum())
        scale = torch.where(alive, target_std / std.clamp_min(STD_FLOOR), torch.ones_like(std))
        weight = module.weight
        weight.copy_(_scale_rows(weight.detach().to(torch.float64), scale).to(weight.dtype))
        if module.bias is not None:
            bias = module.bias
            new_bias = scale * (bias.detach().to(torch.float64) - mean) + target_mean
            bias.copy_(new_bias.to(bias.dtype))
    if dead:
        logger.warning("REPAIR: %d channels of the merged model are constant on the data; only "
                       "their mean was corrected", dead)


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
        WeightspaceError: a model that does not match ``spec`` (``parameter``
            names it), or a non-finite ``lam``.
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise WeightspaceError(f"lam must be a finite number, got {lam!r}", parameter="lam")
    for model, label in ((model_merged, "model_merged"), (model_a, "model_a"),
                         (model_b, "model_b")):
        _check_model(model, spec, label)
    batches = input_batches(inputs, batch_size)
    merged = copy.deepcopy(model_merged)
    points = repair_points(merged, spec)
    endpoints = endpoint_statistics(model_a, model_b, points, batches)
    apply_repair(merged, points, endpoints, float(lam), batches, reset_batchnorm)
    logger.debug("REPAIR: corrected %d layers, re-estimated %d BatchNorms",
                 sum(p.kind != "batchnorm" for p in points),
                 sum(p.kind == "batchnorm" for p in points) if reset_batchnorm else 0)
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
