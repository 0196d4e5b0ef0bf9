"""Activation functions chosen by name.

Every built-in model family takes an ``activation: str`` argument and builds
its activation modules through :func:`make_activation`, so that a model zoo
config (YAML, HDF5 attributes, CLI flags) can name an activation with a plain
string and every family accepts the same names.

Activations are *modules*, not functional calls, so that they show up in
``named_modules()`` and in the ``torch.fx`` graph as ``call_module`` nodes with
a stable name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from weightspace.errors import WeightspaceError


class Sine(nn.Module):
    r"""Periodic activation :math:`\sin(\omega_0 x)` from Sitzmann et al. 2020,
    "Implicit Neural Representations with Periodic Activation Functions".

    ``w0`` is a plain Python float attribute rather than a buffer or parameter:
    it is a hyperparameter of the architecture, not part of the weights, so it
    must not appear in the state dict (a weight-space view of the network would
    otherwise treat it as a weight). ``torch.fx`` inlines it as a constant.

    Args:
        w0: frequency multiplier :math:`\omega_0`.

    Shapes:
        - input: ``(*)``, any shape.
        - output: ``(*)``, same shape as the input.
    """

    def __init__(self, w0: float = 1.0) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


# Factories rather than instances: every call must return a fresh module so
# that no two layers share one module object (shared modules collapse into a
# single node when traced).
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "sin": Sine,
    "identity": nn.Identity,
}

ACTIVATION_NAMES: tuple[str, ...] = tuple(_ACTIVATIONS)
"""Names accepted by :func:`make_activation`, in a stable order."""


def make_activation(name: str) -> nn.Module:
    """Return a new activation module for ``name``.

    Args:
        name: one of :data:`ACTIVATION_NAMES` (case-insensitive; ``-`` and
            ``_`` are interchangeable, so ``"leaky-relu"`` works too).

    Raises:
        ValueError: ``name`` is not a known activation; the message lists the
            valid names.
    """
    key = str(name).strip().lower().replace("-", "_")
    try:
        factory = _ACTIVATIONS[key]
    except KeyError:
        valid = ", ".join(ACTIVATION_NAMES)
        raise WeightspaceError(
            f"Unknown activation {name!r}. Valid activation names are: {valid}."
        ) from None
    return factory()
