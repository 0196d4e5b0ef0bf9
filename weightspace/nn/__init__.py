"""Metanetworks: networks that take networks as input.

Graph metanetworks (any architecture the parameter graph expresses, mixed
batches included): :class:`GMN`, :class:`GraphTransformer`,
:class:`EdgeDeepSets`. Metanetworks over one architecture's weight tensors:
:class:`NFN` (NP / HNP), :class:`DWSNet` (MLPs), and the baselines
:class:`StatNN` and :class:`FlatMLP`. All are built as
``Model(template, out_dim, **options)`` and called on a batch of parameter
graphs or on ``[B, P]`` flat parameters (:mod:`weightspace.nn.base`);
:func:`build_metanetwork` builds them by name.
"""

from weightspace.nn.base import (
    HEADS,
    FlatMetanetwork,
    as_parameters,
    flat_parameters,
    graph_batch,
)
from weightspace.nn.deepsets import EdgeDeepSets
from weightspace.nn.dwsnet import DWSLayer, DWSNet
from weightspace.nn.encoders import EdgeEncoder, FourierFeatures, GraphDecoder, NodeEncoder
from weightspace.nn.features import WeightSpaceFeatures
from weightspace.nn.flat_mlp import FlatMLP
from weightspace.nn.gmn import GMN, GMNConv
from weightspace.nn.nfn import NFN, HNPLinear, NFNPool, NPLinear
from weightspace.nn.probes import ProbeFeatures, with_probe_features
from weightspace.nn.registry import (
    METANETWORKS,
    Metanetwork,
    build_metanetwork,
    count_trainable_parameters,
    is_graph_model,
    metanetwork_class,
)
from weightspace.nn.statnn import StatNN, layer_statistics
from weightspace.nn.transformer import GraphTransformer

__all__ = [
    "DWSLayer",
    "DWSNet",
    "EdgeDeepSets",
    "EdgeEncoder",
    "FlatMLP",
    "FlatMetanetwork",
    "FourierFeatures",
    "GMN",
    "GMNConv",
    "GraphDecoder",
    "GraphTransformer",
    "HEADS",
    "HNPLinear",
    "METANETWORKS",
    "Metanetwork",
    "NFN",
    "NFNPool",
    "NPLinear",
    "NodeEncoder",
    "ProbeFeatures",
    "StatNN",
    "WeightSpaceFeatures",
    "as_parameters",
    "build_metanetwork",
    "count_trainable_parameters",
    "flat_parameters",
    "graph_batch",
    "is_graph_model",
    "layer_statistics",
    "metanetwork_class",
    "with_probe_features",
]
