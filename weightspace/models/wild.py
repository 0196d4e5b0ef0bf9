"""A "wild" family of plain convolutional networks with mixed architectures.

Reference: Kofinas et al. 2024, "Graph Neural Networks for Learning
Equivariant Representations of Neural Networks" (ICLR 2024), whose *CNN Wild
Park* zoo mixes depths, widths, kernel sizes, residual connections and
activations in one data set, so that a metanetwork must handle many
architectures at once. :class:`WildCNN` is one constructor spanning that space:

``conv -> [+ identity] -> activation`` per layer, then global average pooling,
dropout and a linear classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.activations import make_activation


def _per_layer(name: str, value: int | Sequence[int] | None, n_layers: int, default=None):
    """An int (every layer) or a list with one entry per layer -> tuple of ints."""
    if value is None:
        value = default
    if isinstance(value, (list, tuple)):
        values = tuple(value)
        if len(values) != n_layers:
            raise WeightspaceError(
                f"WildCNN {name} has {len(values)} entries but n_layers={n_layers}; give an int "
                f"or one value per layer."
            )
    else:
        values = (value,) * n_layers
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "padding" else 1):
            raise WeightspaceError(f"WildCNN {name} must be positive integers, got {value!r}.")
    return values


def residual_skips(
    in_channels: int,
    n_layers: int,
    channels: int | Sequence[int],
    kernel_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | None = None,
    residual: bool = True,
) -> tuple[bool, ...]:
    """Which layers of ``WildCNN(...)`` with these arguments have an identity
    skip (computed from the arguments alone, without building the model)."""
    widths = _per_layer("channels", channels, n_layers)
    kernels = _per_layer("kernel_size", kernel_size, n_layers)
    strides = _per_layer("stride", stride, n_layers)
    paddings = (tuple(k // 2 for k in kernels) if padding is None
                else _per_layer("padding", padding, n_layers))
    skips = []
    width = in_channels
    for c, k, s, p in zip(widths, kernels, strides, paddings, strict=True):
        skips.append(bool(residual) and width == c and s == 1 and k % 2 == 1 and p == k // 2)
        width = c
    return tuple(skips)


class WildCNN(nn.Module):
    """Plain CNN of ``n_layers`` convolutions with optional identity skips.

    Layer ``i`` computes ``act(conv_i(x) [+ x])``. The identity skip (with
    ``residual=True``) is added around every convolution that keeps the shape
    for any input: same input and output channels, stride 1 and "same"
    padding (``padding == kernel_size // 2`` with an odd kernel). Whether a
    layer has a skip is therefore fixed by the arguments (see
    :attr:`skips`), never by the input size. A convolution with a skip writes
    into the same neuron space as its input (the residual stream), which the
    traced spec ties together.

    Parameter keys: ``convs.<i>.weight/bias`` and ``classifier.weight/bias``.

    Args:
        in_channels: channels of the input image.
        num_classes: number of output logits.
        n_layers: number of convolutions (1 or more; 2-8 is the intended range).
        channels: output channels of every convolution (int) or of each one
            (list of ``n_layers`` ints).
        kernel_size: square kernel size (int, or one per layer); odd sizes
            3, 5, 7 are the intended ones.
        stride: convolution stride (int, or one per layer).
        padding: zero padding (int, or one per layer); ``None`` means
            ``kernel_size // 2`` ("same" for odd kernels at stride 1).
        residual: add identity skips where the shape allows it (see above).
        activation: activation name, see
            :func:`weightspace.models.activations.make_activation`.
        dropout: dropout probability before the classifier; the ``Dropout``
            module is always present (no parameters), so keys do not depend on it.

    Shapes:
        - input: ``(N, in_channels, H, W)``.
        - output: ``(N, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        n_layers: int = 3,
        channels: int | Sequence[int] = 16,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        residual: bool = False,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise WeightspaceError(f"WildCNN n_layers must be a positive integer, got {n_layers!r}.")
        if not 0.0 <= dropout < 1.0:
            raise WeightspaceError(f"WildCNN dropout must be in [0, 1), got {dropout!r}.")
        widths = _per_layer("channels", channels, n_layers)
        kernels = _per_layer("kernel_size", kernel_size, n_layers)
        strides = _per_layer("stride", stride, n_layers)
        if padding is None:
            paddings = tuple(k // 2 for k in kernels)
        else:
            paddings = _per_layer("padding", padding, n_layers)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = widths

        convs: list[nn.Module] = []
        acts: list[nn.Module] = []
        width = in_channels
        for c, k, s, p in zip(widths, kernels, strides, paddings, strict=True):
            convs.append(nn.Conv2d(width, c, k, stride=s, padding=p))
            acts.append(make_activation(activation))
            width = c
        self.convs = nn.ModuleList(convs)
        self.acts = nn.ModuleList(acts)
        self.skips: tuple[bool, ...] = residual_skips(
            in_channels, n_layers, widths, kernels, strides, paddings, residual)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act, skip in zip(self.convs, self.acts, self.skips, strict=True):
            h = conv(x)
            if skip:
                h = h + x
            x = act(h)
        x = self.flatten(self.pool(x))
        return self.classifier(self.dropout(x))
