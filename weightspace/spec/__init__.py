"""The weight-space spec: neuron spaces, parameters, layers and symmetries."""

from weightspace.spec.containers import (
    Axis,
    AxisRef,
    LayerInput,
    LayerSpec,
    NeuronSpace,
    ParameterSpec,
    ScaleRule,
    WeightSpaceSpec,
    check_finite,
    first_non_finite,
)
from weightspace.spec.errors import (
    NonFiniteError,
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
    "AxisRef",
    "LayerInput",
    "LayerSpec",
    "NeuronScaling",
    "NeuronSpace",
    "NonFiniteError",
    "ParameterSpec",
    "Permutation",
    "ScaleRule",
    "SpecError",
    "StateDictMismatchError",
    "TraceError",
    "UnsupportedLayerError",
    "WeightSpaceSpec",
    "check_finite",
    "first_non_finite",
    "register_function_rule",
    "register_module_rule",
    "trace",
]
