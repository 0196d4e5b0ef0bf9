"""Zoo rows -> one PyG ``Batch``, with rows of several architectures mixed.

Each group's rows are turned into graphs by one gather of its
:class:`~weightspace.graph.GraphTemplate`; when the rows span groups, the
per-group batches are interleaved back into the requested order with one
index gather per attribute, so the result is what ``Batch.from_data_list``
would give for the graphs in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch

from weightspace.graph.template import BATCH_ATTRIBUTES, GraphTemplate, wrap_graph_batch

if TYPE_CHECKING:
    from weightspace.zoo.reader import Zoo

_NODE_KEYS = tuple(key for key, kind in BATCH_ATTRIBUTES.items() if kind == "node")
# edge_index is an edge attribute too, but its values are node ids: remapped apart
_EDGE_KEYS = tuple(key for key, kind in BATCH_ATTRIBUTES.items()
                   if kind == "edge" and key != "edge_index")


def graphs_for_rows(zoo: Zoo, indices: np.ndarray,
                    templates: Mapping[str, GraphTemplate] | None = None,
                    device: torch.device | str | None = None,
                    transform: Callable[[Tensor, str], Tensor] | None = None) -> Batch:
    """Graphs of the rows ``indices`` (global) in that order.

    Args:
        templates: group name -> template; defaults to :meth:`Zoo.templates`
            (one shared feature layout for all groups).
        transform: ``transform(params, group_name)`` applied to each group's
            ``[k, P]`` block before it becomes graphs (augmentation).
    """
    templates = templates if templates is not None else zoo.templates()
    groups = zoo.column("group", indices)
    names = list(dict.fromkeys(groups))
    parts = []
    for name in names:
        params = zoo.params(indices[groups == name])
        if device is not None:
            params = params.to(device)
        if transform is not None:
            params = transform(params, name)
        parts.append((templates[name], templates[name].to_batch(params)))
    if len(parts) == 1:
        return parts[0][1]
    position = {name: i for i, name in enumerate(names)}
    order_group = np.array([position[g] for g in groups])
    order_local = np.zeros(len(indices), dtype=np.int64)
    for g in range(len(names)):
        where = np.flatnonzero(order_group == g)
        order_local[where] = np.arange(len(where))
    return interleave(parts, order_group, order_local)


def interleave(parts: list[tuple[GraphTemplate, Batch]], order_group: np.ndarray,
               order_local: np.ndarray) -> Batch:
    """Merge template batches into one, graph ``i`` being graph
    ``order_local[i]`` of ``parts[order_group[i]]``."""
    sizes = {"node": [], "edge": [], "scalar": []}
    starts = {"node": [], "edge": [], "scalar": []}
    offset = {"node": 0, "edge": 0, "scalar": 0}
    for template, batch in parts:
        for kind, count in (("node", template.num_nodes), ("edge", template.num_edges),
                            ("scalar", template.num_scalars)):
            sizes[kind].append(count)
            starts[kind].append(offset[kind])
            offset[kind] += count * int(batch.num_graphs)

    def gather_index(kind: str) -> tuple[Tensor, Tensor]:
        per_graph = np.array(sizes[kind])[order_group]
        base = np.array(starts[kind])[order_group] + order_local * per_graph
        index = np.repeat(base - np.concatenate([[0], np.cumsum(per_graph)[:-1]]), per_graph)
        index = index + np.arange(per_graph.sum())
        return torch.from_numpy(index), torch.from_numpy(per_graph)

    node_index, nodes_per_graph = gather_index("node")
    edge_index_order, edges_per_graph = gather_index("edge")
    scalar_index, scalars_per_graph = gather_index("scalar")
    cat = {key: torch.cat([b[key] for _, b in parts])
           for key in (*_NODE_KEYS, *_EDGE_KEYS, "scalars")}
    # Each part's edge_index counts its own nodes from 0: shift to the
    # concatenation's node ids.
    cat["edge_index"] = torch.cat([b.edge_index + start for (_, b), start
                                   in zip(parts, starts["node"], strict=True)], dim=1)
    device = cat["x"].device
    tensors: dict[str, Any] = {key: cat[key][node_index.to(device)] for key in _NODE_KEYS}
    tensors.update({key: cat[key][edge_index_order.to(device)] for key in _EDGE_KEYS})
    tensors["scalars"] = cat["scalars"][scalar_index.to(device)]
    # Edge endpoints: old global node id -> new global node id.
    new_node_id = torch.empty_like(node_index)
    new_node_id[node_index] = torch.arange(len(node_index))
    tensors["edge_index"] = new_node_id.to(device)[cat["edge_index"][:, edge_index_order.to(device)]]
    num_graphs = len(order_group)
    graph_ids = torch.arange(num_graphs)
    tensors["batch"] = graph_ids.repeat_interleave(nodes_per_graph).to(device)
    node_ptr = torch.cat([torch.zeros(1, dtype=torch.long), nodes_per_graph.cumsum(0)])
    edge_ptr = torch.cat([torch.zeros(1, dtype=torch.long), edges_per_graph.cumsum(0)])
    scalar_ptr = torch.cat([torch.zeros(1, dtype=torch.long), scalars_per_graph.cumsum(0)])
    tensors["ptr"] = node_ptr.to(device)
    return wrap_graph_batch(tensors, node_ptr, edge_ptr, scalar_ptr)

