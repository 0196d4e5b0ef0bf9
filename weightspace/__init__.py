"""weightspace: neural networks as data.

Trace a module into its weight-space spec, turn checkpoints into parameter
graphs, and use the spec's symmetries to align, merge and prune models.
"""

import logging

from weightspace.graph import GraphTemplate, from_batch, from_graph, to_batch, to_graph
from weightspace.spec import (
    NeuronScaling,
    Permutation,
    SpecError,
    StateDictMismatchError,
    TraceError,
    UnsupportedLayerError,
    WeightSpaceSpec,
    register_function_rule,
    register_module_rule,
    trace,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "GraphTemplate",
    "from_batch",
    "from_graph",
    "to_batch",
    "to_graph",
    "NeuronScaling",
    "Permutation",
    "SpecError",
    "StateDictMismatchError",
    "TraceError",
    "UnsupportedLayerError",
    "WeightSpaceSpec",
    "__version__",
    "register_function_rule",
    "register_module_rule",
    "trace",
]
