"""The learning-rate schedule of every training loop: linear warm-up, then cosine decay.

Metanetwork training (:class:`~weightspace.train.Trainer`) and meta-pruner
training (:func:`~weightspace.prune.meta.meta_train`) both scale the peak
learning rate by

    f(step) = (step + 1) / warmup                                   for step < warmup
    f(step) = ½ (1 + cos(π · min(1, (step − warmup) / (total − warmup))))   after,

so it rises linearly to the peak over ``warmup`` optimiser steps, then
follows a half cosine to zero at ``total`` steps (and stays there if
training runs longer). Each caller chooses its own ``warmup``.
"""

from __future__ import annotations

import math

import torch

from weightspace.errors import WeightspaceError

__all__ = ["warmup_cosine", "warmup_cosine_scheduler"]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The factor ``f(step)`` of the peak learning rate (see the module docstring).

    Args:
        step: optimiser steps taken so far (0 for the first step).
        warmup: steps of linear warm-up (at least 1).
        total: steps of the whole run; the cosine reaches 0 there.
    """
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int
                            ) -> torch.optim.lr_scheduler.LambdaLR:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` of ``optimizer`` following
    :func:`warmup_cosine` (call its ``step()`` after every optimiser step).

    Args:
        optimizer: its learning rates are the peaks.
        warmup: steps of linear warm-up (at least 1).
        total: steps of the whole run.
    """
    if warmup < 1:
        raise WeightspaceError(f"warmup must be at least 1 step, got {warmup}", parameter="warmup")

    def factor(step: int) -> float:
        return warmup_cosine(step, warmup, total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
