"""The weight-space spec: which axes of which parameters belong to which neurons.

A :class:`WeightSpaceSpec` is derived once from a module by
:func:`weightspace.trace` and then drives every other part of the toolkit
(graphs, symmetries, alignment, pruning, the zoo). It is a small immutable
value: it serialises to JSON, compares by value and hashes by content, so two
instances of one architecture give the same :attr:`WeightSpaceSpec.hash`.

Vocabulary:

* **neuron space** (:class:`NeuronSpace`): a set of neurons/channels that share
  one permutation. Hidden spaces are permutable, input and output spaces are
  not. Spaces added together by a residual connection are one space.
* **parameter** (:class:`ParameterSpec`): a state-dict entry (parameters *and*
  buffers) with, for each axis, the space it indexes (:class:`Axis`) or
  ``None`` (kernel axes, normalised positions …).
* **layer** (:class:`LayerSpec`): a group of neurons at one place in the
  computation — the input, the output of a linear/conv layer, or a norm layer
  that could not be attached to its producer. Layers are the node groups of
  the parameter graph; several layers can share one space (a residual stream).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from weightspace.spec.errors import NonFiniteError, SpecError, StateDictMismatchError

#: Roles a parameter can play. ``weight``: the (out, in, *kernel) weight of a
#: linear/conv layer (one edge per (in, out) pair); ``depthwise_weight``: a
#: depthwise conv kernel (one edge per channel); ``bias``/``norm_*``/
#: ``running_*``: one value (or block) per neuron; ``scalar``: indexes no space
#: (e.g. ``num_batches_tracked``); ``unused``: never touched by ``forward``.
PARAMETER_ROLES = (
    "weight",
    "depthwise_weight",
    "bias",
    "norm_weight",
    "norm_bias",
    "running_mean",
    "running_var",
    "scalar",
    "unused",
)

#: Symmetries a space can carry.
SYMMETRIES = ("permutation", "scale", "sign")


@dataclass(frozen=True)
class Axis:
    """The space indexed by one axis of a parameter.

    ``block`` > 1 means every neuron owns ``block`` consecutive entries of the
    axis: the input axis of a linear layer after a conv→linear flatten indexes
    ``C`` channels times ``H·W`` positions, i.e. ``Axis(space, block=H*W)``.
    """

    space: str
    block: int = 1


@dataclass(frozen=True)
class AxisRef:
    """One axis of one parameter that indexes a given space: an entry of
    :meth:`WeightSpaceSpec.axes_of` (Git Re-Basin's ``perm_to_axes``).

    ``block`` > 1: every neuron of the space owns ``block`` consecutive entries
    of the axis (see :class:`Axis`).
    """

    parameter: str
    axis: int
    block: int = 1


@dataclass(frozen=True)
class ScaleRule:
    """One factor of a scaling symmetry: multiply (``power=+1``) or divide
    (``power=-1``) ``parameter`` along ``axis`` by the per-neuron factors."""

    parameter: str
    axis: int
    power: int


@dataclass(frozen=True)
class NeuronSpace:
    """A set of neurons that share one permutation.

    Args:
        name: unique name (the module path of the layer that first produces it,
            or ``"input"``).
        size: number of neurons/channels.
        role: ``"input"``, ``"hidden"`` or ``"output"``.
        activation: the nonlinearity first applied to the space's values.
        permutation_blocks: a GroupNorm with ``G`` groups (``1 < G < size``)
            only allows permutations that map each of its ``G`` contiguous
            blocks onto a block; ``1`` means any permutation.
        scale_rules: how to apply a positive per-neuron scaling (empty when the
            space has no scaling symmetry).
        sign_rules: how to apply a per-neuron sign flip (empty when none).
    """

    name: str
    size: int
    role: str
    activation: str = "identity"
    permutation_blocks: int = 1
    scale_rules: tuple[ScaleRule, ...] = ()
    sign_rules: tuple[ScaleRule, ...] = ()

    @property
    def permutable(self) -> bool:
        return self.role == "hidden"

    @property
    def symmetries(self) -> tuple[str, ...]:
        out = []
        if self.permutable:
            out.append("permutation")
            if self.scale_rules:
                out.append("scale")
            if self.sign_rules:
                out.append("sign")
        return tuple(out)


@dataclass(frozen=True)
class ParameterSpec:
    """One state-dict entry.

    Args:
        name: the state-dict key.
        shape: its shape.
        dtype: its dtype name (``"float32"``, ``"int64"`` …).
        axes: for each axis, the :class:`Axis` it indexes or ``None``.
        role: one of :data:`PARAMETER_ROLES`.
        layer: the :class:`LayerSpec` it belongs to (``""`` for unused ones).
        module: the module path that owns it.
        is_buffer: ``True`` for buffers (running statistics …).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[Axis | None, ...]
    role: str
    layer: str
    module: str
    is_buffer: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class LayerInput:
    """An incoming connection of a layer.

    ``kind`` is ``"weight"`` / ``"depthwise"`` (the edges are the values of
    ``parameter``) or ``"residual"`` / ``"norm"`` (identity edges neuron i →
    neuron i carrying the constant ``coefficient``: +1 for an addition, −1 for
    a subtraction).
    """

    source: str
    kind: str
    parameter: str | None = None
    coefficient: float = 1.0


@dataclass(frozen=True)
class LayerSpec:
    """A group of neurons at one place of the computation (a graph node group).

    Args:
        name: unique name: ``"input"`` or the module path of its producer.
        space: the :class:`NeuronSpace` its neurons belong to.
        size: number of neurons (= the space's size).
        role: ``"input"``, ``"hidden"`` or ``"output"`` (the returned values).
        op: what produced it: ``"input"``, ``"linear"``, ``"conv1d"`` …,
            ``"depthwise_conv2d"`` …, or a norm (``"batch_norm"`` …) for a norm
            layer that got its own group.
        depth: number of weight layers on the longest path from the input.
        activation: the nonlinearity first applied to its values.
        norm: the normalisation whose per-neuron parameters sit on it, or
            ``"none"``.
        kernel_size: the producer's kernel shape (``()`` for linear layers).
        spatial: the spatial extent of its values (``()`` for vectors).
        inputs: incoming connections.
    """

    name: str
    space: str
    size: int
    role: str
    op: str
    depth: int
    activation: str = "identity"
    norm: str = "none"
    kernel_size: tuple[int, ...] = ()
    spatial: tuple[int, ...] = ()
    inputs: tuple[LayerInput, ...] = ()


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_jsonable(o) for o in obj]
    return obj


def _tuple(x: Any) -> tuple:
    return tuple(x) if x is not None else ()


def first_non_finite(state_dict: Mapping[str, Tensor],
                     names: Iterable[str] | None = None) -> tuple[str, str] | None:
    """``(key, "NaN" | "infinite")`` of the first floating entry (of ``names``,
    default all) that is not finite, or ``None`` when every value is finite."""
    for key in state_dict if names is None else names:
        value = state_dict[key]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key, "NaN" if bool(torch.isnan(value).any()) else "infinite"
    return None


def check_finite(state_dict: Mapping[str, Tensor], label: str = "state dict",
                 names: Iterable[str] | None = None) -> None:
    """Raise :class:`NonFiniteError` naming the first entry of ``state_dict``
    (of ``names``, default all) that holds NaN or infinite values."""
    bad = first_non_finite(state_dict, names)
    if bad is not None:
        key, kind = bad
        raise NonFiniteError(
            f"{label}[{key!r}] contains {kind} values; the weights must be finite "
            f"(is the checkpoint diverged or corrupted?)")


@dataclass(frozen=True)
class WeightSpaceSpec:
    """The weight-space spec of one architecture.

    Build it with :func:`weightspace.trace`. All tensors it returns are new;
    it never modifies its inputs.

    Args:
        spaces: the neuron spaces, input first.
        parameters: every state-dict entry in the module's own order, which is
            the canonical order of :meth:`flatten`.
        layers: the neuron groups in topological order, input first.
        input_shape: the shape of one input sample (without the batch axis).
        module_type: the traced module's class (informational; not hashed).
    """

    spaces: tuple[NeuronSpace, ...]
    parameters: tuple[ParameterSpec, ...]
    layers: tuple[LayerSpec, ...]
    input_shape: tuple[int, ...]
    module_type: str = field(default="", compare=False)

    # ------------------------------------------------------------------ lookup
    @cached_property
    def _space_index(self) -> dict[str, NeuronSpace]:
        return {s.name: s for s in self.spaces}

    @cached_property
    def _parameter_index(self) -> dict[str, ParameterSpec]:
        return {p.name: p for p in self.parameters}

    @cached_property
    def _layer_index(self) -> dict[str, LayerSpec]:
        return {layer.name: layer for layer in self.layers}

    def space(self, name: str) -> NeuronSpace:
        try:
            return self._space_index[name]
        except KeyError:
            raise SpecError(
                f"no neuron space named {name!r}; the spec has {sorted(self._space_index)}"
            ) from None

    def parameter(self, name: str) -> ParameterSpec:
        try:
            return self._parameter_index[name]
        except KeyError:
            raise SpecError(f"no parameter named {name!r} in the spec") from None

    def layer(self, name: str) -> LayerSpec:
        try:
            return self._layer_index[name]
        except KeyError:
            raise SpecError(f"no layer named {name!r} in the spec") from None

    @property
    def permutable_spaces(self) -> tuple[NeuronSpace, ...]:
        return tuple(s for s in self.spaces if s.permutable)

    @property
    def input_layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for layer in self.layers if layer.role == "input")

    @property
    def output_layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for layer in self.layers if layer.role == "output")

    # ------------------------------------------------------- flat parameter view
    @cached_property
    def offsets(self) -> dict[str, tuple[int, int]]:
        """``name -> (start, end)`` of each parameter in the flat vector."""
        out, start = {}, 0
        for p in self.parameters:
            out[p.name] = (start, start + p.numel)
            start += p.numel
        return out

    @property
    def num_parameters(self) -> int:
        """P, the length of the flat parameter vector (buffers included)."""
        return sum(p.numel for p in self.parameters)

    def split_parameters(self, params: Tensor) -> dict[str, Tensor]:
        """State-dict views ``{name: [B, *shape]}`` of flat parameters.

        Differentiable views in ``params``' dtype (unlike :meth:`unflatten`,
        which copies and casts to each entry's own dtype): what a metanetwork
        or a batched forward pass reads.

        Shapes:
            - params: ``[B, P]``.
            - output: ``{name: [B, *shape]}``.
        """
        if params.dim() != 2 or params.shape[1] != self.num_parameters:
            raise StateDictMismatchError(
                f"expected flat parameters of shape [B, {self.num_parameters}], "
                f"got {list(params.shape)}")
        b = params.shape[0]
        offsets = self.offsets
        return {p.name: params[:, offsets[p.name][0]:offsets[p.name][1]].reshape(b, *p.shape)
                for p in self.parameters}

    def join_parameters(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Inverse of :meth:`split_parameters`.

        Shapes:
            - tensors: ``{name: [B, *shape]}``, every parameter of the spec.
            - output: ``[B, P]``.
        """
        missing = [p.name for p in self.parameters if p.name not in tensors]
        if missing:
            raise StateDictMismatchError(
                f"missing parameter {missing[0]!r} (and {len(missing) - 1} more)")
        if not self.parameters:
            raise StateDictMismatchError("the spec has no parameters to join")
        b = next(iter(tensors.values())).shape[0]
        return torch.cat([tensors[p.name].reshape(b, -1) for p in self.parameters], dim=1)

    # ------------------------------------------------------- axes of a space
    @cached_property
    def _axes_index(self) -> dict[str, tuple[AxisRef, ...]]:
        out: dict[str, list[AxisRef]] = {s.name: [] for s in self.spaces}
        for p in self.parameters:
            for k, a in enumerate(p.axes):
                if a is not None:
                    out[a.space].append(AxisRef(p.name, k, a.block))
        return {name: tuple(refs) for name, refs in out.items()}

    def axes_of(self, space: str) -> tuple[AxisRef, ...]:
        """Every (parameter, axis) that indexes ``space``, in parameter order
        (Git Re-Basin's ``perm_to_axes[space]``). Permuting, scaling or pruning
        the space acts on exactly these axes. Cached.
        """
        try:
            return self._axes_index[space]
        except KeyError:
            raise SpecError(
                f"no neuron space named {space!r}; the spec has {sorted(self._space_index)}"
            ) from None

    @cached_property
    def dtype(self) -> torch.dtype:
        """The flat vector's default dtype: the widest floating dtype of the
        parameters (integer buffers such as ``num_batches_tracked`` are stored
        as floats: exact below 2**24 in float32)."""
        floats = [getattr(torch, p.dtype) for p in self.parameters]
        floats = [d for d in floats if d.is_floating_point]
        if not floats:
            return torch.get_default_dtype()
        out = floats[0]
        for d in floats[1:]:
            out = torch.promote_types(out, d)
        return out

    def check_state_dict(self, state_dict: Mapping[str, Tensor], *, finite: bool = False,
                         label: str = "state dict") -> None:
        """Check that ``state_dict`` is a state dict of this architecture.

        Args:
            state_dict: the mapping to check.
            finite: also require every floating entry to be finite (NaN/Inf
                weights make every cost, merge or score meaningless).
            label: what to call ``state_dict`` in the message (``"state_b"``,
                a file path …).

        Raises:
            StateDictMismatchError: not a mapping of tensors, a missing key, an
                extra key or a wrong shape (the message names the key).
            NonFiniteError: ``finite=True`` and an entry holds NaN or infinite
                values (the message names the entry).
        """
        if not isinstance(state_dict, dict) and not isinstance(state_dict, Mapping):
            # (a dict first: the ABC check costs more than the rest of a small spec's check)
            raise StateDictMismatchError(
                f"{label} must be a state dict (a mapping from parameter names to tensors), "
                f"got {type(state_dict).__name__}")
        expected = self._parameter_index
        for key in expected:
            if key not in state_dict:
                raise StateDictMismatchError(
                    f"{label} is missing {key!r} (shape {list(expected[key].shape)}); "
                    f"is it a checkpoint of a different architecture?"
                )
        for key in state_dict:
            if key not in expected:
                raise StateDictMismatchError(
                    f"{label} has an unexpected key {key!r} that the traced module "
                    f"does not have; is it a checkpoint of a different architecture?"
                )
        for key, p in expected.items():
            value = state_dict[key]
            if not isinstance(value, Tensor):
                raise StateDictMismatchError(
                    f"{label} entry {key!r} is a {type(value).__name__}, not a tensor"
                )
            if tuple(value.shape) != p.shape:
                raise StateDictMismatchError(
                    f"{label} entry {key!r} has shape {list(value.shape)}, "
                    f"the spec expects {list(p.shape)}"
                )
        if finite:
            check_finite(state_dict, label, self._parameter_index)

    def flatten(self, state_dict: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> Tensor:
        """Concatenate the state dict into one 1-D tensor in canonical order.

        Shapes:
            output: ``[P]`` with ``P = spec.num_parameters``.
        """
        self.check_state_dict(state_dict)
        dtype = dtype or self.dtype
        if not self.parameters:
            return torch.zeros(0, dtype=dtype)
        return torch.cat(
            [state_dict[p.name].detach().reshape(-1).to(dtype) for p in self.parameters]
        )

    def flatten_many(
        self, state_dicts: list[Mapping[str, Tensor]], dtype: torch.dtype | None = None
    ) -> Tensor:
        """Stack several state dicts into a ``[N, P]`` matrix."""
        dtype = dtype or self.dtype
        if not state_dicts:
            return torch.zeros(0, self.num_parameters, dtype=dtype)
        return torch.stack([self.flatten(sd, dtype) for sd in state_dicts])

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Inverse of :meth:`flatten`; each entry gets the spec's dtype back.

        Shapes:
            vector: ``[P]``; also accepts ``[N, P]`` and returns ``[N, *shape]``
            entries.
        """
        if vector.shape[-1] != self.num_parameters:
            raise StateDictMismatchError(
                f"flat vector has {vector.shape[-1]} values, the spec has "
                f"{self.num_parameters} parameters"
            )
        lead = tuple(vector.shape[:-1])
        out = {}
        for p in self.parameters:
            start, end = self.offsets[p.name]
            out[p.name] = (
                vector[..., start:end].reshape(lead + p.shape).to(getattr(torch, p.dtype)).clone()
            )
        return out

    # ------------------------------------------------------------- symmetries
    def identity_permutation(self, batch_size: int | None = None):
        """The identity :class:`~weightspace.spec.symmetry.Permutation`
        (``[B, n]`` per space with ``batch_size=B``)."""
        from weightspace.spec.symmetry import identity_permutation

        return identity_permutation(self, batch_size)

    def random_permutation(self, generator: torch.Generator | None = None,
                           batch_size: int | None = None):
        """A random :class:`~weightspace.spec.symmetry.Permutation` of every
        permutable space (one per row with ``batch_size=B``)."""
        from weightspace.spec.symmetry import random_permutation

        return random_permutation(self, generator, batch_size)

    def permute(self, state_dict: Mapping[str, Tensor], perm) -> dict[str, Tensor]:
        """Apply a permutation to a state dict (buffers included)."""
        from weightspace.spec.symmetry import permute

        return permute(self, state_dict, perm)

    def permute_flat(self, params: Tensor, perm) -> Tensor:
        """Apply a permutation to flat vectors ``[P]`` / ``[N, P]`` (or a batch
        of permutations to ``[B, P]``, row by row) in one gather."""
        from weightspace.spec.symmetry import permute_flat

        return permute_flat(self, params, perm)

    def random_scaling(self, generator: torch.Generator | None = None, low: float = 0.5,
                       high: float = 2.0, batch_size: int | None = None):
        """Random positive per-neuron factors for the spaces with a scaling symmetry."""
        from weightspace.spec.symmetry import random_scaling

        return random_scaling(self, generator, low, high, batch_size)

    def random_sign_flip(self, generator: torch.Generator | None = None, p: float = 0.5,
                         batch_size: int | None = None):
        """Random ``±1`` per-neuron factors for the spaces with a sign symmetry."""
        from weightspace.spec.symmetry import random_sign_flip

        return random_sign_flip(self, generator, p, batch_size)

    def rescale(self, state_dict: Mapping[str, Tensor], scaling) -> dict[str, Tensor]:
        """Apply a :class:`~weightspace.spec.symmetry.NeuronScaling`."""
        from weightspace.spec.symmetry import rescale

        return rescale(self, state_dict, scaling)

    def rescale_flat(self, params: Tensor, scaling) -> Tensor:
        """Apply a (single or batched) scaling to flat vectors."""
        from weightspace.spec.symmetry import rescale_flat

        return rescale_flat(self, params, scaling)

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WeightSpaceSpec:
        def axis(a):
            return None if a is None else Axis(a["space"], a["block"])

        def rules(rs):
            return tuple(ScaleRule(r["parameter"], r["axis"], r["power"]) for r in rs)

        try:
            spaces = tuple(
                NeuronSpace(
                    name=s["name"],
                    size=s["size"],
                    role=s["role"],
                    activation=s["activation"],
                    permutation_blocks=s["permutation_blocks"],
                    scale_rules=rules(s["scale_rules"]),
                    sign_rules=rules(s["sign_rules"]),
                )
                for s in d["spaces"]
            )
            parameters = tuple(
                ParameterSpec(
                    name=p["name"],
                    shape=_tuple(p["shape"]),
                    dtype=p["dtype"],
                    axes=tuple(axis(a) for a in p["axes"]),
                    role=p["role"],
                    layer=p["layer"],
                    module=p["module"],
                    is_buffer=p["is_buffer"],
                )
                for p in d["parameters"]
            )
            layers = tuple(
                LayerSpec(
                    name=layer["name"],
                    space=layer["space"],
                    size=layer["size"],
                    role=layer["role"],
                    op=layer["op"],
                    depth=layer["depth"],
                    activation=layer["activation"],
                    norm=layer["norm"],
                    kernel_size=_tuple(layer["kernel_size"]),
                    spatial=_tuple(layer["spatial"]),
                    inputs=tuple(
                        LayerInput(i["source"], i["kind"], i["parameter"], i["coefficient"])
                        for i in layer["inputs"]
                    ),
                )
                for layer in d["layers"]
            )
        except (KeyError, TypeError) as err:
            raise SpecError(f"not a valid weight-space spec: missing or bad field {err}") from err
        return cls(spaces, parameters, layers, _tuple(d["input_shape"]), d.get("module_type", ""))

    @classmethod
    def from_json(cls, text: str) -> WeightSpaceSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"not a valid weight-space spec JSON: {err}") from err
        return cls.from_dict(d)

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON (without ``module_type``): equal
        architectures — same layers, names, shapes and dtypes — give equal
        hashes."""
        d = self.to_dict()
        d.pop("module_type", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def __hash__(self) -> int:
        return hash(self.hash)

    # ------------------------------------------------------------- pretty text
    def summary(self) -> str:
        """A human-readable table of spaces, layers and parameters."""
        lines = [f"WeightSpaceSpec of {self.module_type or 'a module'}  "
                 f"(input shape {list(self.input_shape)}, {self.num_parameters} values, "
                 f"hash {self.hash[:12]})", "", "spaces:"]
        for s in self.spaces:
            sym = ", ".join(s.symmetries) or "none"
            extra = f", blocks={s.permutation_blocks}" if s.permutation_blocks > 1 else ""
            lines.append(f"  {s.name:<32} size {s.size:<6} {s.role:<7} act {s.activation:<10} "
                         f"symmetries: {sym}{extra}")
        lines += ["", "layers:"]
        for layer in self.layers:
            ins = ", ".join(f"{i.kind}:{i.source}" for i in layer.inputs) or "-"
            lines.append(f"  {layer.name:<32} {layer.op:<18} {layer.size:<6} space {layer.space:<24} "
                         f"depth {layer.depth}  <- {ins}")
        lines += ["", "parameters:"]
        for p in self.parameters:
            axes = ", ".join(
                "-" if a is None else (a.space if a.block == 1 else f"{a.space}x{a.block}")
                for a in p.axes
            )
            lines.append(f"  {p.name:<40} {str(list(p.shape)):<20} {p.role:<17} [{axes}]")
        return "\n".join(lines)
