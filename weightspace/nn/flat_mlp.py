"""A plain MLP on the flat parameter vector: the baseline without symmetry.

The network sees the ``P`` numbers of a checkpoint in the spec's canonical
order and nothing else. It ignores every permutation symmetry of the input
network, so two checkpoints that compute the same function (one with its
hidden neurons permuted) get different outputs; comparing it with the
symmetry-aware metanetworks shows how much the symmetry is worth (e.g. the
MLP baselines of Navon et al., "Equivariant Architectures for Learning in
Deep Weight Spaces", ICML 2023, and Zhou et al., "Permutation Equivariant
Neural Functionals", NeurIPS 2023).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import Data

from weightspace.errors import WeightspaceError
from weightspace.graph import GraphTemplate
from weightspace.nn.base import FlatMetanetwork, check_head


def make_mlp(in_dim: int, hidden: int, out_dim: int, num_layers: int, dropout: float = 0.0,
             activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``num_layers`` linear layers ``in_dim -> hidden -> ... -> out_dim`` with
    ``activation`` and ``Dropout(dropout)`` after every hidden one (none after
    the last, so the output is unconstrained).

    Shapes:
        - input: ``[*, in_dim]``
        - output: ``[*, out_dim]``
    """
    if num_layers < 1:
        raise WeightspaceError(f"num_layers must be at least 1, got {num_layers}")
    if not 0.0 <= dropout < 1.0:
        raise WeightspaceError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden), activation()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class FlatMLP(FlatMetanetwork):
    r"""An MLP on the flattened parameters (NOT permutation invariant).

    Args:
        template: the input architecture's :class:`~weightspace.graph.GraphTemplate`
            (its spec fixes ``P``).
        out_dim: output width of the invariant head (the equivariant head
            always returns ``[B, P]``; ``out_dim`` is then unused).
        hidden: width of the hidden layers.
        num_layers: number of linear layers (``1``: a linear model).
        dropout: dropout after every hidden activation.
        head: ``"invariant"`` (a vector per network) or ``"equivariant"``
            (a new network per network: ``params + MLP(params)``, the last
            layer zero-initialised so that an untrained model is the identity
            map). Neither is actually invariant / equivariant: the names say
            which output the model produces, like the other metanetworks'.

    Example::

        >>> model = FlatMLP(GraphTemplate.for_spec(spec), out_dim=10)
        >>> logits = model(params)                   # params: [B, P]

    Shapes:
        - input: ``[B, P]`` flat parameters, or a PyG ``Batch`` of ``B`` graphs
          of ``template``'s architecture
        - output: ``[B, out_dim]`` (invariant head) or ``[B, P]`` (equivariant head)
    """

    def __init__(self, template: GraphTemplate, out_dim: int, *, hidden: int = 256, num_layers: int = 3,
                 dropout: float = 0.0, head: str = "invariant") -> None:
        super().__init__(template)
        self.head = check_head(head, model="FlatMLP")
        num_params = self.spec.num_parameters
        width = num_params if head == "equivariant" else out_dim
        self.mlp = make_mlp(num_params, hidden, width, num_layers, dropout)
        if head == "equivariant":
            # a residual on the input parameters that starts at zero: the
            # untrained model returns its input, a sane INR-editing start
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, inputs: Tensor | Data) -> Tensor:
        params = self.parameters_of(inputs)
        out = self.mlp(params)
        return params + out if self.head == "equivariant" else out


__all__ = ["FlatMLP", "make_mlp"]
