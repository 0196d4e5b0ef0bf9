"""The SIREN INRs of the weight-space benchmarks (DWSNets, NFN, Neural Graphs).

The MNIST / Fashion-MNIST INR data sets of DWSNets (Navon et al. 2023), reused
by NFN (Zhou et al. 2023) and Neural Graphs (Kofinas et al. 2024), hold one
SIREN per image, trained with their ``nn/inr.py``: ``INR(in_dim=2, n_layers=3,
up_scale=16)`` is ``seq = [Siren(2, 32), Siren(32, 32), Linear(32, 1)]``
where every ``Siren`` layer computes ``sin(30 * (W x + b))`` (the first one
too: ``w0=30`` everywhere) and the network returns ``seq(x) + 0.5``.

:class:`SirenINR` is :class:`~weightspace.models.siren.SIREN` (same layers,
same keys ``net.<2i>.weight/bias``) plus that constant output offset; with
``output_offset=0`` it is the plain SIREN of Sitzmann et al.'s reference code
(``net.<i>.linear.weight`` there, an outermost linear layer, no offset).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weightspace.models.siren import SIREN


class SirenINR(SIREN):
    r"""SIREN returning :math:`f(x) + c`: hidden layer :math:`i` computes
    :math:`\sin(\omega_0 (W_i x + b_i))`, the last layer is linear and the
    constant ``output_offset`` is added to its output.

    Args:
        in_features: coordinate dimension (2 for images).
        hidden: width of each hidden (sine) layer.
        out_features: signal dimension (1 for grey-scale).
        w0: frequency of the hidden sine layers after the first.
        w0_initial: frequency of the first sine layer (30 in DWSNets' INRs).
        output_offset: constant added to the output (0.5 in DWSNets' INRs,
            which fit images in ``[0, 1]`` around 0.5).

    Shapes:
        - input: ``(N, in_features)`` coordinates in ``[-1, 1]``.
        - output: ``(N, out_features)``.
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden: Sequence[int] = (32, 32),
        out_features: int = 1,
        w0: float = 30.0,
        w0_initial: float = 30.0,
        output_offset: float = 0.5,
    ) -> None:
        super().__init__(in_features, hidden, out_features, w0, w0_initial)
        self.output_offset = float(output_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.output_offset != 0.0:
            out = out + self.output_offset
        return out

    def extra_repr(self) -> str:
        return f"output_offset={self.output_offset}"
