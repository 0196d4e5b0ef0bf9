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
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)

__all__ = ["reset_batchnorm"]

Inputs = Tensor | Iterable[Tensor]


def _first_tensor(batch: object) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor):
        return batch[0]  # (x, y) pairs from a DataLoader
    raise TypeError(f"inputs must be a tensor or an iterable of tensors (or of (x, ...) "
                    f"tuples), got an item of type {type(batch).__name__}")


def input_batches(inputs: Inputs, batch_size: int) -> list[Tensor]:
    """Materialise ``inputs`` as a list of batches.

    A tensor is split along its first axis into ``ceil(N / batch_size)``
    batches of (nearly) equal size, so no batch has a single sample unless
    ``N`` is 1 (BatchNorm cannot train on one value per channel). An iterable
    is taken as given batches (the first element of tuple items is used).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0 or len(inputs) == 0:
            raise ValueError(f"inputs must have a batch axis with at least one sample, got a "
                             f"tensor of shape {list(inputs.shape)}")
        n_batches = -(-len(inputs) // batch_size)
        return list(torch.tensor_split(inputs, n_batches))
    batches = [_first_tensor(b) for b in inputs]
    if not batches:
        raise ValueError("inputs is empty: BatchNorm statistics need at least one batch")
    return batches


def module_device(model: nn.Module) -> torch.device | None:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return None


def iter_on_device(batches: Iterable[Tensor], model: nn.Module) -> Iterator[Tensor]:
    device = module_device(model)
    for batch in batches:
        yield batch if device is None else batch.to(device)


class ChannelMoments:
    """Running per-channel count, mean and sum of squared deviations, merged
    batch by batch with Chan et al.'s parallel update in float64 (no
    cancellation when the mean is large compared with the spread)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, x: Tensor, channel_dim: int = 1) -> None:
        x = x.detach().to(torch.float64).movedim(channel_dim, 0)
        x = x.reshape(x.shape[0], -1)
        n = x.shape[1]
        if n == 0:
            return
        mean = x.mean(1)
        m2 = ((x - mean[:, None]) ** 2).sum(1)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def variance(self, unbiased: bool) -> Tensor:
        assert self.m2 is not None
        return self.m2 / max(self.count - 1 if unbiased else self.count, 1)


@torch.no_grad()
def batchnorm_modules(model: nn.Module) -> dict[str, _BatchNorm]:
    """The BatchNorm modules of ``model`` that keep running statistics (the
    ones a merge leaves stale), by module path."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats}


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
    modes = {name: m.training for name, m in model.named_modules()}
    momenta = {name: m.momentum for name, m in norms.items()}
    saved = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in norms.items()}
    moments = {name: ChannelMoments() for name in norms}
    hooks = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            moments[name].update(args[0], 1)
        return hook

    try:
        model.eval()
        for name, m in norms.items():
            m.reset_running_stats()
            m.momentum = None
            m.train()
            hooks.append(m.register_forward_pre_hook(make_hook(name)))
        n_batches = 0
        for batch in iter_on_device(batches, model):
            model(batch)
            n_batches += 1
        for name, m in norms.items():
            stats = moments[name]
            if stats.mean is None:
                logger.warning("reset_batchnorm: %s received no input during the forward pass; "
                               "its statistics are left at their reset values", name)
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
        for h in hooks:
            h.remove()
        for name, m in norms.items():
            m.momentum = momenta[name]
        for name, m in model.named_modules():
            m.training = modes[name]
    return model
