"""The CNNs of the CNN Wild Park zoo, rebuilt to load its checkpoints as they are.

Reference: Kofinas et al. 2024, "Graph Neural Networks for Learning
Equivariant Representations of Neural Networks" (ICLR 2024), and the zoo's
model code (``mkofinas/neural-graphs``,
``experiments/cnn_generalization/dataset/cnn_sampler.py``, class ``CNN``).
A checkpoint's ``config`` holds, per layer, the output channels
(``channels[0]`` is the input), kernel size, stride, padding, activation and
``residual[i]``: the index of an earlier layer whose *activated* output is
added to layer ``i``'s convolution output before its activation (``-1``:
none). When the two layers have different widths only the first
``min(c_res, c_out)`` channels are added. Then global average pooling and a
linear classifier ``fc``.

:class:`ParkCNN` computes exactly that function and has the same parameter
keys (``layers.<i>.weight/bias``, ``fc.weight/bias``), so a Wild Park state
dict loads into it directly. A residual between layers of equal width is a
plain addition (the traced spec ties the two neuron spaces). A residual
between layers of different widths is written as a fixed 1x1 convolution
``res_maps.<i>`` whose weight ``E`` (a buffer, ``E[j, j] = 1`` for
``j < min(c_res, c_out)``, else 0) embeds or truncates the residual's
channels: the function is unchanged, and the spec stays exact under neuron
permutations (a permutation permutes ``E`` too). A Wild Park state dict
lacks these buffers; :meth:`ParkCNN.load_state_dict` fills them in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.activations import make_activation

# The zoo's activation names -> weightspace activation names.
PARK_ACTIVATIONS: dict[str, str] = {
    "relu": "relu",
    "gelu": "gelu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "leaky_relu": "leaky_relu",
    "none": "identity",
}


def _per_layer(name: str, value, n_layers: int) -> tuple:
    if isinstance(value, (list, tuple)):
        values = tuple(value)
    else:
        values = (value,) * n_layers
    if len(values) != n_layers:
        raise WeightspaceError(
            f"ParkCNN {name} has {len(values)} entries but there are {n_layers} layers "
            f"(len(channels) - 1); give one value per layer."
        )
    return values


class ChannelMap(nn.Conv2d):
    """A fixed 1x1 convolution copying the first ``min(in, out)`` channels.

    Its weight is a (persistent) buffer, not a trainable parameter; a state
    dict without it gets the canonical map when loaded.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1, bias=False)
        del self.weight
        self.register_buffer("weight", self.canonical_weight())
        self.register_load_state_dict_pre_hook(_fill_channel_map)

    def canonical_weight(self) -> torch.Tensor:
        weight = torch.zeros(self.out_channels, self.in_channels, 1, 1)
        n = min(self.in_channels, self.out_channels)
        weight[torch.arange(n), torch.arange(n)] = 1.0
        return weight


def _fill_channel_map(module, state_dict, prefix, local_metadata, strict, missing_keys,
                      unexpected_keys, error_msgs) -> None:
    key = prefix + "weight"
    if key not in state_dict:
        state_dict[key] = module.canonical_weight().to(module.weight)


class ParkCNN(nn.Module):
    """CNN Wild Park network: per-layer convolutions with optional residuals
    from earlier layers, global average pooling, linear classifier.

    Args:
        channels: ``[in_channels, c_1, ..., c_n]`` as in the zoo's config.
        kernel_size: one odd kernel size per layer (or one for all).
        stride: one stride per layer (or one for all); 1 in the zoo.
        padding: one padding per layer; ``None`` means ``kernel_size // 2``
            (what the zoo's sampler uses).
        residual: ``residual[i]`` is the earlier layer whose activated output
            is added to layer ``i`` (``-1`` or ``None``: no residual). It
            must not be the preceding layer, as in the zoo.
        activation: one of ``relu, gelu, tanh, sigmoid, leaky_relu, none``
            per layer (or one for all).
        n_classes: number of output logits.

    Shapes:
        - input: ``(N, channels[0], H, W)`` (32x32 CIFAR-10 in the zoo).
        - output: ``(N, n_classes)``.
    """

    def __init__(
        self,
        channels: Sequence[int] = (3, 16, 16),
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        residual: Sequence[int] | None = None,
        activation: str | Sequence[str] = "relu",
        n_classes: int = 10,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise WeightspaceError(
                f"ParkCNN channels must list the input channels and at least one layer, "
                f"got {list(channels)}."
            )
        n = len(channels) - 1
        kernels = tuple(int(k) for k in _per_layer("kernel_size", kernel_size, n))
        strides = tuple(int(s) for s in _per_layer("stride", stride, n))
        if padding is None:
            paddings = tuple(k // 2 for k in kernels)
        else:
            paddings = tuple(int(p) for p in _per_layer("padding", padding, n))
        residuals = tuple(-1 if r is None else int(r)
                          for r in _per_layer("residual", -1 if residual is None else residual, n))
        activations = tuple(str(a) for a in _per_layer("activation", activation, n))
        for i, r in enumerate(residuals):
            if r >= 0 and not r < i - 1:
                raise WeightspaceError(
                    f"ParkCNN residual[{i}] = {r}: a residual must come from a layer before the "
                    f"preceding one (index < {i - 1}), or be -1.")
        for a in activations:
            if a not in PARK_ACTIVATIONS:
                raise WeightspaceError(f"ParkCNN activation {a!r} is not one of "
                                 f"{', '.join(PARK_ACTIVATIONS)}.")
        self.channels = channels
        self.residual = residuals
        self._sources = frozenset(r for r in residuals if r >= 0)

        self.layers = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], kernels[i], stride=strides[i],
                      padding=paddings[i])
            for i in range(n)
        )
        self.acts = nn.ModuleList(make_activation(PARK_ACTIVATIONS[a]) for a in activations)
        maps = {}
        for i, r in enumerate(residuals):
            if r >= 0 and channels[r + 1] != channels[i + 1]:
                maps[str(i)] = ChannelMap(channels[r + 1], channels[i + 1])
        self.res_maps = nn.ModuleDict(maps)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels[-1], int(n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: dict[int, torch.Tensor] = {}
        for i, (conv, act) in enumerate(zip(self.layers, self.acts, strict=True)):
            x = conv(x)
            r = self.residual[i]
            if r >= 0:
                if str(i) in self.res_maps:
                    x = x + self.res_maps[str(i)](saved[r])
                else:
                    x = x + saved[r]
            x = act(x)
            if i in self._sources:
                saved[i] = x
        return self.fc(self.flatten(self.global_pool(x)))
