"""weightspace: neural networks as data.

Trace a module into its weight-space spec, turn checkpoints into parameter
graphs, and use the spec's symmetries to align, merge and prune models.

The subpackages load on first use, so ``import weightspace as ws`` stays
cheap and ``ws.align.weight_matching(...)`` works without importing
``weightspace.align`` first. The layers, and the direction of every
dependency between them, are drawn in ``docs/architecture.md``.
"""

import importlib
import logging

from weightspace.errors import WeightspaceError
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

#: Subpackages and modules imported on first attribute access.
SUBMODULES = ("activations", "align", "classify", "cli", "data", "errors", "functional", "graph",
              "io", "jobs", "merge", "models", "nn", "prune", "registry", "spec", "train", "zoo")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES))

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
    "WeightspaceError",
    "__version__",
    "register_function_rule",
    "register_module_rule",
    "trace",
]
