"""Errors raised while deriving or using a weight-space spec.

Every message names the thing that is wrong (module path, parameter key, space)
and what would fix it, because these errors reach users of the CLI verbatim.
"""

from __future__ import annotations

from weightspace.errors import WeightspaceError


class SpecError(WeightspaceError):
    """Base class of every spec-related error."""


class UnsupportedLayerError(SpecError):
    """A module or function in ``forward`` has no tracing rule.

    Raised with the module path, its type and how to register a rule, e.g.
    ``weightspace.register_module_rule(MyLayer, my_rule)``.
    """


class TraceError(SpecError):
    """``forward`` could not be traced or analysed (dynamic control flow,
    an operation that breaks the neuron bookkeeping, mismatched sizes …)."""


class StateDictMismatchError(SpecError):
    """A state dict does not match the spec: a missing key, an extra key or a
    wrong shape. The message names the key."""


class NonFiniteError(SpecError):
    """A state dict holds NaN or infinite values where finite weights are
    needed. The message names the state dict and the entry."""
