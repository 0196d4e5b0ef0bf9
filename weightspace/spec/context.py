"""Bookkeeping shared by the tracer and the per-layer rules.

Tracing interprets a ``torch.fx`` graph abstractly: every tensor is replaced by
a :class:`Value` that records which neuron space indexes its feature axis and
which layer (graph node group) holds it. Rules (see :mod:`weightspace.spec.rules`)
receive these values and call :class:`TraceContext` to create spaces and
layers, register parameters, tie spaces together, and record how a scaling or
sign-flip symmetry would act.

Symmetry analysis. For each kind ``k`` in (``"scale"``, ``"sign"``), every value
carries a *class*: the set of affine producers (linear/conv rows, norm γ/β)
whose per-neuron transformation reaches it through operations that commute
with ``k`` (ReLU and max-pooling commute with positive scaling; tanh, sine and
average pooling with sign flips; linear operations with both). A class is
either transformed (T) or not (U). Whatever would see a transformed value
without compensating — a normalisation, an incompatible activation, the
network's output — forces its class to U. Every remaining producer class is T;
the symmetry multiplies its producers' rows and divides the consuming weights'
columns. Class 0 is the constant U class (raw inputs, outputs of
incompatible operations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from weightspace.spec.containers import Axis, LayerInput, ScaleRule
from weightspace.spec.errors import TraceError

log = logging.getLogger(__name__)

SYMMETRY_KINDS = ("scale", "sign")


@dataclass
class Value:
    """Abstract value of a traced tensor.

    Attributes:
        shape: the concrete shape seen while tracing (batch axis first).
        space: union-find id of the neuron space of the feature axis.
        dim: the feature axis (``None`` only for the raw input before any
            layer has decided it).
        block: entries per neuron along the feature axis (after a flatten).
        layer: index of the layer (node group) that holds these neurons.
        fresh: ``True`` while the value is exactly its layer's producer output
            (a following norm may then attach its parameters to that layer).
        classes: symmetry class per kind (see the module docstring).
    """

    shape: tuple[int, ...]
    space: int
    dim: int | None
    block: int
    layer: int
    fresh: bool
    classes: dict[str, int]

    def replace(self, **changes: Any) -> Value:
        fields = dict(self.__dict__)
        fields.update(changes)
        fields["classes"] = dict(fields["classes"])
        return Value(**fields)

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass
class Const:
    """A non-tensor value (a Python number, a size, a tuple …) or a tensor
    attribute read with ``get_attr``."""

    value: Any = None
    attribute: str | None = None


@dataclass
class _Space:
    size: int
    name: str
    blocks: set[int] = field(default_factory=set)


@dataclass
class _Layer:
    name: str
    space: int
    op: str
    kernel_size: tuple[int, ...]
    spatial: tuple[int, ...]
    inputs: list[tuple[int, str, str | None, float]]
    activation: str | None = None
    norm: str = "none"
    output: bool = False


@dataclass
class _Parameter:
    name: str
    axes: tuple[tuple[int, int] | None, ...]  # (space id, block) per axis
    role: str
    layer: int
    module: str


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        """Merge; the smaller (older) root survives so names stay stable."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        keep, drop = min(ra, rb), max(ra, rb)
        self.parent[drop] = keep
        return keep


class TraceContext:
    """State of one trace. Rules use its public methods only."""

    def __init__(self, root: nn.Module, graph_module: fx.GraphModule) -> None:
        self.root = root
        self.graph_module = graph_module
        self._spaces = _UnionFind()
        self._space_data: list[_Space] = []
        self.layers: list[_Layer] = []
        self.parameters: dict[str, _Parameter] = {}
        self._called_modules: set[str] = set()
        self.input_layer: int | None = None
        self.input_fixed = False
        # symmetry classes, one union-find per kind; class 0 is constant U
        self._classes = {k: _UnionFind() for k in SYMMETRY_KINDS}
        self._class_space: dict[str, dict[int, int]] = {k: {} for k in SYMMETRY_KINDS}
        self._class_rules: dict[str, dict[int, list[tuple[str, int, int]]]] = {
            k: {} for k in SYMMETRY_KINDS
        }
        self._forced_u: dict[str, list[int]] = {k: [] for k in SYMMETRY_KINDS}
        for k in SYMMETRY_KINDS:
            self._classes[k].add()

    # ------------------------------------------------------------------ nodes
    def shape(self, node: fx.Node) -> tuple[int, ...]:
        """The concrete output shape of ``node`` recorded by shape propagation."""
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise TraceError(f"{where(node)}: expected a tensor result, got {type(meta).__name__}")
        return tuple(int(s) for s in meta.shape)

    def module(self, node: fx.Node) -> nn.Module:
        return self.graph_module.get_submodule(str(node.target))

    def call_module_once(self, path: str) -> None:
        """Reject a parametrised module called twice (weight sharing)."""
        if path in self._called_modules:
            raise TraceError(
                f"module {path!r} is called more than once in forward (shared weights); "
                f"weightspace needs one call per parametrised module"
            )
        self._called_modules.add(path)

    # ----------------------------------------------------------------- spaces
    def new_space(self, size: int, name: str) -> int:
        sid = self._spaces.add()
        self._space_data.append(_Space(int(size), name))
        return sid

    def space_size(self, space: int) -> int:
        return self._space_data[self._spaces.find(space)].size

    def find_space(self, space: int) -> int:
        return self._spaces.find(space)

    def space_name(self, space: int) -> str:
        return self._space_data[self._spaces.find(space)].name

    def tie(self, a: int, b: int, node: fx.Node) -> int:
        """Tie two spaces into one (a residual addition, a depthwise conv …)."""
        sa, sb = self.space_size(a), self.space_size(b)
        if sa != sb:
            raise TraceError(
                f"{where(node)}: cannot tie neuron space {self.space_name(a)!r} "
                f"(size {sa}) to {self.space_name(b)!r} (size {sb})"
            )
        ra, rb = self._spaces.find(a), self._spaces.find(b)
        keep = self._spaces.union(a, b)
        drop = rb if keep == ra else ra
        if drop != keep:
            self._space_data[keep].blocks |= self._space_data[drop].blocks
        return keep

    def restrict_permutations(self, space: int, blocks: int) -> None:
        """Only permutations mapping ``blocks`` contiguous blocks onto blocks
        are symmetries (GroupNorm)."""
        self._space_data[self._spaces.find(space)].blocks.add(int(blocks))

    def resize_input(self, size: int, spatial: tuple[int, ...]) -> None:
        """Flattening the raw input makes each entry an input neuron."""
        layer = self.layers[self.input_layer]
        self._space_data[self._spaces.find(layer.space)].size = int(size)
        layer.spatial = spatial

    # ----------------------------------------------------------------- layers
    def new_layer(
        self,
        name: str,
        space: int,
        op: str,
        inputs: list[tuple[int, str, str | None, float]],
        kernel_size: tuple[int, ...] = (),
        spatial: tuple[int, ...] = (),
    ) -> int:
        if any(src == self.input_layer for src, *_ in inputs):
            self.input_fixed = True
        self.layers.append(_Layer(name, space, op, tuple(kernel_size), tuple(spatial), list(inputs)))
        return len(self.layers) - 1

    def use(self, value: Value) -> None:
        """Mark that a rule depends on ``value``'s feature axis and size (the
        raw input can no longer be reinterpreted by a flatten)."""
        if value.layer == self.input_layer:
            self.input_fixed = True

    def set_activation(self, value: Value, name: str) -> None:
        layer = self.layers[value.layer]
        if layer.activation is None:
            layer.activation = name

    def resolve_dim(self, value: Value, dim: int) -> Value:
        """Give the raw input its feature axis the first time a rule needs it."""
        if value.dim is None:
            value.dim = dim % value.rank
        return value

    # ------------------------------------------------------------- parameters
    def add_parameter(
        self,
        module: str,
        attribute: str,
        axes: list[tuple[int, int] | None],
        role: str,
        layer: int,
    ) -> str:
        name = f"{module}.{attribute}" if module else attribute
        if name in self.parameters:
            raise TraceError(f"parameter {name!r} is used twice (shared weights are not supported)")
        self.parameters[name] = _Parameter(name, tuple(axes), role, layer, module)
        return name

    # --------------------------------------------------------------- symmetry
    def new_producer(self, space: int, rules: list[tuple[str, int]]) -> dict[str, int]:
        """A new affine producer of ``space`` whose rows are ``rules``
        (parameter, axis); returns its class per kind."""
        out = {}
        for k in SYMMETRY_KINDS:
            cls = self._classes[k].add()
            self._class_space[k][cls] = space
            self._class_rules[k][cls] = [(p, a, +1) for p, a in rules]
            out[k] = cls
        return out

    def consume(self, value: Value, rules: list[tuple[str, int]]) -> None:
        """A linear map reads ``value``: if its class is transformed, these
        (parameter, axis) columns are divided by the factors."""
        for k in SYMMETRY_KINDS:
            cls = value.classes[k]
            self._class_rules[k].setdefault(cls, []).extend((p, a, -1) for p, a in rules)

    def require_untransformed(self, value: Value, kinds: tuple[str, ...] = SYMMETRY_KINDS) -> None:
        for k in kinds:
            self._forced_u[k].append(value.classes[k])

    def join_classes(self, values: list[Value], kinds: tuple[str, ...] = SYMMETRY_KINDS) -> dict[str, int]:
        """Values added together must be transformed alike."""
        out = {}
        for k in SYMMETRY_KINDS:
            if k in kinds:
                root = values[0].classes[k]
                for v in values[1:]:
                    root = self._classes[k].union(root, v.classes[k])
                out[k] = root
            else:
                for v in values:
                    self._forced_u[k].append(v.classes[k])
                out[k] = 0
        return out

    def passthrough(self, value: Value, kinds: tuple[str, ...]) -> dict[str, int]:
        """Classes of an elementwise op's output: kept for the kinds it commutes
        with, constant U (and the input forced U) for the others."""
        out = {}
        for k in SYMMETRY_KINDS:
            if k in kinds:
                out[k] = value.classes[k]
            else:
                self._forced_u[k].append(value.classes[k])
                out[k] = 0
        return out

    def symmetry_rules(self, kind: str) -> dict[int, list[ScaleRule]]:
        """Rules per space root for transformed classes of ``kind``."""
        uf = self._classes[kind]
        forced = {uf.find(c) for c in self._forced_u[kind]} | {uf.find(0)}
        per_class: dict[int, dict[tuple[str, int], int]] = {}
        space_of: dict[int, int] = {}
        for cls, rules in self._class_rules[kind].items():
            root = uf.find(cls)
            if root in forced:
                continue
            acc = per_class.setdefault(root, {})
            for p, a, power in rules:
                acc[(p, a)] = acc.get((p, a), 0) + power
        for cls, space in self._class_space[kind].items():
            space_of.setdefault(uf.find(cls), self._spaces.find(space))
        out: dict[int, list[ScaleRule]] = {}
        for root, acc in per_class.items():
            if root not in space_of:
                continue
            rules = [ScaleRule(p, a, pw) for (p, a), pw in acc.items() if pw != 0]
            if rules:
                out.setdefault(space_of[root], []).extend(rules)
        return out

    # ------------------------------------------------ finalised views (trace.py)
    def space_blocks(self, space: int) -> set[int]:
        return self._space_data[self._spaces.find(space)].blocks

    def make_axis(self, ax: tuple[int, int] | None) -> Axis | None:
        if ax is None:
            return None
        return Axis(self.space_name(ax[0]), ax[1])

    def make_input(self, src: int, kind: str, parameter: str | None, coefficient: float) -> LayerInput:
        return LayerInput(self.layers[src].name, kind, parameter, float(coefficient))


def where(node: fx.Node) -> str:
    """A readable location of an fx node: the module path it runs in."""
    stack = node.meta.get("nn_module_stack")
    path = ""
    if stack:
        path = list(stack.keys())[-1] if isinstance(stack, dict) else ""
        if isinstance(stack, dict):
            # values are (qualified path, type) in recent torch versions
            last = list(stack.values())[-1]
            if isinstance(last, tuple) and last:
                path = str(last[0])
    if node.op == "call_module":
        path = str(node.target)
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
    return f"{node.op} {target!s} in module {path or '<root>'!r} (fx node {node.name!r})"


def tensor_dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")
