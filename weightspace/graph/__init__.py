"""Parameter graphs: networks as PyG graphs (schema in :mod:`weightspace.graph.schema`)."""

from weightspace.graph.convert import (
    convert_checkpoints,
    from_batch,
    from_graph,
    graph_summary,
    to_batch,
    to_graph,
)
from weightspace.graph.storage import GraphFile, load_graphs, save_graphs
from weightspace.graph.template import GraphTemplate

__all__ = [
    "GraphFile",
    "GraphTemplate",
    "convert_checkpoints",
    "from_batch",
    "from_graph",
    "graph_summary",
    "load_graphs",
    "save_graphs",
    "to_batch",
    "to_graph",
]
