"""What every metanetwork takes and returns.

Every metanetwork is built from a :class:`~weightspace.graph.GraphTemplate`
(graph models read its feature widths; models over one architecture's flat
parameters read its spec) and called on either

* a PyG :class:`~torch_geometric.data.Batch` of parameter graphs, as made by
  :meth:`GraphTemplate.to_batch` or :class:`~weightspace.zoo.ZooGraphDataset`,
  or
* a ``[B, P]`` tensor of flat parameter vectors in the spec's order (models
  over one architecture only).

Heads:

* ``head="invariant"``: ``[B, out_dim]``, unchanged by every permutation of
  the input networks' hidden neurons.
* ``head="equivariant"``: a network per input network. Flat models return
  ``[B, P]``; graph models return the batch with new ``x`` / ``edge_attr``
  (one value per parameter slot), which :func:`as_parameters` turns into
  ``[B, P]``. Permuting an input network's neurons permutes its output
  network the same way.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import Data

from weightspace.errors import WeightspaceError
from weightspace.graph import GraphTemplate
from weightspace.spec import StateDictMismatchError, WeightSpaceSpec

HEADS = ("invariant", "equivariant")


def check_head(head: str, supported: tuple[str, ...] = HEADS, model: str = "this model") -> str:
    """Validate a ``head`` argument with an error that lists the choices."""
    if head not in supported:
        raise WeightspaceError(f"head={head!r} is not supported by {model}; choose one of {list(supported)}")
    return head


def flat_parameters(inputs: Tensor | Data, template: GraphTemplate) -> Tensor:
    """``[B, P]`` flat parameters of ``inputs`` (a tensor, returned as is after
    a shape check, or a batch of ``template``'s graphs, by one gather)."""
    if isinstance(inputs, Tensor):
        params = inputs.unsqueeze(0) if inputs.dim() == 1 else inputs
        if params.dim() != 2 or params.shape[1] != template.spec.num_parameters:
            raise StateDictMismatchError(
                f"expected flat parameters of shape [B, {template.spec.num_parameters}] for "
                f"this metanetwork's architecture, got {list(inputs.shape)}")
        return params
    return template.from_batch(inputs)


def graph_batch(inputs: Tensor | Data, template: GraphTemplate) -> Data:
    """A batch of parameter graphs: ``inputs`` itself, or ``template``'s graphs
    of flat ``[B, P]`` parameters."""
    if isinstance(inputs, Tensor):
        return template.to_batch(flat_parameters(inputs, template))
    return inputs


def as_parameters(output: Tensor | Data, template: GraphTemplate) -> Tensor:
    """``[B, P]`` parameters of an equivariant head's output (flat models'
    tensors pass through; graph models' batches are gathered by ``template``)."""
    return flat_parameters(output, template)


class FlatMetanetwork(nn.Module):
    """Base of the metanetworks over one architecture's flat parameters
    (NFN, DWSNet, StatNN, the flat MLP): keeps the template and turns any
    input into ``[B, P]``."""

    def __init__(self, template: GraphTemplate) -> None:
        super().__init__()
        if not isinstance(template, GraphTemplate):
            raise TypeError(f"expected a GraphTemplate, got {type(template).__name__}; "
                            "make one with GraphTemplate.for_spec(spec)")
        self.template = template

    @property
    def spec(self) -> WeightSpaceSpec:
        return self.template.spec

    def parameters_of(self, inputs: Tensor | Data) -> Tensor:
        """``[B, P]`` in the dtype of this module's weights."""
        params = flat_parameters(inputs, self.template)
        weight = next(self.parameters(), None)
        if weight is not None and params.dtype != weight.dtype:
            params = params.to(weight.dtype)
        return params


__all__ = ["HEADS", "FlatMetanetwork", "as_parameters", "check_head", "flat_parameters", "graph_batch"]
