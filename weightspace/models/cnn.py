"""The small convolutional network of the Small CNN Zoo.

Reference: Unterthiner et al. 2020, "Predicting Neural Network Accuracy from
Weights" (arXiv:2002.11448). Their zoo trains thousands of copies of one tiny
CNN (three strided 3x3 convolutions, global average pooling, one linear
classifier) with varied hyperparameters; it is the standard benchmark for
learning from weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.activations import make_activation


class SmallCNN(nn.Module):
    """Strided convolutions, global average pooling and a linear classifier.

    Each entry of ``channels`` adds ``Conv2d(kernel_size, stride,
    padding=kernel_size // 2)`` followed by the activation, inside the
    ``nn.Sequential`` ``features``. With the defaults an 8x8 digit image
    shrinks 8 -> 4 -> 2 -> 1; the global average pool makes the classifier
    independent of the input size.

    Args:
        in_channels: channels of the input image (1 for grey-scale).
        channels: output channels of each convolution.
        kernel_size: square kernel size of every convolution.
        stride: stride of every convolution.
        activation: activation name, see
            :func:`weightspace.models.activations.make_activation`.
        num_classes: number of output logits.
        dropout: dropout probability before the classifier. The ``Dropout``
            module is present even for ``0.0`` (it holds no parameters), so
            the module tree is the same across a dropout sweep.

    Shapes:
        - input: ``(N, in_channels, H, W)``.
        - output: ``(N, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 16, 16),
        kernel_size: int = 3,
        stride: int = 2,
        activation: str = "relu",
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise WeightspaceError("SmallCNN needs at least one convolution, but channels=() was given.")
        if not 0.0 <= dropout < 1.0:
            raise WeightspaceError(f"SmallCNN dropout must be in [0, 1), got {dropout!r}.")
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes

        layers: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers.append(nn.Conv2d(width, c, kernel_size, stride=stride, padding=kernel_size // 2))
            layers.append(make_activation(activation))
            width = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.flatten(self.pool(x))
        return self.classifier(self.dropout(x))
