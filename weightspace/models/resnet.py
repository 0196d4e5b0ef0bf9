"""CIFAR-style residual networks (ResNet-20 and relatives).

Reference: He et al. 2016, "Deep Residual Learning for Image Recognition"
(CVPR 2016), Sec. 4.2: a 3x3 stem and three stages of ``BasicBlock`` with
16, 32 and 64 channels; ``n`` blocks per stage give depth ``6n + 2``
(``n = 3``: ResNet-20).

The ``norm="layer"`` variant replaces BatchNorm with ``GroupNorm(1, C)``, the
LayerNorm ResNet-20 that Ainsworth et al. 2023, "Git Re-Basin: Merging Models
modulo Permutation Symmetries", use for merging experiments (BatchNorm
statistics do not survive weight interpolation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from weightspace.errors import WeightspaceError


def _layer_norm(channels: int) -> nn.Module:
    # GroupNorm with one group normalises over (C, H, W) like LayerNorm, but
    # keeps a per-channel affine, so channels stay permutable.
    return nn.GroupNorm(1, channels)


_NORM_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "layer": _layer_norm,
    "group": lambda channels: nn.GroupNorm(4, channels),
    "none": lambda channels: nn.Identity(),
}

NORMS: tuple[str, ...] = tuple(_NORM_FACTORIES)
"""Values accepted for ``norm`` by :class:`ResNet` and :class:`BasicBlock`."""

_BASE_WIDTHS = (16, 32, 64)


def _check_norm(norm: str) -> None:
    if norm not in _NORM_FACTORIES:
        raise WeightspaceError(f"Unknown ResNet norm {norm!r}. Valid values are: {', '.join(NORMS)}.")


def _make_norm(norm: str, channels: int) -> nn.Module:
    """Return the normalisation layer for ``channels`` feature maps."""
    _check_norm(norm)
    return _NORM_FACTORIES[norm](channels)


def _conv3x3(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection.

    ``conv1(stride) -> norm1 -> relu1 -> conv2 -> norm2``, added to the shortcut
    and passed through ``relu2``. The shortcut is the identity when the shape is
    unchanged, otherwise a projection ``1x1 conv(stride) -> norm`` (option B
    of He et al. 2016) stored as ``nn.Sequential`` ``shortcut``.

    Convolutions have no bias when a norm follows (its shift makes a bias
    redundant); with ``norm="none"`` they have one.

    Args:
        in_channels: channels of the block input.
        out_channels: channels of the block output.
        stride: stride of ``conv1`` and of the projection.
        norm: one of :data:`NORMS`.

    Shapes:
        - input: ``(N, in_channels, H, W)``.
        - output: ``(N, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "batch"
    ) -> None:
        super().__init__()
        _check_norm(norm)
        bias = norm == "none"
        self.conv1 = _conv3x3(in_channels, out_channels, stride, bias)
        self.norm1 = _make_norm(norm, out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels, 1, bias)
        self.norm2 = _make_norm(norm, out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias),
                _make_norm(norm, out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.relu1(self.norm1(self.conv1(x)))
        residual = self.norm2(self.conv2(residual))
        return self.relu2(residual + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem, three stages of :class:`BasicBlock`, head.

    Stem ``conv1 -> norm1 -> relu``; stages ``layer1``, ``layer2``, ``layer3``
    with ``16 * width``, ``32 * width`` and ``64 * width`` channels, the first
    block of ``layer2`` and ``layer3`` downsampling with stride 2; head
    ``pool`` (global average) ``-> flatten -> fc``.

    Args:
        num_blocks: number of blocks in each of the three stages;
            ``(3, 3, 3)`` is ResNet-20.
        width: integer multiplier of the base widths ``(16, 32, 64)``.
        in_channels: channels of the input image.
        num_classes: number of output logits.
        norm: ``"batch"`` (``BatchNorm2d``), ``"layer"`` (``GroupNorm(1, C)``),
            ``"group"`` (``GroupNorm(4, C)``) or ``"none"``.

    Shapes:
        - input: ``(N, in_channels, H, W)``; 8x8 digits and 32x32 CIFAR both
          work since the head pools globally.
        - output: ``(N, num_classes)``.
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (3, 3, 3),
        width: int = 1,
        in_channels: int = 1,
        num_classes: int = 10,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        _check_norm(norm)
        num_blocks = tuple(int(n) for n in num_blocks)
        if len(num_blocks) != len(_BASE_WIDTHS) or min(num_blocks) < 1:
            raise WeightspaceError(
                f"ResNet num_blocks must give a positive block count for each of the "
                f"{len(_BASE_WIDTHS)} stages, e.g. (3, 3, 3) for ResNet-20; got {num_blocks!r}."
            )
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise WeightspaceError(f"ResNet width must be a positive integer, got {width!r}.")
        self.num_blocks = num_blocks
        self.width = width
        self.norm = norm
        widths = [base * width for base in _BASE_WIDTHS]

        self.conv1 = _conv3x3(in_channels, widths[0], 1, bias=norm == "none")
        self.norm1 = _make_norm(norm, widths[0])
        self.relu = nn.ReLU()

        channels = widths[0]
        stages: list[nn.Sequential] = []
        for stage_index, (blocks, out_channels) in enumerate(zip(num_blocks, widths, strict=True)):
            stride = 1 if stage_index == 0 else 2
            stage = []
            for block_index in range(blocks):
                stage.append(
                    BasicBlock(channels, out_channels, stride if block_index == 0 else 1, norm)
                )
                channels = out_channels
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages

        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(
    width: int = 1, norm: str = "batch", in_channels: int = 1, num_classes: int = 10
) -> ResNet:
    """ResNet-20 (three stages of three :class:`BasicBlock`), see :class:`ResNet`."""
    return ResNet(
        num_blocks=(3, 3, 3),
        width=width,
        in_channels=in_channels,
        num_classes=num_classes,
        norm=norm,
    )
