"""DWSNet: the linear layers equivariant to the hidden-neuron permutations of an MLP.

Reference: Navon, Shamsian, Achituve, Fetaya, Chechik and Maron, "Equivariant
Architectures for Learning in Deep Weight Spaces", ICML 2023.

The input network is an MLP with weight layers ``m = 1 … M`` between neuron
spaces ``d_0 … d_M``: weights ``W_m`` (``d_{m-1} x d_m``) and biases ``b_m``
(``d_m``). Its symmetry group is ``S_{d_1} x … x S_{d_{M-1}}``: every hidden
space is permuted freely, the input (``d_0``) and output (``d_M``) neurons
are fixed. A DWS layer is a linear map from the weight space (``C_in``
channels per entry) to itself (``C_out`` channels) that commutes with that
group; DWSNet stacks them with ReLUs. Any depth ``M >= 1`` works (``M = 1``,
a single linear layer, has no hidden space: every term is then dense).

Which terms one layer has
-------------------------
A linear map is equivariant iff its coefficient between an output entry and
an input entry depends only on the orbit of the pair of index tuples. For
each hidden space shared by an output entry and an input entry the two
indices are either tied (equal) or not; indices of a hidden space only one
side has are pooled (input) or broadcast (output); the indices of the fixed
input/output spaces are individual orbits and get their own coefficients. The
span of the orbit indicators equals the span of the "these indices are equal,
the rest are free" maps, which is what is implemented: for an output tensor
``Y`` and an input tensor ``X`` (both any of the ``W_m`` / ``b_m``) and every
set ``T`` of hidden spaces shared by ``X`` and ``Y``, the term

    mean over ``X``'s hidden axes not in ``T``  ->  a dense linear map over
    (fixed-axis values x channels)  ->  broadcast over ``Y``'s hidden axes not in ``T``.

This gives the full basis of the paper's layer (every block of its
characterisation, with the fixed input/output dimensions), e.g. for
hidden ``W_m -> W_m``: 4 terms (identity, row pooling, column pooling, all
pooling: the reference code's ``SetKroneckerSetLayer``); ``W_m -> W_{m+1}`` and ``W_m -> b_m``:
2 terms (tied on the shared space or fully pooled); ``W_m -> W_n`` with no
shared space: 1 term (pool all, broadcast all). The fixed-index terms are the
dense maps over the values of the fixed axes: ``W_1``'s input axis (``d_0``)
and ``W_M`` / ``b_M``'s output axis (``d_M``) are folded into the channel
dimension, so e.g. ``W_1 -> W_1`` has a separate ``C_out x C_in`` matrix for
every pair of input neurons ``(i, i')``, as in the reference implementation.
Every pair of tensors, adjacent or not, interacts (per-pair parameters). One
bias per output tensor (constant over its hidden axes, free over its fixed
axes) completes the affine layer.

Pooling is a mean rather than the sum of the orbit basis: on one architecture
the sizes are constants, so the span is the same and the scale of the features
does not grow with the width. The parameter count of a fixed-index term grows
as ``(d_0 C)^2`` (``(d_M C)^2``): fine for INRs (``d_0 = 2``) and small
classifiers, heavy for MLPs on raw pixels.

Efficiency: all terms of one output tensor that keep the same hidden axes
``T`` are one ``nn.Linear`` on the concatenation of the pooled inputs, so a
layer is at most 4 matmuls per weight and 2 per bias, vectorised over the
batch; the only Python loops are over the tensors.

Feature layout
--------------
The features of a layer are a
:class:`~weightspace.nn.features.WeightSpaceFeatures` (the container NFN uses
too): one tensor per weight and per bias, iterated ``W_1, b_1, …, W_M, b_M``.
Every tensor is carried as ``[B, *hidden axes, F]`` with the hidden
axes in the parameter's own axis order and ``F = (product of the fixed axes'
sizes) * C`` (fixed axes first, channel last, row-major). For the usual
``d_0 -> … -> d_M`` MLP with torch's ``[out, in]`` weights:

* hidden ``W_m`` (``1 < m < M``): ``[B, d_m, d_{m-1}, C]``;
* ``W_1``: ``[B, d_1, d_0 * C]``; ``W_M``: ``[B, d_{M-1}, d_M * C]``;
* hidden ``b_m``: ``[B, d_m, C]``; ``b_M``: ``[B, d_M * C]`` (no hidden axis).

:meth:`MLPWeightSpace.to_features` (flat ``[B, P]``),
:meth:`MLPWeightSpace.entries_to_features` / :meth:`MLPWeightSpace.from_features`
(``{name: [B, *shape, C]}``) convert to and from this layout. A network without
biases gets zero bias features (zero is invariant) and its equivariant output
simply has no bias entries.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from weightspace.errors import WeightspaceError
from weightspace.graph import GraphTemplate
from weightspace.nn.base import (
    FlatMetanetwork,
    check_head,
    flat_parameters,
)
from weightspace.nn.features import WeightSpaceFeatures
from weightspace.nn.flat_mlp import make_mlp
from weightspace.spec import WeightSpaceSpec

_SUPPORTED = ("DWSNet supports plain MLPs only: a chain of linear layers (op 'linear'), each reading the "
              "previous one through its weight, with optional biases and no norms, convolutions or "
              "residual connections")


def _unsupported(detail: str) -> WeightspaceError:
    """The error for a spec that is not a plain MLP, ``detail`` naming the
    layer or parameter at fault."""
    return WeightspaceError(f"{_SUPPORTED}; {detail}", parameter="spec")


@dataclass(frozen=True)
class MLPTensor:
    """One tensor of the MLP's weight space (a weight or bias entry) and how
    its axes split into hidden (permutable) and fixed ones.

    Args:
        name: the state-dict key (for a missing bias, the would-be key
            ``"<layer>.<bias>"``; see ``parameter``).
        parameter: the spec entry it comes from, or ``None`` for the bias of a
            layer without one (always-zero features, no output).
        shape: the entry's shape (torch layout, e.g. ``[out, in]``).
        spaces: the neuron space of every axis.
        hidden: the axes over permutable (hidden) spaces, in axis order.
        fixed: the other axes (input/output neurons), in axis order.
    """

    name: str
    parameter: str | None
    shape: tuple[int, ...]
    spaces: tuple[str, ...]
    hidden: tuple[int, ...]
    fixed: tuple[int, ...]

    @property
    def hidden_spaces(self) -> tuple[str, ...]:
        return tuple(self.spaces[a] for a in self.hidden)

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.hidden)

    @property
    def fixed_size(self) -> int:
        """Number of fixed-index positions folded into the feature axis."""
        return math.prod(self.shape[a] for a in self.fixed)


@dataclass(frozen=True)
class MLPWeightSpace:
    """The weight space of an MLP read from its spec: the chain of layers and
    the tensors ``W_1, b_1, …, W_M, b_M`` with their neuron spaces.

    Build it with :meth:`from_spec`, which raises :class:`WeightspaceError` for
    anything that is not a plain MLP.

    Args:
        spec: the traced architecture.
        layers: the weight layers' names, input to output.
        tensors: ``W_1, b_1, W_2, b_2, …`` (a bias entry even for layers
            without one, see :class:`MLPTensor`).
    """

    spec: WeightSpaceSpec
    layers: tuple[str, ...]
    tensors: tuple[MLPTensor, ...]

    @classmethod
    def from_spec(cls, spec: WeightSpaceSpec) -> MLPWeightSpace:
        layers = _chain(spec)
        tensors: list[MLPTensor] = []
        for name in layers:
            layer = spec.layer(name)
            source = spec.layer(layer.inputs[0].source)
            weight = spec.parameter(layer.inputs[0].parameter)
            expected = (layer.space, source.space)
            if (weight.role != "weight" or len(weight.axes) != 2
                    or any(a is None or a.block != 1 for a in weight.axes)
                    or tuple(a.space for a in weight.axes) != expected):
                raise _unsupported(f"the weight {weight.name!r} of layer {name!r} is not an "
                                   f"[out, in] matrix between spaces {list(expected)} "
                                   f"(axes {list(weight.axes)})")
            tensors.append(_tensor(spec, weight.name, weight.name, weight.shape, expected))
            biases = [p for p in spec.parameters if p.layer == name and p.role == "bias"]
            if len(biases) > 1:
                raise _unsupported(f"layer {name!r} has several biases "
                                   f"{[p.name for p in biases]}")
            if biases:
                bias = biases[0]
                if len(bias.axes) != 1 or bias.axes[0] is None or bias.axes[0].space != layer.space \
                        or bias.axes[0].block != 1:
                    raise _unsupported(f"the bias {bias.name!r} of layer {name!r} is not a "
                                       f"vector over space {layer.space!r}")
                tensors.append(_tensor(spec, bias.name, bias.name, bias.shape, (layer.space,)))
            else:
                tensors.append(_tensor(spec, f"{name}.bias", None, (layer.size,), (layer.space,)))
        used = {t.parameter for t in tensors}
        for p in spec.parameters:
            if p.name not in used:
                raise _unsupported(f"parameter {p.name!r} (role {p.role!r}, layer "
                                   f"{p.layer or '-'!r}) is neither a linear weight nor a bias of the chain")
        return cls(spec, layers, tuple(tensors))

    @property
    def num_layers(self) -> int:
        """M, the number of weight layers."""
        return len(self.layers)

    def to_features(self, params: Tensor) -> WeightSpaceFeatures:
        """Flat parameters to the one-channel feature layout (module docstring);
        a missing bias gives zeros.

        Shapes:
            params: ``[B, P]``
            output: one ``[B, *hidden sizes, fixed_size]`` per tensor
        """
        entries = self.spec.split_parameters(params)
        b = params.shape[0]
        full = {t.name: entries[t.parameter].unsqueeze(-1) if t.parameter is not None
                else params.new_zeros(b, *t.shape, 1) for t in self.tensors}
        return self.entries_to_features(full)

    def entries_to_features(self, entries: dict[str, Tensor]) -> WeightSpaceFeatures:
        """``{name: [B, *shape, C]}`` (every tensor, missing biases included)
        to the feature layout ``[B, *hidden sizes, fixed_size * C]``."""
        out = []
        for t in self.tensors:
            x = entries[t.name]
            x = x.permute(0, *(1 + a for a in t.hidden), *(1 + a for a in t.fixed), x.dim() - 1)
            out.append(x.reshape(x.shape[0], *t.hidden_sizes, -1))
        # self.tensors alternates weight and bias, layer by layer
        return WeightSpaceFeatures.from_layers(out)

    def from_features(self, features: WeightSpaceFeatures) -> dict[str, Tensor]:
        """Inverse of :meth:`entries_to_features`: ``{name: [B, *shape, C]}``."""
        out = {}
        for t, x in zip(self.tensors, features, strict=True):
            fixed_shape = tuple(t.shape[a] for a in t.fixed)
            channels = x.shape[-1] // t.fixed_size
            x = x.reshape(x.shape[0], *t.hidden_sizes, *fixed_shape, channels)
            order = (*t.hidden, *t.fixed)
            inverse = [1 + order.index(a) for a in range(len(t.shape))]
            out[t.name] = x.permute(0, *inverse, x.dim() - 1)
        return out

    def to_parameters(self, features: WeightSpaceFeatures) -> Tensor:
        """One-channel features to flat ``[B, P]`` parameters (missing biases dropped)."""
        entries = self.from_features(features)
        return self.spec.join_parameters({t.parameter: entries[t.name].squeeze(-1)
                                           for t in self.tensors if t.parameter is not None})


def _tensor(spec: WeightSpaceSpec, name: str, parameter: str | None, shape: tuple[int, ...],
            spaces: tuple[str, ...]) -> MLPTensor:
    hidden = tuple(a for a, s in enumerate(spaces) if spec.space(s).permutable)
    fixed = tuple(a for a, s in enumerate(spaces) if not spec.space(s).permutable)
    return MLPTensor(name, parameter, tuple(shape), tuple(spaces), hidden, fixed)


def _chain(spec: WeightSpaceSpec) -> tuple[str, ...]:
    """The weight layers of an MLP, input to output, or a WeightspaceError naming
    the first layer that breaks the chain."""
    inputs = spec.input_layers
    if len(inputs) != 1:
        raise _unsupported(f"the spec has {len(inputs)} input layers "
                           f"{[layer.name for layer in inputs]}")
    for layer in spec.layers:
        if layer.role == "input":
            continue
        if layer.op != "linear":
            raise _unsupported(f"layer {layer.name!r} is a {layer.op!r} layer")
        if layer.norm != "none":
            raise _unsupported(f"layer {layer.name!r} carries a {layer.norm!r} normalisation")
        kinds = [i.kind for i in layer.inputs]
        if kinds != ["weight"]:
            raise _unsupported(f"layer {layer.name!r} has inputs {kinds} "
                               f"(a residual connection?) instead of one weight")
    consumers: dict[str, list[str]] = {layer.name: [] for layer in spec.layers}
    for layer in spec.layers:
        for i in layer.inputs:
            consumers[i.source].append(layer.name)
    chain = []
    current = inputs[0].name
    seen_spaces = {inputs[0].space}
    while consumers[current]:
        if len(consumers[current]) > 1:
            raise _unsupported(f"layer {current!r} feeds several layers {consumers[current]}")
        current = consumers[current][0]
        layer = spec.layer(current)
        if layer.space in seen_spaces:
            raise _unsupported(f"layer {current!r} shares its neuron space {layer.space!r} "
                               "with an earlier layer (a residual stream?)")
        seen_spaces.add(layer.space)
        chain.append(current)
    if len(chain) != len(spec.layers) - 1:
        missing = [layer.name for layer in spec.layers[1:] if layer.name not in chain]
        raise _unsupported(f"layers {missing} are not on the chain from the input")
    if not chain:
        raise _unsupported("the spec has no linear layer")
    if spec.layer(chain[-1]).role != "output":
        raise _unsupported(f"the last layer {chain[-1]!r} is not the network's output")
    return tuple(chain)


class DWSLayer(nn.Module):
    r"""One DWS layer: the affine map on the weight space of an MLP that is
    equivariant to every permutation of its hidden neurons (Navon et al.
    2023), with all the terms listed in the module docstring.

    Args:
        space: the MLP's :class:`MLPWeightSpace`.
        in_channels: ``C_in``.
        out_channels: ``C_out``.

    Shapes:
        - input: :class:`WeightSpaceFeatures` with one
          ``[B, *hidden sizes, fixed_size * C_in]`` per tensor of ``space``
          (the layout of :meth:`MLPWeightSpace.to_features`)
        - output: the same with ``C_out``
    """

    def __init__(self, space: MLPWeightSpace, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.space = space
        self.in_channels = in_channels
        self.out_channels = out_channels
        tensors = space.tensors
        # _plan[y] = [(kept hidden spaces T, the tensors that have all of T), ...], one
        # nn.Linear in self.maps per entry, in the same order
        self._plan: list[list[tuple[tuple[str, ...], tuple[int, ...]]]] = []
        self.maps = nn.ModuleList()
        for y in tensors:
            terms = []
            for r in range(len(y.hidden_spaces) + 1):
                for kept in itertools.combinations(y.hidden_spaces, r):
                    sources = tuple(n for n, x in enumerate(tensors) if set(kept) <= set(x.hidden_spaces))
                    fan_in = sum(tensors[n].fixed_size for n in sources) * in_channels
                    # the one bias of the output tensor sits in its fully pooled term
                    self.maps.append(nn.Linear(fan_in, y.fixed_size * out_channels, bias=not kept))
                    terms.append((kept, sources))
            self._plan.append(terms)

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        tensors = self.space.tensors
        features = list(features)  # W_1, b_1, W_2 ... like self.space.tensors
        if len(features) != len(tensors):
            raise WeightspaceError(f"expected {len(tensors)} feature tensors (a weight and a bias "
                                   f"for each of {self.space.num_layers} layers), got "
                                   f"{len(features)}", parameter="features")
        pooled: dict[tuple[int, tuple[str, ...]], Tensor] = {}

        def pool(n: int, kept: tuple[str, ...]) -> Tensor:
            """Tensor ``n`` averaged over its hidden axes outside ``kept``, the
            kept axes in ``kept``'s order: ``[B, *kept sizes, F]``."""
            key = (n, kept)
            if key not in pooled:
                own = tensors[n].hidden_spaces
                x = features[n]
                drop = [1 + i for i, s in enumerate(own) if s not in kept]
                if drop:
                    x = x.mean(dim=drop)
                remaining = [s for s in own if s in kept]
                if remaining != list(kept):
                    x = x.permute(0, *(1 + remaining.index(s) for s in kept), x.dim() - 1)
                pooled[key] = x
            return pooled[key]

        out = []
        maps = iter(self.maps)
        for y, terms in zip(tensors, self._plan, strict=True):
            total = None
            sizes = dict(zip(y.hidden_spaces, y.hidden_sizes, strict=True))
            for kept, sources in terms:
                linear = next(maps)
                inputs = [pool(n, kept) for n in sources]
                term = linear(torch.cat(inputs, dim=-1) if len(inputs) > 1 else inputs[0])
                # broadcast over the output's hidden axes that are not kept
                view = [term.shape[0]] + [sizes[s] if s in kept else 1 for s in y.hidden_spaces]
                term = term.reshape(*view, term.shape[-1])
                total = term if total is None else total + term
            out.append(total.expand(total.shape[0], *y.hidden_sizes, total.shape[-1]))
        return WeightSpaceFeatures.from_layers(out)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, tensors={len(self.space.tensors)}"


class DWSNet(FlatMetanetwork):
    r"""DWSNet (Navon et al., ICML 2023) on the flat parameters of an MLP.

    ``num_layers`` :class:`DWSLayer` s (``1 -> hidden_channels -> …``) with
    ReLU and dropout between them; then

    * ``head="invariant"``: every tensor is averaged over its hidden axes (its
      fixed input/output axes stay, folded into the features), the results
      are concatenated and a 2-layer MLP gives ``[B, out_dim]``;
    * ``head="equivariant"``: the last DWS layer has 1 channel; its output,
      in units of each tensor's fitted standard deviation, is added to the
      input parameters (``residual=True``, default; that layer starts at
      zero, so an untrained head is the identity map) or is the new
      parameters (``residual=False``): flat parameters ``[B, P]`` of a
      network of the same architecture (``out_dim`` is unused).

    The inputs are standardised per tensor by the buffers ``entry_mean`` /
    ``entry_std`` (one scalar per tensor, so the symmetry is kept); they are
    the identity until :meth:`fit_normalisation` sets them from data.

    Args:
        template: the input MLP's template (only its spec is read). Anything
            other than a chain of linear layers (conv, norms, residual
            connections) raises :class:`WeightspaceError` naming the layer.
        out_dim: width of the invariant head's output.
        hidden_channels: channels of the hidden DWS layers.
        num_layers: number of DWS layers (at least 1).
        head: ``"invariant"`` or ``"equivariant"``.
        dropout: dropout after every hidden ReLU (and in the invariant MLP).
        residual: the equivariant head outputs the input plus a change
            (starting at zero), not new parameters.

    Example::

        >>> spec = weightspace.trace(SIREN(), torch.zeros(1, 2))
        >>> model = DWSNet(GraphTemplate.for_spec(spec), out_dim=10)
        >>> logits = model(params)                   # params: [B, 1185]

    Shapes:
        - input: ``[B, P]`` flat parameters, or a PyG ``Batch`` of ``B`` graphs
          of ``template``'s architecture
        - output: ``[B, out_dim]`` (invariant head) or ``[B, P]`` (equivariant head)
    """

    def __init__(self, template: GraphTemplate, out_dim: int, *, hidden_channels: int = 16,
                 num_layers: int = 4, head: str = "invariant", dropout: float = 0.0,
                 residual: bool = True) -> None:
        super().__init__(template)
        self.head = check_head(head, model="DWSNet")
        if num_layers < 1:
            raise WeightspaceError(f"num_layers must be at least 1, got {num_layers}",
                                   parameter="num_layers")
        if hidden_channels < 1:
            raise WeightspaceError(f"hidden_channels must be at least 1, got {hidden_channels}",
                                   parameter="hidden_channels")
        if not 0.0 <= dropout < 1.0:
            raise WeightspaceError(f"dropout must be in [0, 1), got {dropout}", parameter="dropout")
        self.weight_space = MLPWeightSpace.from_spec(self.spec)
        widths = [1] + [hidden_channels] * num_layers
        if head == "equivariant":
            widths[-1] = 1
        self.layers = nn.ModuleList(DWSLayer(self.weight_space, a, b)
                                    for a, b in itertools.pairwise(widths))
        self.residual = residual and head == "equivariant"
        if self.residual:
            for parameter in self.layers[-1].parameters():
                nn.init.zeros_(parameter)
        self.dropout = nn.Dropout(dropout)
        num_tensors = len(self.weight_space.tensors)
        self.register_buffer("entry_mean", torch.zeros(num_tensors))
        self.register_buffer("entry_std", torch.ones(num_tensors))
        if head == "invariant":
            pooled = sum(t.fixed_size for t in self.weight_space.tensors) * hidden_channels
            self.readout = make_mlp(pooled, max(pooled, hidden_channels), out_dim, 2, dropout)

    def features(self, inputs: Tensor | Data) -> WeightSpaceFeatures:
        """The standardised one-channel input features (:class:`MLPWeightSpace` layout)."""
        feats = list(self.weight_space.to_features(self.parameters_of(inputs)))
        dtype = feats[0].dtype
        return WeightSpaceFeatures.from_layers(
            [(x - m) / s for x, m, s in zip(feats, self.entry_mean.to(dtype),
                                            self.entry_std.to(dtype), strict=True)])

    @torch.no_grad()
    def fit_normalisation(self, params_or_batch: Tensor | Data, eps: float = 1e-8) -> DWSNet:
        """Set ``entry_mean`` / ``entry_std`` to each tensor's mean and standard
        deviation over all its entries of the given networks (a tensor that is
        constant, or a missing bias, gets std 1). Returns ``self``.

        Shapes:
            params_or_batch: ``[B, P]`` or a ``Batch`` of ``B`` graphs
        """
        params = flat_parameters(params_or_batch, self.template).to(torch.float64)
        for i, x in enumerate(self.weight_space.to_features(params)):
            std = x.std(correction=0) if x.numel() > 1 else x.new_zeros(())
            self.entry_mean[i] = x.mean()
            self.entry_std[i] = std if std > eps else 1.0
        return self

    def forward(self, inputs: Tensor | Data) -> Tensor:
        x = self.features(inputs)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.map(lambda t: self.dropout(torch.relu(t)))
        if self.head == "equivariant":
            if not self.residual:
                return self.weight_space.to_parameters(x)
            std = self.entry_std.to(x.weights[0].dtype)
            change = self.weight_space.to_parameters(
                WeightSpaceFeatures.from_layers([t * std[i] for i, t in enumerate(x)]))
            return self.parameters_of(inputs).to(change.dtype) + change
        x = [torch.relu(t) for t in x]
        pooled = [t.mean(dim=tuple(range(1, t.dim() - 1))) if t.dim() > 2 else t for t in x]
        return self.readout(torch.cat(pooled, dim=-1))


__all__ = ["DWSLayer", "DWSNet", "MLPTensor", "MLPWeightSpace"]
