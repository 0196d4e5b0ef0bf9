"""Encoders that turn parameter-graph attributes into hidden features.

The parameter graph (:mod:`weightspace.graph.schema`) carries raw numbers —
weights on edges, biases and norm parameters on nodes — plus categorical
attributes (node type, layer op, activation, norm, depth, the position of a
non-permutable input/output neuron, edge type). Graph metanetworks (GMN,
the graph transformer, DeepSets over edges) embed them the same way:

* each scalar ``v`` also goes through random Fourier features
  ``[sin(2π b v), cos(2π b v)]`` with fixed Gaussian frequencies ``b``
  (Tancik et al., NeurIPS 2020; used on weights by Neural Graphs, Kofinas et
  al., ICLR 2024), so small differences in a weight are visible to an MLP;
* categorical attributes get learned embeddings that are summed;
* everything is projected to ``hidden`` channels.

None of this depends on the node's index, only on its attributes, so the
encoders are permutation equivariant: permuting hidden neurons permutes the
encoded node rows and nothing else. Input and output neurons, which no
symmetry moves, are told apart by ``node_pos``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from weightspace.errors import WeightspaceError
from weightspace.graph.schema import (
    ACTIVATIONS,
    EDGE_TYPES,
    LAYER_OPS,
    NODE_SLOTS,
    NODE_TYPES,
    NORMS,
)
from weightspace.graph.template import GraphTemplate

MAX_DEPTH = 64
"""Depths at or above this share one embedding."""
POSITION_FREQUENCIES = 16
"""Sinusoidal frequencies that encode the position of a fixed neuron."""


def position_features(position: Tensor, num_frequencies: int = POSITION_FREQUENCIES) -> Tensor:
    """Sinusoidal features of non-negative integer positions (Vaswani et al.
    2017), wavelengths from 2 to about 4·10^4 positions; no table, so any
    number of input pixels or classes is covered.

    Shapes:
        - position: ``[N]``
        - output: ``[N, 2 * num_frequencies]``
    """
    exponent = torch.arange(num_frequencies, device=position.device, dtype=torch.float32)
    rates = math.pi * torch.pow(torch.tensor(2e4, device=position.device), -exponent / num_frequencies)
    angles = position.float().unsqueeze(-1) * rates
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FourierFeatures(nn.Module):
    r"""Random Fourier features of every scalar of the input.

    .. math::
        \gamma(v) = [\sin(2\pi b_1 v), \cos(2\pi b_1 v), \dots,
                     \sin(2\pi b_k v), \cos(2\pi b_k v)],\quad b_i \sim \mathcal{N}(0, \sigma^2)

    The frequencies are a buffer drawn from a fixed seed, so two models built
    with the same arguments compute the same features.

    Args:
        num_frequencies: ``k``; ``0`` disables the features (output width 0).
        scale: ``σ``, in cycles per unit of the input.
        seed: seed of the frequencies.

    Shapes:
        - input: ``[*, d]``
        - output: ``[*, 2 k d]``
    """

    def __init__(self, num_frequencies: int = 16, scale: float = 4.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("frequencies",
                             torch.randn(num_frequencies, generator=generator) * scale * 2 * math.pi)

    @property
    def num_frequencies(self) -> int:
        return self.frequencies.numel()

    def forward(self, values: Tensor) -> Tensor:
        if self.num_frequencies == 0:
            return values.new_zeros(*values.shape[:-1], 0)
        angles = values.unsqueeze(-1) * self.frequencies.to(values.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class DepthStandardiser(nn.Module):
    """Per-depth standardisation of raw values, fitted on data.

    Weights of different layers live on very different scales (a SIREN's
    first layer is ~30× larger than its second), so Neural Graphs standardise
    per layer. Depth (weight layers from the input) names a layer position
    in every architecture and is constant across a layer's neurons, so the
    statistics are permutation invariant and shared across architectures.
    Until :meth:`fit` is called it is the identity.

    Shapes:
        - values: ``[M, d]``, depth: ``[M]``
        - output: ``[M, d]``
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(MAX_DEPTH, width))
        self.register_buffer("std", torch.ones(MAX_DEPTH, width))

    @torch.no_grad()
    def fit(self, values: Tensor, depth: Tensor, present: Tensor | None = None) -> None:
        """Statistics of ``values`` (entries where ``present`` is true) per depth."""
        depth = depth.clamp(max=MAX_DEPTH - 1)
        values = values.double()
        weight = torch.ones_like(values) if present is None else present.double()
        count = torch.zeros(MAX_DEPTH, values.shape[1], dtype=torch.float64, device=values.device)
        total = torch.zeros_like(count)
        squares = torch.zeros_like(count)
        count.index_add_(0, depth, weight)
        total.index_add_(0, depth, values * weight)
        squares.index_add_(0, depth, values**2 * weight)
        mean = total / count.clamp(min=1)
        std = (squares / count.clamp(min=1) - mean**2).clamp(min=0).sqrt()
        seen = count > 1
        self.mean.copy_(torch.where(seen, mean, 0.0).to(self.mean))
        self.std.copy_(torch.where(seen & (std > 1e-12), std, 1.0).to(self.std))

    def forward(self, values: Tensor, depth: Tensor) -> Tensor:
        depth = depth.clamp(max=MAX_DEPTH - 1)
        return (values - self.mean.to(values.dtype)[depth]) / self.std.to(values.dtype)[depth]


FOURIER_INIT_GAIN = 0.1
"""Initial scale of the Fourier-feature projection relative to PyTorch's default."""


def _fourier_projection(in_dim: int, hidden: int) -> nn.Linear:
    """Projection of the Fourier features, started small: at initialisation
    a random projection of many sines and cosines acts like a hash of the
    value and drowns the raw value it sits next to (measured: a linear probe
    of the encoded output neurons of digit INRs fell from 31% to 14%
    accuracy); small, the raw value leads and training turns the Fourier
    features up where they help."""
    linear = nn.Linear(in_dim, hidden, bias=False)
    with torch.no_grad():
        linear.weight.mul_(FOURIER_INIT_GAIN)
    return linear


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class NodeEncoder(nn.Module):
    """Hidden features of every node: its parameter slots (values, Fourier
    features, presence mask) and the sum of its categorical embeddings.

    Args:
        template: any template of the graphs to encode (only its widths are
            read: ``5 * node_dim`` values per node).
        hidden: output channels.
        fourier: Fourier frequencies per scalar (``0``: none).
        fourier_scale: their standard deviation.
        extra_dim: width of extra per-node features concatenated to ``x``
            (e.g. probe activations, :mod:`weightspace.nn.probes`).

    Shapes:
        - output: ``[N, hidden]``
    """

    def __init__(self, template: GraphTemplate, hidden: int, fourier: int = 16,
                 fourier_scale: float = 4.0, extra_dim: int = 0) -> None:
        super().__init__()
        self.node_dim = template.node_dim
        self.value_dim = len(NODE_SLOTS) * template.node_dim + extra_dim
        self.standardise = DepthStandardiser(self.value_dim)
        self.fourier = FourierFeatures(fourier, fourier_scale, seed=1)
        in_dim = self.value_dim + len(NODE_SLOTS)
        # values and categories meet inside the MLP (before its nonlinearity),
        # so the same weight value can mean different things in different layers
        self.values = nn.Linear(in_dim, hidden)
        self.fourier_values = _fourier_projection(self.value_dim * 2 * fourier, hidden)
        self.output = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden))
        self.node_type = nn.Embedding(len(NODE_TYPES), hidden)
        self.node_op = nn.Embedding(len(LAYER_OPS), hidden)
        self.node_act = nn.Embedding(len(ACTIVATIONS), hidden)
        self.node_norm = nn.Embedding(len(NORMS), hidden)
        self.node_depth = nn.Embedding(MAX_DEPTH, hidden)
        # fixed (input/output) neurons: their index, sinusoidally encoded;
        # permutable neurons (node_pos == -1) share one learned vector
        self.node_pos = nn.Linear(2 * POSITION_FREQUENCIES, hidden)
        self.permutable = nn.Parameter(torch.zeros(hidden))

    def forward(self, data: Data) -> Tensor:
        x = data.x
        if x.shape[-1] != self.value_dim:
            raise WeightspaceError(f"graph node features have width {x.shape[-1]}, this encoder was built "
                             f"for {self.value_dim}; build the metanetwork from a template of these "
                             "graphs (GraphTemplate.common for mixed architectures)")
        mask = data.x_mask.to(x.dtype)
        x = self.standardise(x, data.node_depth)
        h = self.values(torch.cat([x, mask], dim=-1)) + self.fourier_values(self.fourier(x))
        h = h + self.node_type(data.node_type) + self.node_op(data.node_op)
        h = h + self.node_act(data.node_act) + self.node_norm(data.node_norm)
        h = h + self.node_depth(data.node_depth.clamp(max=MAX_DEPTH - 1))
        fixed = (data.node_pos >= 0).unsqueeze(-1)
        position = self.node_pos(position_features(data.node_pos.clamp(min=0)).to(h.dtype))
        h = h + torch.where(fixed, position, self.permutable.to(h.dtype))
        return self.output(h)


class EdgeEncoder(nn.Module):
    """Hidden features of every edge: its weight (or kernel / flatten block),
    their Fourier features, and an edge-type embedding.

    Args:
        template: any template of the graphs to encode (reads ``edge_dim``).
        hidden: output channels.
        fourier: Fourier frequencies per scalar (``0``: none).
        fourier_scale: their standard deviation.

    Shapes:
        - output: ``[E, hidden]``
    """

    def __init__(self, template: GraphTemplate, hidden: int, fourier: int = 16,
                 fourier_scale: float = 4.0) -> None:
        super().__init__()
        self.edge_dim = template.edge_dim
        self.standardise = DepthStandardiser(self.edge_dim)
        self.fourier = FourierFeatures(fourier, fourier_scale, seed=2)
        self.values = nn.Linear(self.edge_dim, hidden)
        self.fourier_values = _fourier_projection(self.edge_dim * 2 * fourier, hidden)
        self.output = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden))
        self.edge_type = nn.Embedding(len(EDGE_TYPES), hidden)
        # which layer a weight belongs to (the depth of the neuron it feeds):
        # without it, weights of all layers look alike until message passing
        # has mixed node depth into the edges
        self.edge_depth = nn.Embedding(MAX_DEPTH, hidden)

    def forward(self, data: Data) -> Tensor:
        e = data.edge_attr
        if e.shape[-1] != self.edge_dim:
            raise WeightspaceError(f"graph edge features have width {e.shape[-1]}, this encoder was built "
                             f"for {self.edge_dim}; build the metanetwork from a template of these "
                             "graphs (GraphTemplate.common for mixed architectures)")
        depth = data.node_depth[data.edge_index[1]].clamp(max=MAX_DEPTH - 1)
        e = self.standardise(e, depth)
        h = self.values(e) + self.fourier_values(self.fourier(e)) + self.edge_type(data.edge_type)
        return self.output(h + self.edge_depth(depth))


def fit_graph_standardisers(node_encoder: NodeEncoder, edge_encoder: EdgeEncoder, data: Data) -> None:
    """Fit both encoders' per-depth statistics on a batch of graphs (zero
    entries of absent node slots and kernel padding are left out)."""
    slots = data.x_mask.repeat_interleave(node_encoder.node_dim, dim=1)
    extra = slots.new_ones(slots.shape[0], node_encoder.value_dim - slots.shape[1])
    slots = torch.cat([slots, extra], dim=1)
    node_encoder.standardise.fit(data.x, data.node_depth, slots)
    edge_depth = data.node_depth[data.edge_index[1]]
    edge_encoder.standardise.fit(data.edge_attr, edge_depth, data.edge_attr != 0)


class GraphDecoder(nn.Module):
    """Equivariant head: a value for every parameter slot of every node and
    edge, added to the input graph's values (so an untrained head starts at
    the identity map), returned as a new graph of the same architecture.

    Shapes:
        - node features ``[N, hidden]``, edge features ``[E, hidden]``
        - output: a shallow copy of the input with ``x`` ``[N, 5 * node_dim]``
          and ``edge_attr`` ``[E, edge_dim]`` replaced.
    """

    def __init__(self, template: GraphTemplate, hidden: int) -> None:
        super().__init__()
        self.node_out = _mlp(hidden, hidden, len(NODE_SLOTS) * template.node_dim)
        self.edge_out = _mlp(2 * hidden, hidden, template.edge_dim)
        for head in (self.node_out, self.edge_out):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def forward(self, data: Data, node_features: Tensor, edge_features: Tensor, edge_index: Tensor,
                node_encoder: NodeEncoder | None = None, edge_encoder: EdgeEncoder | None = None) -> Data:
        """With the encoders given, the changes are in units of their fitted
        per-depth standard deviations (so a head that learns changes of
        order one makes changes of the right size in every layer)."""
        out = data.clone()
        # an edge's value also sees its two end nodes (the edge features
        # already do after message passing; this sharpens it cheaply)
        edge_in = torch.cat([edge_features, node_features[edge_index[1]] * node_features[edge_index[0]]],
                            dim=-1)
        node_delta = self.node_out(node_features)
        edge_delta = self.edge_out(edge_in)
        if node_encoder is not None:
            width = data.x.shape[1]
            node_delta = node_delta * node_encoder.standardise.std[:, :width].to(node_delta)[
                data.node_depth.clamp(max=MAX_DEPTH - 1)]
        if edge_encoder is not None:
            edge_delta = edge_delta * edge_encoder.standardise.std.to(edge_delta)[
                data.node_depth[edge_index[1]].clamp(max=MAX_DEPTH - 1)]
        out.x = data.x + node_delta
        out.edge_attr = data.edge_attr + edge_delta
        return out


class InvariantReadout(nn.Module):
    """Invariant graph readout: the mean of the node features of each node
    type (input, hidden, output neurons) and the mean of the edge features,
    per graph, concatenated, then an MLP.

    Why per type: the mean over a network's many exchangeable hidden neurons
    hardly varies from network to network (it averages out), while the few
    input and output neurons carry what distinguishes them (an INR's output
    neuron *is* its image, through probe features). Pooled together, their
    signal is diluted ~1/N; pooled apart, it reaches the head at full
    strength. Neural Graphs read out the output neurons only; this keeps them
    and adds the rest. Invariant because only permutable (hidden) neurons
    move, and a mean over a set does not see its order.

    Shapes:
        - node features ``[N, hidden]``, edge features ``[E, hidden]``
        - output: ``[B, out_dim]``
    """

    def __init__(self, hidden: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear((len(NODE_TYPES) + 1) * hidden, hidden), nn.SiLU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, data: Data, node_features: Tensor, edge_features: Tensor) -> Tensor:
        b = num_graphs(data)
        types = len(NODE_TYPES)
        slot = graph_index_of_nodes(data) * types + data.node_type
        per_type = scatter(node_features, slot, 0, dim_size=b * types, reduce="mean")
        edges = scatter(edge_features, graph_index_of_edges(data), 0, dim_size=b, reduce="mean")
        return self.mlp(torch.cat([per_type.view(b, -1), edges], dim=-1))


def graph_index_of_edges(data: Data) -> Tensor:
    """The graph each edge belongs to (``[E]``; zeros for a single graph)."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return data.edge_index.new_zeros(data.edge_index.shape[1])
    return batch[data.edge_index[0]]


def graph_index_of_nodes(data: Data) -> Tensor:
    """The graph each node belongs to (``[N]``; zeros for a single graph)."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return data.edge_index.new_zeros(data.x.shape[0])
    return batch


def num_graphs(data: Data) -> int:
    return int(getattr(data, "num_graphs", 1) or 1)


__all__ = ["DepthStandardiser", "EdgeEncoder", "InvariantReadout", "fit_graph_standardisers", "FourierFeatures", "GraphDecoder", "NodeEncoder", "graph_index_of_edges",
           "graph_index_of_nodes", "num_graphs"]
