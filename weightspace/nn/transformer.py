"""A sparse relational graph transformer over parameter graphs.

References:
    - Lim, Maron, Law, Lorraine, Lucas, "Graph Metanetworks for Processing
      Diverse Neural Architectures", ICLR 2024 (the graph-transformer variant
      of GMN).
    - Kofinas, Knyazev, Zhang, Chen, Burghouts, Gavves, Sonke, Zhang, "Graph
      Neural Networks for Learning Equivariant Representations of Neural
      Networks", ICLR 2024 (NG-T: a relational transformer whose edges carry
      and update their own features).

Unlike NG-T, which attends densely between all nodes of a graph (``O(N^2)``
per graph, with padding to batch graphs of different sizes), every node here
attends only along the parameter graph's edges: over the neurons it reads
(forward direction) and, separately, over the neurons that read it (backward
direction). The cost is ``O(E)`` per layer, graphs of any architecture batch
as a disjoint union, and there is no padding for attention to leak into.

Each attention score and value depends on a node pair only through the two
nodes' features and the edge's features, and every reduction (softmax,
weighted sum, graph readout) is over a set, so permuting hidden neurons
permutes node and edge rows and changes nothing else: the invariant head is
invariant and the equivariant head equivariant.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from weightspace.errors import WeightspaceError
from weightspace.graph import GraphTemplate
from weightspace.nn.base import check_head, graph_batch
from weightspace.nn.encoders import (
    EdgeEncoder,
    GraphDecoder,
    InvariantReadout,
    NodeEncoder,
    fit_graph_standardisers,
)
from weightspace.nn.probes import add_probe_features, optional_probe_features

DIRECTIONS = ("forward", "backward")


class RelationalAttention(MessagePassing):
    r"""Multi-head attention of every node over its incident edges, with keys
    and values that depend on the edge's features.

    In the ``"forward"`` direction node :math:`i` attends over its incoming
    edges :math:`j \to i` (the neurons it reads); in the ``"backward"``
    direction over its outgoing edges :math:`i \to j` (the neurons that read
    it), so the same graph serves both without building a reversed copy.

    .. math::
        q_i = W_q h_i,\quad k_{ji} = W_k h_j + W_{ek} e_{ji},\quad
        v_{ji} = (W_v h_j) \odot (1 + W_{e\gamma} e_{ji}) + W_{e\beta} e_{ji}

        \alpha_{ji} = \operatorname{softmax}_{j \in \mathcal{N}(i)}
            \frac{q_i^\top k_{ji}}{\sqrt{d}},\qquad
        h_i' = W_o \sum_{j \in \mathcal{N}(i)} \alpha_{ji} v_{ji}

    per head. The edge modulates the value FiLM-style (Perez et al., AAAI
    2018) as well as shifting it, so what a node receives depends on which
    neuron sent which weight, not only on the two sets. The softmax runs over
    each node's edges only (scattered by
    :func:`torch_geometric.utils.softmax`); a node with no edges in this
    direction (an input neuron, forward; an output neuron, backward) gets
    zeros.

    Args:
        hidden: node and edge channels (split across heads).
        heads: attention heads; must divide ``hidden``.
        dropout: dropout on the attention weights.
        direction: ``"forward"`` (aggregate at ``edge_index[1]``) or
            ``"backward"`` (aggregate at ``edge_index[0]``).

    Shapes:
        - x: ``[N, hidden]``, edge_index: ``[2, E]``, edge_attr: ``[E, hidden]``
        - output: ``[N, hidden]``; with ``return_attention_weights=True`` also
          the weights ``[E, heads]``, which sum to 1 over each node's edges.
    """

    def __init__(self, hidden: int, heads: int = 4, dropout: float = 0.0, direction: str = "forward") -> None:
        if direction not in DIRECTIONS:
            raise WeightspaceError(f"direction={direction!r}; choose one of {list(DIRECTIONS)}")
        if hidden % heads:
            raise WeightspaceError(f"hidden={hidden} must be divisible by heads={heads}")
        flow = "source_to_target" if direction == "forward" else "target_to_source"
        super().__init__(aggr="add", flow=flow, node_dim=0)
        self.hidden, self.heads, self.direction = hidden, heads, direction
        self.head_dim = hidden // heads
        self.node_qkv = nn.Linear(hidden, 3 * hidden)
        # key shift, value scale and value shift; no bias: the node projections have one
        self.edge_kv = nn.Linear(hidden, 3 * hidden, bias=False)
        # no bias, so a node with no edges in this direction gets exactly zeros
        self.out = nn.Linear(hidden, hidden, bias=False)
        self.attention_dropout = nn.Dropout(dropout)
        self._alpha: Tensor | None = None  # set by message() for return_attention_weights

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                return_attention_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        query, key_value = self.node_qkv(x).split([self.hidden, 2 * self.hidden], dim=-1)
        query = query.reshape(-1, self.heads, self.head_dim)
        # keys and values travel together: one gather (and one scatter in backward) per edge
        key_value = key_value.reshape(-1, self.heads, 2 * self.head_dim)
        edge_terms = self.edge_kv(edge_attr).reshape(-1, self.heads, 3 * self.head_dim)
        out = self.propagate(edge_index, query=query, key_value=key_value, edge_terms=edge_terms,
                             size=(x.shape[0], x.shape[0]))
        alpha, self._alpha = self._alpha, None
        out = self.out(out.reshape(-1, self.hidden))
        return (out, alpha) if return_attention_weights else out

    def message(self, query_i: Tensor, key_value_j: Tensor, edge_terms: Tensor, index: Tensor,
                ptr: Tensor | None, size_i: int | None) -> Tensor:
        key, value = key_value_j.split(self.head_dim, dim=-1)
        edge_key, edge_scale, edge_shift = edge_terms.split(self.head_dim, dim=-1)
        scores = (query_i * (key + edge_key)).sum(-1) / math.sqrt(self.head_dim)
        alpha = softmax(scores, index, ptr, size_i)
        self._alpha = alpha
        value = torch.addcmul(value + edge_shift, value, edge_scale)
        return value * self.attention_dropout(alpha).unsqueeze(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hidden}, heads={self.heads}, direction={self.direction!r})"


class EdgeUpdate(nn.Module):
    r"""The relational transformer's edge update
    :math:`\mathrm{MLP}([h_j, h_i, e_{ji}])` for every edge :math:`j \to i`.

    The first linear layer of the MLP is split into its source, target and
    edge blocks; the node blocks are applied once per node and gathered,
    which is the same function at a fraction of the cost (``N << E``).

    Shapes:
        - x: ``[N, hidden]``, edge_index: ``[2, E]``, edge_attr: ``[E, hidden]``
        - output: ``[E, hidden]``
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.source = nn.Linear(hidden, hidden, bias=False)
        self.target = nn.Linear(hidden, hidden, bias=False)
        self.edge = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        pre = self.edge(edge_attr) + self.source(x)[edge_index[0]] + self.target(x)[edge_index[1]]
        return self.out(self.act(pre))


def _feed_forward(hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(2 * hidden, hidden))


class RelationalTransformerLayer(nn.Module):
    """One pre-norm block: bidirectional edge attention and a feed-forward
    network on the nodes, then the edge update, each a residual branch.

    .. code-block:: text

        h = h + W [attn_fwd(LN h, LN e) ; attn_bwd(LN h, LN e)]
        h = h + FFN(LN h)
        e = e + MLP([LN h_j, LN h_i, LN e])

    Shapes:
        - x: ``[N, hidden]``, edge_index: ``[2, E]``, edge_attr: ``[E, hidden]``
        - output: ``(x, edge_attr)`` of the same shapes.
    """

    def __init__(self, hidden: int, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention_node_norm = nn.LayerNorm(hidden)
        self.edge_norm = nn.LayerNorm(hidden)
        # a neuron's meaning depends on what it reads and on who reads it
        self.forward_attention = RelationalAttention(hidden, heads, dropout, "forward")
        self.backward_attention = RelationalAttention(hidden, heads, dropout, "backward")
        self.merge = nn.Linear(2 * hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = _feed_forward(hidden, dropout)
        self.edge_node_norm = nn.LayerNorm(hidden)
        self.edge_update = EdgeUpdate(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        h, e = self.attention_node_norm(x), self.edge_norm(edge_attr)
        attended = torch.cat([self.forward_attention(h, edge_index, e),
                              self.backward_attention(h, edge_index, e)], dim=-1)
        x = x + self.dropout(self.merge(attended))
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        # `e` is still the normalised input edge features: the edges have not changed yet
        edge_attr = edge_attr + self.dropout(self.edge_update(self.edge_node_norm(x), edge_index, e))
        return x, edge_attr


class GraphTransformer(nn.Module):
    """Sparse relational graph transformer metanetwork (GMN-style graph
    transformer / NG-T with attention along the parameter graph's edges).

    Encodes nodes and edges (:class:`~weightspace.nn.encoders.NodeEncoder`,
    :class:`~weightspace.nn.encoders.EdgeEncoder`), runs ``num_layers``
    :class:`RelationalTransformerLayer` blocks and reads out:

    * ``head="invariant"``: per graph, the means of the input, hidden and
      output neurons' features and of the edge features, concatenated,
      through an MLP (:class:`~weightspace.nn.encoders.InvariantReadout`):
      ``[B, out_dim]``.
    * ``head="equivariant"``: :class:`~weightspace.nn.encoders.GraphDecoder`,
      a new value for every parameter slot (starting at the identity map):
      the input batch with new ``x`` / ``edge_attr``;
      :func:`~weightspace.nn.base.as_parameters` gives ``[B, P]``. ``out_dim``
      is not used.

    Every architecture the parameter graph represents is supported (MLPs,
    convs, residual and norm layers, mixed batches): ``template`` only fixes
    the feature widths, so any template of the batch works (for mixed
    architectures, one of :meth:`GraphTemplate.common`).

    Args:
        template: a template of the graphs to process; flat ``[B, P]`` inputs
            are turned into its graphs.
        out_dim: output channels of the invariant head.
        hidden: node and edge channels.
        num_layers: transformer blocks.
        heads: attention heads (must divide ``hidden``).
        fourier: Fourier frequencies per scalar in the encoders.
        dropout: dropout on attention weights and residual branches.
        head: ``"invariant"`` or ``"equivariant"``.
        extra_node_dim: width of extra node features the caller appends to
            ``x`` itself.
        probes: number of learned probe inputs (Neural Graphs' probe
            features, :class:`~weightspace.nn.probes.ProbeFeatures`), as in
            :class:`~weightspace.nn.gmn.GMN`; INRs / MLPs of one architecture
            only; needs ``network``.
        network: an instance of the input networks' architecture (for
            ``probes``).

    Call :meth:`fit_normalisation` on training graphs before training (the
    trainer does): it sets the encoders' per-depth standardisation.

    Shapes:
        - input: a :class:`~torch_geometric.data.Batch` (or single
          :class:`~torch_geometric.data.Data`) of ``B`` parameter graphs, or
          ``[B, P]`` flat parameters of ``template``'s architecture
        - output: ``[B, out_dim]`` (invariant) or the batch with
          ``x`` ``[N, 5 * node_dim]`` and ``edge_attr`` ``[E, edge_dim]``
          replaced (equivariant), in this module's dtype.
    """

    def __init__(self, template: GraphTemplate, out_dim: int, *, hidden: int = 64, num_layers: int = 4,
                 heads: int = 4, fourier: int = 16, dropout: float = 0.0, head: str = "invariant",
                 extra_node_dim: int = 0, probes: int = 0, network: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(template, GraphTemplate):
            raise TypeError(f"expected a GraphTemplate, got {type(template).__name__}; "
                            "make one with GraphTemplate.for_spec(spec)")
        if hidden % heads:
            raise WeightspaceError(f"hidden={hidden} must be divisible by heads={heads}")
        self.template = template
        self.head = check_head(head, model="GraphTransformer")
        self.out_dim = out_dim
        self.probe_features = optional_probe_features(template, probes, network, model="GraphTransformer")
        self.node_encoder = NodeEncoder(template, hidden, fourier, extra_dim=extra_node_dim + probes)
        self.edge_encoder = EdgeEncoder(template, hidden, fourier)
        self.layers = nn.ModuleList(RelationalTransformerLayer(hidden, heads, dropout)
                                    for _ in range(num_layers))
        self.final_node_norm = nn.LayerNorm(hidden)
        self.final_edge_norm = nn.LayerNorm(hidden)
        if head == "invariant":
            self.readout = InvariantReadout(hidden, out_dim, dropout)
        else:
            self.decoder = GraphDecoder(template, hidden)

    @torch.no_grad()
    def fit_normalisation(self, inputs: Tensor | Data) -> GraphTransformer:
        """Fit the encoders' per-depth standardisation on a sample of
        training graphs (:class:`~weightspace.nn.encoders.DepthStandardiser`)."""
        data = add_probe_features(self._as_graphs(inputs), self.probe_features)
        fit_graph_standardisers(self.node_encoder, self.edge_encoder, data)
        return self

    def _as_graphs(self, inputs: Tensor | Data) -> Data:
        data = graph_batch(inputs, self.template)
        dtype = self.final_node_norm.weight.dtype
        if data.x.dtype != dtype or data.edge_attr.dtype != dtype:
            # shallow copy: the caller's batch stays as it was
            data = copy.copy(data)
            data.x, data.edge_attr = data.x.to(dtype), data.edge_attr.to(dtype)
        return data

    def embed(self, inputs: Tensor | Data) -> tuple[Data, Tensor, Tensor]:
        """The graphs and their final node ``[N, hidden]`` and edge
        ``[E, hidden]`` features (before any head)."""
        data = self._as_graphs(inputs)
        x, edge_attr = self.node_encoder(add_probe_features(data, self.probe_features)), self.edge_encoder(data)
        for layer in self.layers:
            x, edge_attr = layer(x, data.edge_index, edge_attr)
        return data, self.final_node_norm(x), self.final_edge_norm(edge_attr)

    def forward(self, inputs: Tensor | Data) -> Tensor | Data:
        data, x, edge_attr = self.embed(inputs)
        if self.head == "equivariant":
            return self.decoder(data, x, edge_attr, data.edge_index, self.node_encoder, self.edge_encoder)
        return self.readout(data, x, edge_attr)


__all__ = ["EdgeUpdate", "GraphTransformer", "RelationalAttention", "RelationalTransformerLayer"]
