"""The Keras CNN of the Small CNN Zoo, rebuilt in PyTorch.

Reference: Unterthiner et al. 2020, "Predicting Neural Network Accuracy from
Weights" (arXiv:2002.11448), and its training script
(``google-research/dnn_predict_accuracy/train_network.py``, ``build_cnn``).
Every network of the published zoo is a ``tf.keras.Sequential`` of
``Conv2D(16, 3, strides=2, activation=...)`` layers with Keras' default
``padding="valid"``, a ``GlobalAveragePooling2D`` and a ``Dense(10)`` giving
logits: 4970 parameters for one input channel.

:class:`TFCNN` computes exactly that function on ``NCHW`` inputs. It differs
from :class:`~weightspace.models.cnn.SmallCNN` (which pads by
``kernel_size // 2``): "valid" convolutions do not pad, so a 28x28 image
shrinks 28 -> 13 -> 6 -> 2. TensorFlow stores a conv kernel as
``(kh, kw, in, out)`` and a dense kernel as ``(in, out)``; the PyTorch weights
are ``kernel.permute(3, 2, 0, 1)`` and ``kernel.T``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.activations import make_activation

# Keras activation names -> modules computing the same function.
# (hard_sigmoid is left out: Keras' 0.2x + 0.5 differs from torch's x/6 + 0.5.)
KERAS_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "selu": nn.SELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "linear": nn.Identity,
    "identity": nn.Identity,
}


def keras_activation(name: str) -> nn.Module:
    """A fresh module for the Keras activation ``name`` (``"relu"``,
    ``"tanh"``, ``"linear"`` ...)."""
    key = str(name).strip().lower()
    factory = KERAS_ACTIVATIONS.get(key)
    if factory is None:
        try:
            return make_activation(key)
        except ValueError:
            raise WeightspaceError(
                f"Unknown Keras activation {name!r}. Supported: {', '.join(KERAS_ACTIVATIONS)}."
            ) from None
    return factory()


class TFCNN(nn.Module):
    """Strided "valid" convolutions, global average pooling and a dense
    classifier, as ``tf.keras`` builds the Small CNN Zoo networks.

    Each entry of ``channels`` adds ``Conv2d(kernel_size, stride, padding=0)``
    followed by the activation to the ``nn.Sequential`` ``features`` (keys
    ``features.<2i>.weight/bias``); the classifier is ``classifier``.

    Args:
        in_channels: channels of the input image (1: the zoo's grey-scale data).
        channels: output channels of each convolution.
        kernel_size: square kernel size of every convolution.
        stride: stride of every convolution.
        activation: Keras activation name (see :data:`KERAS_ACTIVATIONS`).
        num_classes: number of output logits.

    Shapes:
        - input: ``(N, in_channels, H, W)`` with ``H, W`` large enough for
          every "valid" convolution (28x28 and 32x32 in the zoo).
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
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise WeightspaceError("TFCNN needs at least one convolution, but channels=() was given.")
        self.in_channels = int(in_channels)
        self.channels = channels
        self.num_classes = int(num_classes)
        layers: list[nn.Module] = []
        width = self.in_channels
        for c in channels:
            layers.append(nn.Conv2d(width, c, int(kernel_size), stride=int(stride), padding=0))
            layers.append(keras_activation(activation))
            width = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(width, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))
