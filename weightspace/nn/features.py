r"""Weight-space features: values on the weights and biases of a chain of layers.

Metanetworks that act on one architecture's weight tensors (rather than on its
parameter graph) carry, through every layer, one feature tensor per weight and
one per bias of the input network: the network's own parameters are the
features with one channel, an equivariant layer maps ``C_in`` channels to
``C_out``. :class:`WeightSpaceFeatures` is that container, shared by
:class:`~weightspace.nn.nfn.NFN` (Zhou et al. 2023, "Permutation Equivariant
Neural Functionals", whose ``WeightSpaceFeatures`` it follows) and
:class:`~weightspace.nn.dwsnet.DWSNet` (Navon et al. 2023, "Equivariant
Architectures for Learning in Deep Weight Spaces").

The container fixes what is where (layer ``i``'s weight and bias, a leading
batch axis); the axis layout of each tensor is the model's, because each model
arranges the axes for its own equivariant maps:

==========  =====================================  ==============================
model       ``weights[i]``                         ``biases[i]``
==========  =====================================  ==============================
NFN         ``[B, C, n_{i+1}, n_i, *kernel_i]``    ``[B, C, n_{i+1}]``
DWSNet      ``[B, *hidden axes, fixed * C]``       ``[B, *hidden axes, fixed * C]``
==========  =====================================  ==============================

(DWSNet: the axes over hidden neurons in the parameter's own order, the
input/output neuron axes folded with the channels into the last axis; see
:mod:`weightspace.nn.dwsnet`.) A layer without a bias has an all-zero bias
feature in both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor

from weightspace.errors import WeightspaceError


# eq=False: comparing tensors elementwise is not what == on a container should do
@dataclass(frozen=True, eq=False)
class WeightSpaceFeatures:
    """Features on the weights and biases of a chain of ``L`` layers, input
    side first.

    Iterating gives the tensors in a network's own order, layer by layer
    (``weights[0], biases[0], weights[1], ...``); :meth:`pieces` gives all
    weights, then all biases.

    Args:
        weights: one feature tensor per layer's weight.
        biases: one feature tensor per layer's bias (zeros for a layer
            without one).

    Shapes:
        - ``weights[i]``, ``biases[i]``: ``[B, ...]``, the rest in the model's
          layout (table in :mod:`weightspace.nn.features`)

    Raises:
        WeightspaceError: ``weights`` and ``biases`` differ in length.
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        # tuples, so that the frozen container cannot change under a caller
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "biases", tuple(self.biases))
        if len(self.weights) != len(self.biases):
            raise WeightspaceError(
                f"weight-space features need one bias per weight, got {len(self.weights)} "
                f"weights and {len(self.biases)} biases; pass a zero bias feature for a layer "
                f"without bias", parameter="biases")

    @classmethod
    def from_layers(cls, tensors: Sequence[Tensor]) -> WeightSpaceFeatures:
        """From ``weight_0, bias_0, weight_1, bias_1, ...`` (inverse of iterating)."""
        tensors = _weight_and_bias_per_layer(tensors)
        return cls(tuple(tensors[0::2]), tuple(tensors[1::2]))

    @classmethod
    def from_pieces(cls, tensors: Sequence[Tensor]) -> WeightSpaceFeatures:
        """From every weight, then every bias (inverse of :meth:`pieces`)."""
        tensors = _weight_and_bias_per_layer(tensors)
        half = len(tensors) // 2
        return cls(tuple(tensors[:half]), tuple(tensors[half:]))

    def __len__(self) -> int:
        """``L``, the number of layers."""
        return len(self.weights)

    def __iter__(self) -> Iterator[Tensor]:
        for weight, bias in zip(self.weights, self.biases, strict=True):
            yield weight
            yield bias

    def pieces(self) -> Iterator[Tensor]:
        """Every weight, then every bias."""
        yield from self.weights
        yield from self.biases

    def map(self, fn: Callable[[Tensor], Tensor]) -> WeightSpaceFeatures:
        """Apply ``fn`` to every tensor (an elementwise activation, dropout,
        a dtype cast ...)."""
        return WeightSpaceFeatures(tuple(fn(w) for w in self.weights),
                                   tuple(fn(b) for b in self.biases))


def _weight_and_bias_per_layer(tensors: Sequence[Tensor]) -> Sequence[Tensor]:
    """``tensors``, checked to hold a weight and a bias for every layer."""
    if len(tensors) % 2:
        raise WeightspaceError(
            f"expected a weight and a bias per layer (an even number of tensors), got "
            f"{len(tensors)} tensors", parameter="tensors")
    return tensors


__all__ = ["WeightSpaceFeatures"]
