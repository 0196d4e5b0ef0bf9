"""DeepSets over the edges of a parameter graph.

Reference: Zaheer et al., "Deep Sets", NeurIPS 2017: a function of a set is
``ρ(Σ_e φ(e))``. Here the set is a network's edges — every weight with the
attributes of its two end neurons — so the model is invariant to every
relabelling of the graph's nodes, in particular to permutations of hidden
neurons, and it works on graphs of any architecture (the graph carries the
structure), but it sees each weight only with its immediate neighbourhood.
It is the message-passing-free baseline of the graph metanetworks (Lim et al.,
"Graph Metanetworks for Processing Diverse Neural Architectures", ICLR 2024;
Kofinas et al., "Graph Neural Networks for Learning Equivariant
Representations of Neural Networks", ICLR 2024).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from weightspace.errors import WeightspaceError
from weightspace.graph import GraphTemplate
from weightspace.nn.base import check_head
from weightspace.nn.encoders import (
    EdgeEncoder,
    NodeEncoder,
    fit_graph_standardisers,
    graph_index_of_edges,
    num_graphs,
)
from weightspace.nn.flat_mlp import make_mlp
from weightspace.nn.probes import add_probe_features, optional_probe_features

AGGREGATIONS = ("mean", "sum")


class EdgeDeepSets(nn.Module):
    r"""DeepSets over a parameter graph's edges.

    Each edge :math:`(u \to v)` gets the feature
    :math:`\phi([h_e, h_u, h_v])` where :math:`h_e` encodes its ``edge_attr``
    and ``edge_type`` and :math:`h_u, h_v` encode its end nodes (``x``,
    ``x_mask`` and the categorical attributes ``node_type``, ``node_op``,
    ``node_act``, ``node_norm``, ``node_depth``, ``node_pos``) with the
    shared :class:`~weightspace.nn.encoders.EdgeEncoder` /
    :class:`~weightspace.nn.encoders.NodeEncoder`. The edge features are
    averaged (or summed) per graph and mapped by :math:`\rho` to the output:

    .. math::
        f(G) = \rho\Big(\operatorname{mean}_{(u \to v) \in E(G)}
               \phi([h_{uv}, h_u, h_v])\Big)

    A graph model: it reads no spec, so one instance handles batches that mix
    architectures, provided their graphs share ``edge_dim`` and ``node_dim``
    (build their templates with :meth:`GraphTemplate.common`).

    Args:
        template: a template of the graphs to process; only its widths
            (``edge_dim``, ``x`` width ``5 * node_dim``) are read, and it turns
            ``[B, P]`` inputs into graphs.
        out_dim: output width.
        hidden: width of the encoders, φ and ρ.
        num_layers: linear layers of φ and of ρ each.
        aggregation: ``"mean"`` (default; graphs of different sizes stay on
            one scale) or ``"sum"`` (the original DeepSets).
        fourier: random Fourier frequencies per scalar in the encoders.
        extra_node_dim: width of extra per-node features appended to ``x``
            (e.g. probe features from :func:`weightspace.nn.probes.with_probe_features`).
        head: must be ``"invariant"``.
        probes: number of learned probe inputs the model computes itself
            (:class:`~weightspace.nn.probes.ProbeFeatures`, as in
            :class:`~weightspace.nn.gmn.GMN`); INRs / MLPs of one
            architecture only; needs ``network``.
        network: an instance of the input networks' architecture (for
            ``probes``).

    Call :meth:`fit_normalisation` on training graphs before training (the
    trainer does): it sets the encoders' per-depth standardisation.

    Example::

        >>> t_small, t_big = GraphTemplate.common([spec_small, spec_big])
        >>> model = EdgeDeepSets(t_small, out_dim=10)
        >>> batch = Batch.from_data_list([t_small.to_data(p), t_big.to_data(q)])
        >>> model(batch).shape
        torch.Size([2, 10])

    Shapes:
        - input: a PyG ``Batch`` (or ``Data``) of ``B`` graphs, or ``[B, P]``
          flat parameters of ``template``'s architecture
        - output: ``[B, out_dim]``
    """

    def __init__(self, template: GraphTemplate, out_dim: int, *, hidden: int = 128, num_layers: int = 2,
                 aggregation: str = "mean", fourier: int = 16, extra_node_dim: int = 0,
                 head: str = "invariant", probes: int = 0, network: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(template, GraphTemplate):
            raise TypeError(f"expected a GraphTemplate, got {type(template).__name__}; "
                            "make one with GraphTemplate.for_spec(spec)")
        if aggregation not in AGGREGATIONS:
            raise WeightspaceError(f"aggregation={aggregation!r} is not supported; choose one of "
                             f"{list(AGGREGATIONS)}")
        self.head = check_head(head, ("invariant",), model="EdgeDeepSets")
        self.template = template
        self.aggregation = aggregation
        self.probe_features = optional_probe_features(template, probes, network, model="EdgeDeepSets")
        self.node_encoder = NodeEncoder(template, hidden, fourier=fourier, extra_dim=extra_node_dim + probes)
        self.edge_encoder = EdgeEncoder(template, hidden, fourier=fourier)
        # SiLU, not ReLU: a ReLU φ is affine on most edges at initialisation,
        # and the sum of an affine φ cannot tell which weight is attached to
        # which end node (swapping two input neurons' weights cancels exactly)
        self.phi = make_mlp(3 * hidden, hidden, hidden, num_layers, activation=nn.SiLU)
        self.rho = make_mlp(hidden, hidden, out_dim, num_layers, activation=nn.SiLU)

    @torch.no_grad()
    def fit_normalisation(self, inputs: Tensor | Data) -> EdgeDeepSets:
        """Fit the encoders' per-depth standardisation on a sample of
        training graphs (:class:`~weightspace.nn.encoders.DepthStandardiser`)."""
        data = add_probe_features(self._graphs(inputs), self.probe_features)
        fit_graph_standardisers(self.node_encoder, self.edge_encoder, data)
        return self

    def _graphs(self, inputs: Tensor | Data) -> Data:
        """The input as graphs whose float attributes have this module's dtype."""
        data = self.template.to_batch(inputs) if isinstance(inputs, Tensor) else inputs
        dtype = next(self.parameters()).dtype
        if data.x.dtype != dtype or data.edge_attr.dtype != dtype:
            data = copy.copy(data)
            data.x = data.x.to(dtype)
            data.edge_attr = data.edge_attr.to(dtype)
        return data

    def edge_features(self, data: Data) -> Tensor:
        """φ of every edge, before pooling: ``[E, hidden]``."""
        nodes = self.node_encoder(add_probe_features(data, self.probe_features))
        edges = self.edge_encoder(data)
        src, dst = data.edge_index
        return self.phi(torch.cat([edges, nodes[src], nodes[dst]], dim=-1))

    def forward(self, inputs: Tensor | Data) -> Tensor:
        data = self._graphs(inputs)
        per_edge = self.edge_features(data)
        pooled = scatter(per_edge, graph_index_of_edges(data), dim=0, dim_size=num_graphs(data),
                         reduce=self.aggregation)
        return self.rho(pooled)


__all__ = ["AGGREGATIONS", "EdgeDeepSets"]
