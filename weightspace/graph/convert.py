"""Convert state dicts to parameter graphs and back.

:func:`to_graph` / :func:`from_graph` handle one network; for many
checkpoints of one architecture use :func:`to_batch` (or a
:class:`~weightspace.graph.GraphTemplate` directly), which converts them all
with one gather.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor
from torch_geometric.data import Batch, Data

from weightspace.graph.template import GraphTemplate
from weightspace.spec.containers import WeightSpaceSpec


def to_graph(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec, **template_options) -> Data:
    """The parameter graph of one network (schema: :mod:`weightspace.graph.schema`).

    Args:
        state_dict: the network's state dict (checked against ``spec``).
        spec: its :class:`~weightspace.WeightSpaceSpec`.
        **template_options: ``kernel_grid``, ``edge_dim``, ``node_dim`` of the
            :class:`GraphTemplate` (to batch with other architectures).
    """
    template = GraphTemplate.for_spec(spec, **template_options)
    return template.to_data(spec.flatten(state_dict))


def from_graph(data: Data, spec: WeightSpaceSpec, **template_options) -> dict[str, Tensor]:
    """The state dict of a graph made by :func:`to_graph` (exact, every dtype
    restored)."""
    template = GraphTemplate.for_spec(spec, **template_options)
    return spec.unflatten(template.from_data(data))


def to_batch(
    checkpoints: Tensor | Sequence[Mapping[str, Tensor]],
    spec: WeightSpaceSpec,
    **template_options,
) -> Batch:
    """Many checkpoints of one architecture -> one batched graph.

    Args:
        checkpoints: a ``[B, P]`` matrix of flat parameters
            (:meth:`WeightSpaceSpec.flatten`) or a list of state dicts.
    """
    template = GraphTemplate.for_spec(spec, **template_options)
    params = checkpoints if isinstance(checkpoints, Tensor) else spec.flatten_many(list(checkpoints))
    return template.to_batch(params)


def from_batch(batch: Data, spec: WeightSpaceSpec, **template_options) -> list[dict[str, Tensor]]:
    """Inverse of :func:`to_batch`: one state dict per graph."""
    template = GraphTemplate.for_spec(spec, **template_options)
    params = template.from_batch(batch)
    return [spec.unflatten(row) for row in params]


def graph_summary(data: Data) -> str:
    """One line per attribute: name, shape, dtype."""
    lines = []
    for key in sorted(data.keys()):
        value = data[key]
        if isinstance(value, Tensor):
            lines.append(f"  {key:<12} {str(list(value.shape)):<16} {str(value.dtype).replace('torch.', '')}")
    head = f"{type(data).__name__}: {data.num_nodes} nodes, {data.num_edges} edges"
    if isinstance(data, Batch):
        head += f", {data.num_graphs} graphs"
    return "\n".join([head, *lines])


__all__ = ["from_batch", "from_graph", "graph_summary", "to_batch", "to_graph"]
