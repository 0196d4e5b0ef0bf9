"""Multilayer perceptron, the simplest weight-space object.

An MLP is the reference case for every weight-space method (Navon et al. 2023,
"Equivariant Architectures for Learning in Deep Weight Spaces"; Zhou et al.
2023, "Permutation Equivariant Neural Functionals"): each hidden neuron can be
permuted freely, and nothing else couples the layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.activations import make_activation

_NORMS = (None, "batch", "layer")


def _make_norm(norm: str | None, features: int) -> nn.Module | None:
    if norm is None:
        return None
    if norm == "batch":
        return nn.BatchNorm1d(features)
    if norm == "layer":
        return nn.LayerNorm(features)
    raise WeightspaceError(f"Unknown MLP norm {norm!r}. Valid values are: None, 'batch', 'layer'.")


class MLP(nn.Module):
    """Fully connected network ``Linear -> [norm] -> activation -> Dropout``
    per hidden layer, followed by a plain output ``Linear``.

    Layers live in one ``nn.Sequential`` named ``layers`` so parameter keys are
    ``layers.<index>.weight``; the output layer is the last ``Linear`` in it.

    Args:
        in_features: size of each input vector.
        hidden: width of each hidden layer; ``()`` gives a single linear layer.
        out_features: size of each output vector.
        activation: activation name, see
            :func:`weightspace.models.activations.make_activation`.
        norm: ``None``, ``"batch"`` (``BatchNorm1d``) or ``"layer"``
            (``LayerNorm``), inserted after each hidden ``Linear`` and before
            the activation.
        dropout: dropout probability after each hidden activation. A
            ``Dropout`` module is present even for ``0.0`` so that the keys
            ``layers.<index>`` do not depend on the rate.
        bias: whether the ``Linear`` layers have a bias.

    Shapes:
        - input: ``(N, in_features)``.
        - output: ``(N, out_features)``.
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (64, 64),
        out_features: int = 10,
        activation: str = "relu",
        norm: str | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise WeightspaceError(
                f"Unknown MLP norm {norm!r}. Valid values are: None, 'batch', 'layer'."
            )
        if not 0.0 <= dropout < 1.0:
            raise WeightspaceError(f"MLP dropout must be in [0, 1), got {dropout!r}.")
        self.in_features = in_features
        self.hidden = tuple(int(h) for h in hidden)
        self.out_features = out_features

        layers: list[nn.Module] = []
        width = in_features
        for h in self.hidden:
            layers.append(nn.Linear(width, h, bias=bias))
            norm_layer = _make_norm(norm, h)
            if norm_layer is not None:
                layers.append(norm_layer)
            layers.append(make_activation(activation))
            # Always present, even with p=0, so that parameter keys do not
            # depend on the dropout rate: a zoo that sweeps dropout must give
            # every member the same state-dict keys.
            layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features, bias=bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
