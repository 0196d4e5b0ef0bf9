"""BatchNorm reset: re-estimate running statistics after merging.

Interpolating or averaging weights does not give the merged network's
activation statistics: the merged BatchNorm running mean/variance (the
average of the endpoints') no longer describe what its layers see, and the
merged model collapses. The fix used by Git Re-Basin (Ainsworth et al. 2023)
and REPAIR (Jordan et al. 2023, "REPAIR: REnormalizing Permuted Activations
for Interpolation Repair", ICLR 2023) is to recompute the statistics with a
pass over (training) data, the *BN reset*. For a BatchNorm network this is
what REPAIR does: after the reset, each BN output has per-channel mean β and
standard deviation |γ| of the interpolated affine, which are the interpolated
endpoint statistics that REPAIR targets.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from weightspace.activations import (
    ActivationSite,
    Inputs,
    batches_on_device,
    capture,
    eval_mode,
    input_batches,
    tracks_running_statistics,
)

logger = logging.getLogger(__name__)

__all__ = ["batchnorm_modules", "batchnorm_sites", "reset_batchnorm"]


@torch.no_grad()
def batchnorm_modules(model: nn.Module) -> dict[str, _BatchNorm]:
    """The BatchNorm modules of ``model`` that keep running statistics (the
    ones a merge leaves stale), by module path."""
    return {name: m for name, m in model.named_modules() if tracks_running_statistics(m)}


def batchnorm_sites(norms: dict[str, _BatchNorm]) -> list[ActivationSite]:
    """The input of each BatchNorm of ``norms`` (what its running statistics
    describe), as :class:`~weightspace.activations.ActivationSite` s."""
    return [ActivationSite(name, "batchnorm", 1, hook="input") for name in norms]


def reset_batchnorm(model: nn.Module, inputs: Inputs, batch_size: int = 256) -> nn.Module:
    """Re-estimate the running statistics of every BatchNorm of ``model`` from data.

    The model runs with its BatchNorm layers in training mode (each
    normalises with its batch's statistics, as during training, so every
    later layer sees what it would in training) and every other module in
    eval mode (no dropout), without gradients. Each BatchNorm's running mean
    and variance are then set to the mean and unbiased variance of all the
    values it received, pooled over the batches. With one batch this is
    exactly what PyTorch's cumulative average (``momentum=None``) gives; with
    several it weights every sample equally (PyTorch's cumulative average
    weights every *batch* equally and leaves out the spread between batch
    means). ``num_batches_tracked`` becomes the number of batches.

    BatchNorms without running statistics (``track_running_stats=False``)
    are left alone. Every module's train/eval mode and each BatchNorm's
    ``momentum`` are restored afterwards.

    Args:
        model: the network, modified in place and returned.
        inputs: a tensor ``[N, *sample]`` (split into batches of at most
            ``batch_size``) or an iterable of batches (tensors, or tuples
            whose first element is the input).
        batch_size: batch size when ``inputs`` is a tensor. Smaller batches
            normalise with noisier batch statistics, as in training.

    Returns:
        ``model``.
    """
    norms = batchnorm_modules(model)
    if not norms:
        logger.debug("reset_batchnorm: %s has no BatchNorm with running statistics",
                     type(model).__name__)
        return model
    batches = input_batches(inputs, batch_size)
    momenta = {name: m.momentum for name, m in norms.items()}
    saved = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in norms.items()}
    try:
        with (eval_mode(model), torch.no_grad(),
              capture(model, batchnorm_sites(norms), record="moments") as seen):
            for m in norms.values():
                m.reset_running_stats()
                m.momentum = None
                m.train()
            n_batches = 0
            for batch in batches_on_device(batches, model):
                model(batch)
                n_batches += 1
        for site, stats in seen.moments.items():
            m = norms[site.module]
            if stats.mean is None:
                logger.warning("reset_batchnorm: %s received no input during the forward pass; "
                               "its statistics are left at their reset values", site.module)
                continue
            m.running_mean.copy_(stats.mean.to(m.running_mean.dtype))
            m.running_var.copy_(stats.variance(unbiased=True).to(m.running_var.dtype))
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(n_batches)
        logger.debug("reset_batchnorm: re-estimated %d BatchNorm layers from %d batches",
                     len(norms), n_batches)
    except BaseException:
        for name, m in norms.items():  # leave the statistics as they were
            m.load_state_dict(saved[name])
        raise
    finally:
        for name, m in norms.items():
            m.momentum = momenta[name]
    return model
