"""Graph Metanetworks: message passing over parameter graphs.

Lim, Maron, Ben-Hamu, Lipman, Nickel, Ramanan, Ryu, "Graph Metanetworks for
Processing Diverse Neural Architectures", ICLR 2024.

A network becomes its parameter graph (one node per neuron, one edge per
weight; :mod:`weightspace.graph`) and a message-passing network with edge
updates processes it. Permuting a network's hidden neurons relabels the
graph's nodes, and message passing is equivariant to relabelling, so the
node/edge outputs are permutation equivariant and their pooled mean is
invariant — for every architecture the graph can express, and for batches
that mix architectures.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing

from weightspace.graph.template import GraphTemplate
from weightspace.nn.base import check_head, graph_batch
from weightspace.nn.encoders import (
    EdgeEncoder,
    GraphDecoder,
    InvariantReadout,
    NodeEncoder,
    fit_graph_standardisers,
)
from weightspace.nn.probes import add_probe_features, optional_probe_features


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class GMNConv(MessagePassing):
    r"""One edge-updating message-passing layer over a parameter graph, with
    messages in both directions of the network (the MetaLayer of GMN).

    .. math::
        e'_{ji} &= e_{ji} + W_e\,\sigma(A h_j + B h_i + C e_{ji}) \\
        m^{\rightarrow}_i &= \operatorname{mean}_{j \to i} \sigma(F h_j + G e'_{ji}) \qquad
        m^{\leftarrow}_j = \operatorname{mean}_{j \to i} \sigma(F' h_i + G' e'_{ji}) \\
        h'_i &= h_i + \phi_h([h_i, m^{\rightarrow}_i, m^{\leftarrow}_i])

    (``h`` and ``e`` LayerNorm-ed first.) A neuron hears from the neurons it
    reads (forward messages) and from the neurons that read it (backward
    messages); with both, a few layers relate every weight to the whole
    network. The node terms of the edge update and of the messages are
    projected once per node and gathered, so an edge costs four
    ``hidden × hidden`` products per layer instead of ten for MLPs on
    concatenations — edges outnumber nodes 17:1 in a 2-32-32-1 SIREN and
    100:1 in wide layers, so this is most of the time.

    Args:
        hidden: node and edge channels.
        aggr: aggregation of messages (``"mean"``, ``"sum"``, ``"max"`` …;
            mean keeps wide layers — hundreds of inputs per neuron — on the
            same scale as narrow ones).
        dropout: on the updates.

    Shapes:
        - x: ``[N, hidden]``, edge_index: ``[2, E]``, edge_attr: ``[E, hidden]``
        - output: ``([N, hidden], [E, hidden])``
    """

    def __init__(self, hidden: int, aggr: str = "mean", dropout: float = 0.0) -> None:
        super().__init__(aggr=aggr, flow="source_to_target")
        self.hidden = hidden
        self.node_norm = nn.LayerNorm(hidden)
        self.edge_norm = nn.LayerNorm(hidden)
        # per-node projections: edge update (source, target), forward and backward messages
        self.node_projections = nn.Linear(hidden, 4 * hidden)
        self.edge_in = nn.Linear(hidden, hidden, bias=False)
        self.edge_out = nn.Linear(hidden, hidden)
        self.message_edge = nn.Linear(hidden, 2 * hidden, bias=False)
        self.node_mlp = _mlp(3 * hidden, hidden, hidden)
        self.activation = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        h = self.node_norm(x)
        src, dst = edge_index
        from_src, from_dst, forward_node, backward_node = self.node_projections(h).chunk(4, dim=-1)
        update = from_src[src] + from_dst[dst] + self.edge_in(self.edge_norm(edge_attr))
        edge_attr = edge_attr + self.dropout(self.edge_out(self.activation(update)))
        forward_edge, backward_edge = self.message_edge(self.edge_norm(edge_attr)).chunk(2, dim=-1)
        forward = self.propagate(edge_index, x=forward_node, edge_attr=forward_edge)
        backward = self.propagate(edge_index.flip(0), x=backward_node, edge_attr=backward_edge)
        x = x + self.dropout(self.node_mlp(torch.cat([h, forward, backward], dim=-1)))
        return x, edge_attr

    def message(self, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        return self.activation(x_j + edge_attr)


class GMN(nn.Module):
    r"""Graph Metanetwork (Lim et al., ICLR 2024): encoders, a stack of
    :class:`GMNConv` layers, and an invariant or equivariant head.

    Args:
        template: a template of the graphs it will see (any of them for mixed
            architectures made with :meth:`GraphTemplate.common`); only its
            feature widths are read.
        out_dim: outputs of the invariant head (classes, regression targets).
        hidden: node and edge channels.
        num_layers: message-passing layers.
        fourier: random Fourier frequencies per scalar input.
        fourier_scale: their standard deviation.
        aggr: message aggregation of :class:`GMNConv`.
        dropout: dropout in the layers and the invariant head.
        head: ``"invariant"`` (a vector per network: means over its input,
            hidden and output neurons and over its edges, then an MLP;
            :class:`~weightspace.nn.encoders.InvariantReadout`) or ``"equivariant"`` (a
            network per network: a value added to every parameter slot;
            :func:`weightspace.nn.as_parameters` gives ``[B, P]``).
        extra_node_dim: width of extra node features the caller appends to
            ``x`` itself.
        probes: number of learned probe inputs (Neural Graphs' probe
            features, :class:`~weightspace.nn.probes.ProbeFeatures`): every
            input network is run on them and each neuron's values become
            node features. INRs / MLPs of one architecture only; needs
            ``network``.
        network: an instance of the input networks' architecture (for
            ``probes``; e.g. ``zoo.group(name).model_def.build()``).

    Example::

        >>> template = GraphTemplate.for_spec(spec)
        >>> gmn = GMN(template, out_dim=10)
        >>> logits = gmn(template.to_batch(params))      # [B, 10]

    Shapes:
        - input: a batch of ``B`` parameter graphs, or ``[B, P]`` flat
          parameters of ``template``'s architecture
        - output: ``[B, out_dim]`` (invariant) or a batch like the input
          (equivariant)
    """

    def __init__(self, template: GraphTemplate, out_dim: int, *, hidden: int = 64, num_layers: int = 4,
                 fourier: int = 16, fourier_scale: float = 4.0, aggr: str = "mean",
                 dropout: float = 0.0, head: str = "invariant", extra_node_dim: int = 0,
                 probes: int = 0, network: nn.Module | None = None) -> None:
        super().__init__()
        self.template = template
        self.head = check_head(head, model="GMN")
        self.probe_features = optional_probe_features(template, probes, network, model="GMN")
        extra_node_dim += probes
        self.node_encoder = NodeEncoder(template, hidden, fourier, fourier_scale, extra_node_dim)
        self.edge_encoder = EdgeEncoder(template, hidden, fourier, fourier_scale)
        self.layers = nn.ModuleList(GMNConv(hidden, aggr, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden)
        if head == "invariant":
            self.readout = InvariantReadout(hidden, out_dim, dropout)
        else:
            self.decoder = GraphDecoder(template, hidden)

    @torch.no_grad()
    def fit_normalisation(self, inputs: Tensor | Data) -> GMN:
        """Fit the encoders' per-depth standardisation on a sample of
        training graphs (:class:`~weightspace.nn.encoders.DepthStandardiser`)."""
        data = add_probe_features(graph_batch(inputs, self.template), self.probe_features)
        fit_graph_standardisers(self.node_encoder, self.edge_encoder, data)
        return self

    def encode(self, data: Data) -> tuple[Tensor, Tensor]:
        """Node and edge features after the message-passing layers."""
        h = self.node_encoder(data)
        e = self.edge_encoder(data)
        for layer in self.layers:
            h, e = layer(h, data.edge_index, e)
        return self.final_norm(h), self.final_norm(e)

    def forward(self, inputs: Tensor | Data) -> Tensor | Data:
        data = graph_batch(inputs, self.template)
        h, e = self.encode(add_probe_features(data, self.probe_features))
        if self.head == "equivariant":
            return self.decoder(data, h, e, data.edge_index, self.node_encoder, self.edge_encoder)
        return self.readout(data, h, e)


__all__ = ["GMN", "GMNConv"]
