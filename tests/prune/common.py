"""Helpers shared by the pruning tests."""

from __future__ import annotations

from torch import Tensor, nn


def state_of(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model``'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pruned_count(masks: dict[str, Tensor]) -> int:
    """Entries the keep-masks prune."""
    return sum(int((~m).sum()) for m in masks.values())


def mask_total(masks: dict[str, Tensor]) -> int:
    return sum(m.numel() for m in masks.values())
