"""The weight-space spec: neuron spaces, parameters, layers and symmetries."""

from weightspace.spec.containers import (
    Axis,
    LayerInput,
    LayerSpec,
    NeuronSpace,
    ParameterSpec,
    ScaleRule,
    WeightSpaceSpec,
)
from weightspace.spec.errors import (
    SpecError,
    StateDictMismatchError,
    TraceError,
    UnsupportedLayerError,
)
from weightspace.spec.rules import register_function_rule, register_module_rule
from weightspace.spec.symmetry import NeuronScaling, Permutation
from weightspace.spec.trace import trace

__all__ = [
    "Axis",
    "LayerInput",
    "LayerSpec",
    "NeuronScaling",
    "NeuronSpace",
    "ParameterSpec",
    "Permutation",
    "ScaleRule",
    "SpecError",
    "StateDictMismatchError",
    "TraceError",
    "UnsupportedLayerError",
    "WeightSpaceSpec",
    "register_function_rule",
    "register_module_rule",
    "trace",
]
