"""VGG-style plain convolutional networks.

Reference: Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for
Large-Scale Image Recognition" (ICLR 2015).

Unlike :class:`~weightspace.models.cnn.SmallCNN` and
:class:`~weightspace.models.resnet.ResNet`, VGG keeps the spatial extent at
the end of the feature extractor and flattens it into the first linear layer.
That conv -> linear flatten is the case where one channel of the last
convolution owns ``H * W`` consecutive input columns of the linear layer,
which weight-space methods must handle explicitly; VGG is the built-in model
that exercises it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.activations import make_activation

VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
"""Configuration "A" (VGG-11) of Simonyan & Zisserman 2015, Table 1."""


def _spatial_size(input_size: int, num_pools: int) -> int:
    """Side length after ``num_pools`` ``MaxPool2d(2)`` (each floors)."""
    size = input_size
    for _ in range(num_pools):
        size //= 2
    return size


class VGG(nn.Module):
    """Stacked 3x3 convolutions and max pools, then a two-layer classifier.

    Each int ``c`` in ``cfg`` adds ``Conv2d(3x3, padding=1)`` with
    ``c * width`` output channels, then ``BatchNorm2d`` if ``batch_norm``, then
    the activation; each ``"M"`` adds ``MaxPool2d(2)``. These form the
    ``nn.Sequential`` ``features``. The feature map is flattened with
    ``torch.flatten(x, 1)`` (no global pooling) and fed to ``classifier``:
    ``Linear(C * H * W, hidden) -> activation -> Linear(hidden, num_classes)``.

    Convolutions keep their bias even with BatchNorm, as in the reference
    implementation (torchvision's ``vgg*_bn``).

    Args:
        cfg: layer configuration, ints (channels) and ``"M"`` (max pool).
        in_channels: channels of the input image.
        num_classes: number of output logits.
        batch_norm: whether to add ``BatchNorm2d`` after each convolution.
        width: integer multiplier of every channel count in ``cfg``.
        input_size: side length of the (square) input images; fixes the input
            size of the first linear layer, so other sizes will not work.
        hidden: width of the hidden linear layer.
        activation: activation name, see
            :func:`weightspace.models.activations.make_activation`.

    Shapes:
        - input: ``(N, in_channels, input_size, input_size)``.
        - output: ``(N, num_classes)``.
    """

    def __init__(
        self,
        cfg: Sequence[int | str] = (16, "M", 32, "M", 64, "M"),
        in_channels: int = 1,
        num_classes: int = 10,
        batch_norm: bool = True,
        width: int = 1,
        input_size: int = 8,
        hidden: int = 64,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise WeightspaceError(f"VGG width must be a positive integer, got {width!r}.")
        cfg = tuple(cfg)
        bad = [entry for entry in cfg if entry != "M" and not isinstance(entry, int)]
        if bad or not any(isinstance(entry, int) for entry in cfg):
            raise WeightspaceError(
                f"VGG cfg must contain channel counts (int) and 'M' (max pool), with at "
                f"least one int; got {cfg!r}."
            )
        num_pools = cfg.count("M")
        spatial = _spatial_size(input_size, num_pools)
        if spatial < 1:
            raise WeightspaceError(
                f"VGG input_size={input_size} is too small for {num_pools} max pools "
                f"(each halves the side length); use input_size >= {2**num_pools} "
                f"or remove some 'M' entries from cfg."
            )
        self.cfg = cfg
        self.width = width
        self.input_size = input_size

        layers: list[nn.Module] = []
        channels = in_channels
        for entry in cfg:
            if entry == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out_channels = int(entry) * width
            layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(make_activation(activation))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels * spatial * spatial, hidden),
            make_activation(activation),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # Keep (C, H, W) and flatten it channel-major into the linear layer.
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg11(
    width: int = 1,
    batch_norm: bool = True,
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
) -> VGG:
    """VGG-11 (configuration "A") for CIFAR-sized images, see :class:`VGG`.

    On 32x32 inputs the five max pools leave a ``1x1`` map of ``512 * width``
    channels; the hidden linear layer has ``512 * width`` units (instead of
    the 4096 of the ImageNet model, which would dwarf the convolutions).
    """
    return VGG(
        cfg=VGG11_CFG,
        in_channels=in_channels,
        num_classes=num_classes,
        batch_norm=batch_norm,
        width=width,
        input_size=input_size,
        hidden=512 * width,
    )
