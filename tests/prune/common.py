"""Helpers shared by the pruning tests."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn


def state_of(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model``'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pruned_count(masks: dict[str, Tensor]) -> int:
    """Entries the keep-masks prune."""
    return sum(int((~m).sum()) for m in masks.values())


def mask_total(masks: dict[str, Tensor]) -> int:
    return sum(m.numel() for m in masks.values())


def build_tiny_cnn_zoo(folder: Path) -> tuple[Path, str]:
    """The tiny digits-cnn zoo (4 runs, a few seconds) in ``folder``, built
    through the CLI, and its group with the most trained networks."""
    from weightspace.cli import main
    from weightspace.zoo import open_zoo

    path = folder / "cnn-tiny.h5"
    assert main(["zoo", "build", "digits-cnn", "-o", str(path), "--size", "tiny", "-q"]) == 0
    zoo = open_zoo(path)
    try:
        group = max(zoo.groups, key=lambda g: len(zoo.select(group=g, last_checkpoint=True)))
    finally:
        zoo.close()
    return path, group
