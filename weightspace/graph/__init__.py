"""Parameter graphs: networks as PyG graphs (schema in :mod:`weightspace.graph.schema`)."""

from weightspace.graph.convert import from_batch, from_graph, graph_summary, to_batch, to_graph
from weightspace.graph.template import GraphTemplate

__all__ = ["GraphTemplate", "from_batch", "from_graph", "graph_summary", "to_batch", "to_graph"]
