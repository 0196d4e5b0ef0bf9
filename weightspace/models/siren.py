"""SIREN: an MLP with sine activations, the standard implicit neural
representation (INR) used in weight-space learning benchmarks.

Reference: Sitzmann et al. 2020, "Implicit Neural Representations with
Periodic Activation Functions" (NeurIPS 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.activations import Sine


class SIREN(nn.Module):
    r"""Sine-activated MLP: hidden layer :math:`i` computes
    :math:`\sin(\omega_0 (W_i x + b_i))`, the last layer is a plain ``Linear``.

    The network is one ``nn.Sequential`` named ``net`` that alternates
    ``Linear`` and :class:`~weightspace.models.activations.Sine` modules, so the
    parameter keys (``net.0.weight``, ``net.2.weight``, ...) are the same as for
    an MLP and the frequency :math:`\omega_0` stays out of the state dict.

    Initialisation follows the paper (Sec. 3.2 and its supplement): the first
    layer's weights are :math:`U(-1/n, 1/n)` and every later layer's weights are
    :math:`U(-\sqrt{6/n}/\omega_0, \sqrt{6/n}/\omega_0)`, with :math:`n` the
    layer's fan-in. This keeps pre-activations of every layer distributed
    like :math:`\arcsin` of a uniform so the sines neither saturate nor
    collapse with depth. Biases keep PyTorch's default initialisation.

    With the defaults (2 -> 32 -> 32 -> 1) the network has 1185 parameters.

    Args:
        in_features: coordinate dimension (2 for images).
        hidden: width of each hidden (sine) layer; at least one is required.
        out_features: signal dimension (1 for grey-scale, 3 for RGB).
        w0: frequency :math:`\omega_0` of the hidden sine layers after the first.
        w0_initial: frequency of the first sine layer.

    Shapes:
        - input: ``(N, in_features)`` coordinates, usually in ``[-1, 1]``.
        - output: ``(N, out_features)``.
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden: Sequence[int] = (32, 32),
        out_features: int = 1,
        w0: float = 30.0,
        w0_initial: float = 30.0,
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if not hidden:
            raise WeightspaceError(
                "SIREN needs at least one hidden layer, but hidden=() was given; "
                "without a sine layer it is a plain linear map, use MLP instead."
            )
        self.in_features = in_features
        self.hidden = hidden
        self.out_features = out_features
        self.w0 = float(w0)
        self.w0_initial = float(w0_initial)

        layers: list[nn.Module] = []
        width = in_features
        for index, h in enumerate(hidden):
            layers.append(nn.Linear(width, h))
            layers.append(Sine(self.w0_initial if index == 0 else self.w0))
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the weights with the SIREN initialisation."""
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for index, linear in enumerate(linears):
                fan_in = linear.in_features
                if index == 0:
                    bound = 1.0 / fan_in
                else:
                    # The next layer sees sin(w0 * .), so the weights are
                    # divided by w0 to undo the frequency scaling.
                    bound = math.sqrt(6.0 / fan_in) / self.w0
                linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
