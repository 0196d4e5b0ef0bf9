r"""Neural Functional Networks (NFN): permutation-equivariant linear layers
that act directly on the weights and biases of a feed-forward network.

Reference: Zhou et al. 2023, "Permutation Equivariant Neural Functionals"
(NeurIPS 2023), https://github.com/AllanYangZhou/nfn.

**Weight-space features.** A plain chain of ``L`` weight layers (linear or
convolution) maps neuron spaces :math:`S_0 \to S_1 \to \dots \to S_L`
(:math:`S_0` the input, :math:`S_L` the output). Its weight-space features
with ``C`` channels are, for every layer ``i``,

* ``weights[i]``: ``[B, C, n_{i+1}, n_i, *kernel_i]``
* ``biases[i]``: ``[B, C, n_{i+1}]``

(:class:`~weightspace.nn.features.WeightSpaceFeatures`, the container DWSNet
uses too; a network's own parameters are the features with ``C = 1``). Kernel
axes are never permuted, so every layer of this module carries them as extra
channels, as NFN does: a 3x3 conv weight has ``9 C`` channels per (out, in)
pair.

**Which neurons are permutable.** The *HNP* layers (hidden neuron
permutation) treat only hidden neurons as exchangeable; the input and output
neurons of the chain keep their identity, so their indices are folded into the
channels as well (the first weight is a set of rows of ``n_0`` values, the
last bias one vector). The *NP* layers (neuron permutation) also treat input
and output neurons as exchangeable: fewer parameters, independent of every
width, and a strictly stronger symmetry than the hidden-neuron permutations
of :meth:`WeightSpaceSpec.random_permutation`.

**The equivariant linear map.** Given which spaces are permutable, every
feature tensor is indexed by a set of permutable spaces (at most two, always
distinct). For an input tensor over spaces :math:`A` and an output tensor over
spaces :math:`B`, the linear maps that commute with independent permutations of
every space are spanned by: for each space in :math:`A \cap B`, either keep its
index or average it out and broadcast it back; average out :math:`A \setminus B`;
broadcast over :math:`B \setminus A`. :class:`NPLinear` / :class:`HNPLinear`
use exactly this basis, with one learned channel matrix per term (one for
every "kept" set ``K`` of spaces). For NP this is the NP layer of the paper
(pointwise, row-, column- and globally pooled terms, coupling each layer to
its neighbours); for HNP it is the HNP layer, where the fixed input/output
indices become channels.

**Supported architectures.** Chains of ``Linear`` / ``Conv1d/2d/3d`` layers
read one after another, with any elementwise activations, pooling and
flattening in between. A conv→flatten→linear step (the linear layer's input
axis is ``Axis(space, block=H*W)`` in the spec) is supported: the ``H*W``
positions each channel owns become the "kernel" of that edge, i.e. extra
channels like a conv kernel, because a permutation moves them together. Norm
layers, residual connections, depthwise convolutions and any branching raise
a :class:`~weightspace.errors.WeightspaceError` naming the layer (use a graph
metanetwork for those).
Layers without a bias get an all-zero bias feature (the invariant head sees
zeros; the equivariant head drops it again).

**Cost.** The NP layer's parameters do not depend on any width. The HNP layer's
first- and last-layer terms grow with ``(n_0 C)^2`` and ``(n_L C)^2`` (as in the
reference implementation); for wide inputs (e.g. 784 pixels) prefer NP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.data import Data

from weightspace.errors import WeightspaceError
from weightspace.graph import GraphTemplate
from weightspace.nn.base import (
    FlatMetanetwork,
    check_head,
    flat_parameters,
)
from weightspace.nn.features import WeightSpaceFeatures
from weightspace.spec import WeightSpaceSpec

MODES = ("hnp", "np")
POOLINGS = ("mean", "sum", "max")
_WEIGHT_OPS = ("linear", "conv1d", "conv2d", "conv3d")


# --------------------------------------------------------------------------- the layer chain
@dataclass(frozen=True)
class ChainLayer:
    """One weight layer of a :class:`LayerChain`.

    Args:
        name: the spec's layer name (the module path).
        weight: state-dict key of its weight.
        bias: state-dict key of its bias, or ``None``.
        n_out: neurons it produces (space ``i + 1`` of the chain).
        n_in: neurons it reads (space ``i``).
        kernel: the non-permuted trailing axes of one (out, in) edge: the conv
            kernel, ``(H*W,)`` after a conv→linear flatten, ``()`` otherwise.
    """

    name: str
    weight: str
    bias: str | None
    n_out: int
    n_in: int
    kernel: tuple[int, ...]


@dataclass(frozen=True)
class LayerChain:
    """The weight layers of a plain feed-forward network, in order, read from
    a :class:`~weightspace.WeightSpaceSpec`.

    Build it with :meth:`from_spec`, which raises a :class:`WeightspaceError` naming
    the first layer or parameter that is not part of a simple chain.

    Attributes:
        layers: the ``L`` weight layers, input side first.
        spaces: the names of the ``L + 1`` neuron spaces ``S_0, ..., S_L`` in the spec.
        sizes: ``(n_0, ..., n_L)``, their sizes.
    """

    spec: WeightSpaceSpec
    layers: tuple[ChainLayer, ...]
    spaces: tuple[str, ...]
    sizes: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.layers)

    @classmethod
    def from_spec(cls, spec: WeightSpaceSpec) -> LayerChain:
        inputs = spec.input_layers
        if len(inputs) != 1:
            raise WeightspaceError(f"NFN needs a network with one input, this one has {len(inputs)} "
                                   f"({[layer.name for layer in inputs]})", parameter="spec")
        previous = inputs[0]
        chain_layers: list = []
        # structure first (residuals, branches, norm layers of their own), so that a ResNet is
        # reported as a residual network rather than by its first BatchNorm
        for layer in spec.layers:
            if layer.role == "input":
                continue
            where = f"layer {layer.name!r} ({layer.op})"
            kinds = [i.kind for i in layer.inputs]
            if "residual" in kinds:
                raise WeightspaceError(f"NFN supports plain chains of linear/conv layers; {where} has a "
                                       f"residual connection. Use a graph metanetwork (e.g. GMN) for "
                                       f"residual networks.", parameter="spec")
            if "norm" in kinds or layer.op not in _WEIGHT_OPS:
                raise WeightspaceError(f"NFN supports plain chains of linear/conv layers without "
                                       f"normalisation; {where} is not a linear or conv layer "
                                       f"(inputs: {kinds}). Use a graph metanetwork for this architecture.",
                                       parameter="spec")
            if kinds != ["weight"]:
                raise WeightspaceError(f"NFN supports plain chains of linear/conv layers; {where} has "
                                       f"inputs {kinds} instead of one weight input",
                                       parameter="spec")
            source = layer.inputs[0].source
            if source != previous.name:
                raise WeightspaceError(f"NFN supports plain chains of linear/conv layers; {where} reads "
                                       f"{source!r} instead of the previous layer {previous.name!r} "
                                       f"(branching networks are not supported)", parameter="spec")
            chain_layers.append((layer, previous))
            previous = layer
        if not chain_layers:
            raise WeightspaceError("NFN needs at least one linear or conv layer; the spec has none",
                                   parameter="spec")

        spaces = [spec.space(chain_layers[0][1].space)] + [spec.space(lay.space) for lay, _ in chain_layers]
        if len({s.name for s in spaces}) != len(spaces):
            raise WeightspaceError("NFN needs every layer of the chain to produce its own neuron space; "
                                   "tied spaces (residual streams) are not supported",
                                   parameter="spec")
        if chain_layers[-1][0].role != "output":
            raise WeightspaceError(f"NFN needs the last layer of the chain to be the network's output; "
                                   f"{chain_layers[-1][0].name!r} is {chain_layers[-1][0].role}",
                                   parameter="spec")

        biases: dict[str, str] = {}
        used: set[str] = set()
        for p in spec.parameters:
            if p.role == "bias":
                if p.layer in biases:
                    raise WeightspaceError(f"layer {p.layer!r} has two biases ({biases[p.layer]!r} and "
                                           f"{p.name!r}); NFN expects at most one",
                                           parameter="spec")
                biases[p.layer] = p.name
            elif p.role != "weight":
                owner = spec.layer(p.layer) if p.layer in {lay.name for lay in spec.layers} else None
                norm = f" (a {owner.norm} norm)" if owner is not None and owner.norm != "none" else ""
                raise WeightspaceError(f"NFN supports only weights and biases of linear/conv layers; "
                                       f"parameter {p.name!r} of layer {p.layer!r}{norm} has role "
                                       f"{p.role!r} (norm layers and extra buffers are not supported)",
                                       parameter="spec")

        out: list[ChainLayer] = []
        for layer, source in chain_layers:
            weight = spec.parameter(layer.inputs[0].parameter)
            out_axis, in_axis, *kernel_axes = weight.axes
            if (out_axis is None or out_axis.space != layer.space or out_axis.block != 1
                    or in_axis is None or in_axis.space != source.space
                    or any(a is not None for a in kernel_axes)):
                raise WeightspaceError(f"weight {weight.name!r} of layer {layer.name!r} does not have the "
                                       f"[out, in, *kernel] layout NFN expects (axes {weight.axes})",
                                       parameter="spec")
            kernel = ((in_axis.block,) if in_axis.block > 1 else ()) + tuple(weight.shape[2:])
            bias = biases.get(layer.name)
            if bias is not None:
                b = spec.parameter(bias)
                if b.axes != (out_axis,):
                    raise WeightspaceError(f"bias {bias!r} of layer {layer.name!r} does not index the "
                                           f"layer's neurons (axes {b.axes})", parameter="spec")
                used.add(bias)
            used.add(weight.name)
            out.append(ChainLayer(layer.name, weight.name, bias, spec.space(layer.space).size,
                                  spec.space(source.space).size, kernel))
        unused = [p.name for p in spec.parameters if p.name not in used]
        if unused:
            raise WeightspaceError(f"parameter {unused[0]!r} is not a weight or bias of the layer chain "
                                   f"(layer {spec.parameter(unused[0]).layer!r}); NFN cannot place it",
                                   parameter="spec")
        return cls(spec, tuple(out), tuple(s.name for s in spaces), tuple(s.size for s in spaces))

    # ------------------------------------------------------------- flat <-> features
    def features(self, params: Tensor) -> WeightSpaceFeatures:
        """One-channel features of flat parameters ``[B, P]`` (a missing
        bias is a zero feature)."""
        tensors = self.spec.split_parameters(params)
        b = params.shape[0]
        weights, biases = [], []
        for layer in self.layers:
            weights.append(tensors[layer.weight].reshape(b, 1, layer.n_out, layer.n_in, *layer.kernel))
            if layer.bias is None:
                biases.append(params.new_zeros(b, 1, layer.n_out))
            else:
                biases.append(tensors[layer.bias].reshape(b, 1, layer.n_out))
        return WeightSpaceFeatures(tuple(weights), tuple(biases))

    def flat_parameters(self, features: WeightSpaceFeatures) -> Tensor:
        """Inverse of :meth:`features` for one-channel features: ``[B, P]``."""
        if features.weights[0].shape[1] != 1:
            raise WeightspaceError(f"only one-channel features are parameters; these have "
                                   f"{features.weights[0].shape[1]} channels", parameter="features")
        tensors = {}
        for layer, w, b in zip(self.layers, features.weights, features.biases, strict=True):
            tensors[layer.weight] = w.reshape(w.shape[0], *self.spec.parameter(layer.weight).shape)
            if layer.bias is not None:
                tensors[layer.bias] = b[:, 0]
        return self.spec.join_parameters(tensors)


# --------------------------------------------------------------------------- symmetry layout
@dataclass(frozen=True)
class _Piece:
    """One feature tensor (a weight or a bias) seen by its symmetry: ``spaces``
    are the chain's space indices of its neuron axes (descending: out, in),
    ``permuted`` the axes among them that the mode lets move."""

    kind: str
    index: int
    spaces: tuple[int, ...]
    sizes: tuple[int, ...]
    kernel: tuple[int, ...]
    permuted: tuple[int, ...]

    @cached_property
    def perm_spaces(self) -> tuple[int, ...]:
        return tuple(self.spaces[a] for a in self.permuted)

    @cached_property
    def perm_sizes(self) -> tuple[int, ...]:
        return tuple(self.sizes[a] for a in self.permuted)

    @cached_property
    def fixed(self) -> tuple[int, ...]:
        return tuple(a for a in range(len(self.spaces)) if a not in self.permuted)

    @cached_property
    def fold(self) -> int:
        """Values per channel per permutable index: kernel entries times the
        fixed (non-permutable) neuron indices."""
        return math.prod(self.kernel) * math.prod(self.sizes[a] for a in self.fixed)

    @cached_property
    def order(self) -> tuple[int, ...]:
        """Axis order [B, permuted neurons, C, kernel, fixed neurons] of the
        public tensor [B, C, *neurons, *kernel]."""
        n = len(self.spaces)
        kernel = tuple(2 + n + k for k in range(len(self.kernel)))
        return (0, *(2 + a for a in self.permuted), 1, *kernel, *(2 + a for a in self.fixed))

    @cached_property
    def inverse_order(self) -> tuple[int, ...]:
        inverse = [0] * len(self.order)
        for position, axis in enumerate(self.order):
            inverse[axis] = position
        return tuple(inverse)

    def to_internal(self, x: Tensor) -> Tensor:
        """``[B, C, *neurons, *kernel]`` -> ``[B, *permuted neurons, C * fold]``:
        channels last, so that every term is one ``F.linear``; the channel
        index is ``(c, kernel, fixed neurons)`` in row-major order."""
        return x.permute(self.order).reshape(x.shape[0], *self.perm_sizes, -1)

    def from_internal(self, y: Tensor) -> Tensor:
        """Inverse of :meth:`to_internal`."""
        channels = y.shape[-1] // self.fold
        fixed_sizes = tuple(self.sizes[a] for a in self.fixed)
        y = y.reshape(y.shape[0], *self.perm_sizes, channels, *self.kernel, *fixed_sizes)
        return y.permute(self.inverse_order)


def _layout(chain: LayerChain, mode: str) -> tuple[_Piece, ...]:
    """Weights then biases of ``chain`` with the spaces ``mode`` permutes
    (NP: all ``0..L``; HNP: the hidden ones ``1..L-1``)."""
    if mode not in MODES:
        raise WeightspaceError(f"mode={mode!r} is not supported; choose one of {list(MODES)}",
                               parameter="mode")
    depth = len(chain)
    permutable = set(range(depth + 1)) if mode == "np" else set(range(1, depth))
    pieces = []
    for kind in ("weight", "bias"):
        for i, layer in enumerate(chain.layers):
            spaces = (i + 1, i) if kind == "weight" else (i + 1,)
            sizes = (layer.n_out, layer.n_in) if kind == "weight" else (layer.n_out,)
            kernel = layer.kernel if kind == "weight" else ()
            permuted = tuple(a for a, s in enumerate(spaces) if s in permutable)
            pieces.append(_Piece(kind, i, spaces, sizes, kernel, permuted))
    return tuple(pieces)


def _to_internal(pieces: Sequence[_Piece], features: WeightSpaceFeatures) -> list[Tensor]:
    tensors = list(features.pieces())
    if len(tensors) != len(pieces):
        raise WeightspaceError(f"expected features of {len(pieces) // 2} layers, got {len(tensors) // 2}",
                               parameter="features")
    return [p.to_internal(t) for p, t in zip(pieces, tensors, strict=True)]


def _from_internal(pieces: Sequence[_Piece], tensors: Sequence[Tensor]) -> WeightSpaceFeatures:
    return WeightSpaceFeatures.from_pieces(
        [p.from_internal(t) for p, t in zip(pieces, tensors, strict=True)])


def _pool_to(piece: _Piece, x: Tensor, kept: tuple[int, ...]) -> Tensor:
    """Average ``x`` (internal layout) over its permutable axes whose space is
    not in ``kept``; the remaining axes stay in descending space order."""
    dims = [1 + j for j, s in enumerate(piece.perm_spaces) if s not in kept]
    return x.mean(dim=dims) if dims else x


# --------------------------------------------------------------------------- equivariant layers
class _EquivariantLinear(nn.Module):
    """The permutation-equivariant linear map between weight-space features
    (see the module docstring); :class:`NPLinear` and :class:`HNPLinear` pick
    which spaces are permutable."""

    mode: str = ""

    def __init__(self, chain: LayerChain, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise WeightspaceError(f"channels must be positive, got {in_channels} -> {out_channels}",
                                   parameter="in_channels" if in_channels < 1 else "out_channels")
        self.chain = chain
        self.in_channels, self.out_channels = in_channels, out_channels
        self.pieces = _layout(chain, self.mode)
        # One term per set K of spaces kept un-pooled: every tensor that indexes all of K is averaged
        # down to K, the results are concatenated along channels, one matrix maps them to every tensor
        # that indexes K, and each output broadcasts over its other spaces. The tensors that take part
        # depend only on K (the same ones on both sides), so one matmul serves a whole term.
        kept_sets: list[tuple[int, ...]] = []
        for piece in self.pieces:
            spaces = piece.perm_spaces
            for r in range(len(spaces) + 1):
                for kept in combinations(spaces, r):
                    if kept not in kept_sets:
                        kept_sets.append(kept)
        self.terms: list[tuple[tuple[int, ...], list[int]]] = []
        for kept in kept_sets:
            members = [q for q, p in enumerate(self.pieces) if set(kept) <= set(p.perm_spaces)]
            self.terms.append((kept, members))
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(sum(self.pieces[q].fold for q in members) * out_channels,
                                     sum(self.pieces[q].fold for q in members) * in_channels))
            for _, members in self.terms)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(p.fold * out_channels))
                                       for p in self.pieces)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's ``Linear`` default, with the fan-in of every term feeding
        an output counted together (as NFN's ``set_init_``), so that the
        output's scale does not grow with the number of terms."""
        fan_in = [0] * len(self.pieces)
        for _, members in self.terms:
            width = sum(self.pieces[q].fold for q in members) * self.in_channels
            for q in members:
                fan_in[q] += width
        with torch.no_grad():
            for (_, members), weight in zip(self.terms, self.weights, strict=True):
                start = 0
                for q in members:
                    rows = self.pieces[q].fold * self.out_channels
                    weight[start:start + rows].uniform_(-fan_in[q] ** -0.5, fan_in[q] ** -0.5)
                    start += rows
            for q, bias in enumerate(self.biases):
                bias.uniform_(-fan_in[q] ** -0.5, fan_in[q] ** -0.5)

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        xs = _to_internal(self.pieces, features)
        outs: list[Tensor] = [bias for bias in self.biases]
        for (kept, members), weight in zip(self.terms, self.weights, strict=True):
            # [B, *K, sum of C_in * fold] -> [B, *K, sum of C_out * fold]
            pooled = torch.cat([_pool_to(self.pieces[q], xs[q], kept) for q in members], dim=-1)
            mixed = F.linear(pooled, weight)
            splits = [self.pieces[q].fold * self.out_channels for q in members]
            for q, part in zip(members, mixed.split(splits, dim=-1), strict=True):
                piece = self.pieces[q]
                # broadcast over the output's permutable spaces outside K
                shape = [n if s in kept else 1 for s, n in zip(piece.perm_spaces, piece.perm_sizes,
                                                                  strict=True)]
                outs[q] = outs[q] + part.reshape(part.shape[0], *shape, part.shape[-1])
        # every output has its own pointwise term (K = all its spaces), so the sums have full shape
        return _from_internal(self.pieces, outs)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"layers={len(self.chain)}, terms={len(self.terms)}")


class NPLinear(_EquivariantLinear):
    r"""The NP layer of NFN: a linear map between weight-space features that
    commutes with permutations of *every* neuron space, input and output
    included.

    Each output weight/bias mixes, with one learned ``C_out x C_in`` block per
    term (kernel axes as extra channels): its own entries pointwise; row and
    column means of itself and of its neighbouring layers' weights and biases;
    and the means of every weight and bias of the network (the pooled terms of
    the NP layer of Zhou et al. 2023). Its number of parameters depends on
    the depth, the kernels and the channels, never on the widths.

    Args:
        chain: the network's :class:`LayerChain`.
        in_channels: ``C_in``.
        out_channels: ``C_out``.

    Shapes:
        - input: :class:`WeightSpaceFeatures` with ``C_in`` channels
        - output: :class:`WeightSpaceFeatures` with ``C_out`` channels
    """

    mode = "np"


class HNPLinear(_EquivariantLinear):
    r"""The HNP layer of NFN: a linear map between weight-space features that
    commutes with permutations of the *hidden* neurons only (the exact
    symmetry of a feed-forward network).

    Input and output neurons keep their identity, so their indices become
    channels: the first weight is a vector of ``n_0 C`` features per first-layer
    neuron, the last weight ``n_L C`` per last-hidden neuron and the last bias a
    plain vector; it is otherwise built like :class:`NPLinear`, with more
    parameters (they grow with ``n_0`` and ``n_L`` but not with the hidden
    widths).

    Args:
        chain: the network's :class:`LayerChain`.
        in_channels: ``C_in``.
        out_channels: ``C_out``.

    Shapes:
        - input: :class:`WeightSpaceFeatures` with ``C_in`` channels
        - output: :class:`WeightSpaceFeatures` with ``C_out`` channels
    """

    mode = "hnp"


class Elementwise(nn.Module):
    """Apply an elementwise module (``nn.ReLU``, ``nn.Dropout`` ...) to every
    weight and bias feature; elementwise maps commute with every permutation.

    Shapes:
        - input / output: :class:`WeightSpaceFeatures` (same shapes)
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return features.map(self.module)


class NFNPool(nn.Module):
    """Invariant pooling of weight-space features to one vector per network:
    every weight and bias is aggregated over the neuron axes ``mode``
    permutes (HNP: hidden ones, keeping the input and output neuron axes and
    the kernel axes as features; NP: all neuron axes), and the results are
    concatenated (NFN's ``HNPPool`` / ``NPPool``).

    Args:
        chain: the network's :class:`LayerChain`.
        channels: ``C`` of the features it will pool.
        mode: ``"hnp"`` or ``"np"``.
        agg: ``"mean"``, ``"sum"`` or ``"max"``.

    Shapes:
        - input: :class:`WeightSpaceFeatures` with ``C`` channels
        - output: ``[B, out_features]``
    """

    def __init__(self, chain: LayerChain, channels: int, mode: str = "hnp", agg: str = "mean") -> None:
        super().__init__()
        if agg not in POOLINGS:
            raise WeightspaceError(f"agg={agg!r} is not supported; choose one of {list(POOLINGS)}",
                                   parameter="agg")
        self.pieces = _layout(chain, mode)
        self.channels, self.mode, self.agg = channels, mode, agg
        self.out_features = channels * sum(p.fold for p in self.pieces)

    def forward(self, features: WeightSpaceFeatures) -> Tensor:
        out = []
        for x in _to_internal(self.pieces, features):
            dims = list(range(1, x.dim() - 1))
            if dims:
                if self.agg == "mean":
                    x = x.mean(dim=dims)
                elif self.agg == "sum":
                    x = x.sum(dim=dims)
                else:
                    x = x.amax(dim=dims)
            out.append(x)
        return torch.cat(out, dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, agg={self.agg!r}, out_features={self.out_features}"


# --------------------------------------------------------------------------- the model
class NFN(FlatMetanetwork):
    r"""Neural Functional Network (Zhou et al., NeurIPS 2023) over one plain
    feed-forward architecture (MLP, SIREN, small CNN).

    ``num_layers`` equivariant layers (:class:`HNPLinear` or :class:`NPLinear`,
    ``1 -> hidden_channels -> ... -> hidden_channels``), each followed by ReLU
    and dropout, then

    * ``head="invariant"``: :class:`NFNPool` (mean) and an MLP
      ``pool -> head_hidden -> out_dim``: ``[B, out_dim]``, unchanged by any
      permutation of the input network's hidden neurons;
    * ``head="equivariant"``: one more equivariant layer to one channel,
      returned as flat parameters ``[B, P]`` in the input's layout (``out_dim``
      is not used); permuting the input network's hidden neurons permutes the
      output network the same way.

    With ``mode="np"`` the model is also invariant/equivariant to permutations
    of the input and output neurons, a restriction that costs expressiveness
    but makes the parameter count independent of every width.

    **Input normalisation.** The flat input is mapped to
    ``(params - input_shift) / input_scale`` with one shift and one scale per
    state-dict entry (buffers, identity by default; constant over every
    permutation, so the symmetry is unchanged). :meth:`fit_normalisation`
    sets them to the mean and standard deviation of each entry over a batch of
    networks, which balances layers of very different scales (SIREN's first
    layer against its others) and helps training. The equivariant head maps its
    output back to the units of the input parameters: with ``residual=True``
    (default) it returns ``params + out * input_scale``, a change added to the
    input network, and its last layer starts at zero, so an untrained head is
    the identity map (as NFN's INR-editing and GMN's decoder); with
    ``residual=False``, ``out * input_scale + input_shift``.

    Args:
        template: the architecture's template (:meth:`GraphTemplate.for_spec`).
        out_dim: outputs of the invariant head.
        mode: ``"hnp"`` (hidden neurons permutable; default) or ``"np"``.
        hidden_channels: channels of the equivariant layers.
        num_layers: equivariant layers before the head (at least 1).
        head: ``"invariant"`` or ``"equivariant"``.
        dropout: dropout after each equivariant layer and in the head MLP.
        head_hidden: width of the invariant head's hidden layer.
        pool: aggregation of :class:`NFNPool`: ``"mean"``, ``"sum"`` or ``"max"``.
        residual: the equivariant head outputs the input plus a change
            (starting at zero), not new parameters.

    Raises:
        WeightspaceError: the architecture is not a plain chain of linear/conv
            layers (residual connections, norm layers, branches), naming the
            layer; or an unknown mode/head/pool.

    Example::

        >>> template = GraphTemplate.for_spec(weightspace.trace(SIREN(), torch.zeros(1, 2)))
        >>> nfn = NFN(template, out_dim=10).fit_normalisation(params)
        >>> logits = nfn(params)                     # params: [B, 1185] -> [B, 10]

    Shapes:
        - input: ``[B, P]`` flat parameters of ``template``'s architecture, or
          a batch of its parameter graphs
        - output: ``[B, out_dim]`` (invariant) or ``[B, P]`` (equivariant)
    """

    def __init__(self, template: GraphTemplate, out_dim: int, *, mode: str = "hnp",
                 hidden_channels: int = 16, num_layers: int = 3, head: str = "invariant",
                 dropout: float = 0.0, head_hidden: int = 128, pool: str = "mean",
                 residual: bool = True) -> None:
        super().__init__(template)
        self.head = check_head(head, model="NFN")
        if mode not in MODES:
            raise WeightspaceError(f"mode={mode!r} is not supported; choose one of {list(MODES)}",
                                   parameter="mode")
        if num_layers < 1:
            raise WeightspaceError(f"NFN needs num_layers >= 1, got {num_layers}",
                                   parameter="num_layers")
        self.mode = mode
        self.chain = LayerChain.from_spec(self.spec)
        linear = HNPLinear if mode == "hnp" else NPLinear
        widths = [1] + [hidden_channels] * num_layers
        self.layers = nn.ModuleList(linear(self.chain, a, b) for a, b in zip(widths[:-1], widths[1:],
                                                                              strict=True))
        self.activation = Elementwise(nn.ReLU())
        self.dropout = Elementwise(nn.Dropout(dropout))
        if head == "invariant":
            self.pool = NFNPool(self.chain, hidden_channels, mode, agg=pool)
            self.readout = nn.Sequential(nn.Linear(self.pool.out_features, head_hidden), nn.ReLU(),
                                         nn.Dropout(dropout), nn.Linear(head_hidden, out_dim))
        else:
            self.readout = linear(self.chain, hidden_channels, 1)
            if residual:
                for parameter in self.readout.parameters():
                    nn.init.zeros_(parameter)
        self.residual = residual
        num_parameters = self.spec.num_parameters
        self.register_buffer("input_shift", torch.zeros(num_parameters))
        self.register_buffer("input_scale", torch.ones(num_parameters))

    @torch.no_grad()
    def fit_normalisation(self, inputs: Tensor | Data, center: bool = True, eps: float = 1e-8) -> NFN:
        """Set :attr:`input_shift` / :attr:`input_scale` to the mean and
        standard deviation of every state-dict entry over all its values in
        ``inputs`` (``[N, P]`` or a batch of graphs); an entry that is constant
        keeps scale 1. Returns ``self``."""
        params = flat_parameters(inputs, self.template).to(self.input_scale)
        shift = torch.zeros_like(self.input_shift)
        scale = torch.ones_like(self.input_scale)
        for start, end in self.spec.offsets.values():
            values = params[:, start:end]
            if values.numel() == 0:
                continue
            mean = values.mean() if center else values.new_zeros(())
            std = (values - mean).square().mean().sqrt()
            shift[start:end] = mean
            scale[start:end] = std if std > eps else 1.0
        self.input_shift.copy_(shift)
        self.input_scale.copy_(scale)
        return self

    def encode(self, inputs: Tensor | Data) -> WeightSpaceFeatures:
        """Weight-space features after the equivariant layers."""
        params = self.parameters_of(inputs)
        features = self.chain.features((params - self.input_shift) / self.input_scale)
        for layer in self.layers:
            features = self.dropout(self.activation(layer(features)))
        return features

    def forward(self, inputs: Tensor | Data) -> Tensor:
        features = self.encode(inputs)
        if self.head == "invariant":
            return self.readout(self.pool(features))
        out = self.chain.flat_parameters(self.readout(features)) * self.input_scale
        if self.residual:
            return self.parameters_of(inputs).to(out.dtype) + out
        return out + self.input_shift


__all__ = ["ChainLayer", "Elementwise", "HNPLinear", "LayerChain", "NFN", "NFNPool", "NPLinear"]
