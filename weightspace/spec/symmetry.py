"""Permutations, positive scalings and sign flips of neuron spaces.

Convention: a permutation ``perm`` of a space of size ``n`` is a ``LongTensor``
of length ``n``; the permuted network's neuron ``i`` is the original's neuron
``perm[i]`` (``W'[i] = W[perm[i]]``, i.e. ``index_select``). With this
convention ``spec.permute(spec.permute(sd, p), q) == spec.permute(sd, p.then(q))``.

A scaling multiplies the rows that produce a neuron by ``factor`` and divides
the columns that read it, so for a ReLU network (``relu(a·x) = a·relu(x)``,
``a > 0``) the function is unchanged; a sign flip is a scaling by ``±1`` for
odd activations (tanh, sine). Which parameters move is recorded in the spec
(:attr:`NeuronSpace.scale_rules` / :attr:`NeuronSpace.sign_rules`).

Batches: a :class:`Permutation` or :class:`NeuronScaling` holds either one
``[n]`` tensor per space, or ``[B, n]`` tensors — one permutation or scaling
per row of a ``[B, P]`` batch of flat parameter vectors, as the weight-space
augmentations draw them. The single case is the batch of one: every operation
here (drawing, composing, inverting, checking, the flat gather index, the flat
rescale) is written once, for ``[B, n]``. State dicts are permuted or rescaled
by single ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from weightspace.spec.containers import ScaleRule, WeightSpaceSpec
from weightspace.spec.errors import SpecError


def _frozen(d: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, eq=False)
class Permutation:
    """One permutation per permutable neuron space (absent spaces: identity).

    Args:
        perms: space name -> ``LongTensor[n]``, or ``LongTensor[B, n]`` for a
            batch of ``B`` permutations (one per row of a ``[B, P]`` batch;
            every space of one batch has the same ``B``).
    """

    perms: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        object.__setattr__(self, "perms", _frozen({k: v.long() for k, v in self.perms.items()}))
        # one batch size for every space, checked once
        object.__setattr__(self, "_batch", _batch_size(self.perms, "permutation"))

    def __getitem__(self, space: str) -> Tensor:
        return self.perms[space]

    def __iter__(self) -> Iterator[str]:
        return iter(self.perms)

    def __len__(self) -> int:
        return len(self.perms)

    def __contains__(self, space: object) -> bool:
        return space in self.perms

    @property
    def batch_size(self) -> int | None:
        """``B`` for a batch of ``[B, n]`` permutations, ``None`` for a single one."""
        return self._batch

    def inverse(self) -> Permutation:
        return Permutation({k: torch.argsort(v, dim=-1) for k, v in self.perms.items()})

    def then(self, other: Permutation) -> Permutation:
        """The permutation that applies ``self`` and then ``other`` (row by
        row for batches)."""
        out = dict(self.perms)
        for k, q in other.perms.items():
            if k in out:
                p, q = torch.broadcast_tensors(out[k], q)  # a single one acts on every row
                out[k] = p.gather(-1, q)
            else:
                out[k] = q
        return Permutation(out)

    def row(self, b: int) -> Permutation:
        """The single permutation of row ``b`` of a batch."""
        if self.batch_size is None:
            raise SpecError("row() needs a batch of permutations; this one is single")
        return Permutation({k: v[b] for k, v in self.perms.items()})

    def equal(self, other: Permutation) -> bool:
        keys = set(self) | set(other)
        for k in keys:
            a = self.perms.get(k)
            b = other.perms.get(k)
            ref = a if a is not None else b
            identity = torch.arange(ref.shape[-1]).expand_as(ref)
            a = a if a is not None else identity
            b = b if b is not None else identity
            if a.shape != b.shape or not torch.equal(a, b):
                return False
        return True

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {list(v.shape)}" for k, v in self.perms.items())
        return f"Permutation({inner})"


@dataclass(frozen=True, eq=False)
class NeuronScaling:
    """Per-neuron factors for the spaces of a scaling (``kind="scale"``,
    positive factors) or sign-flip (``kind="sign"``, ``±1``) symmetry.

    Args:
        kind: ``"scale"`` or ``"sign"``.
        factors: space name -> ``[n]``, or ``[B, n]`` for a batch.
    """

    kind: str
    factors: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        if self.kind not in ("scale", "sign"):
            raise SpecError(f"scaling kind must be 'scale' or 'sign', got {self.kind!r}")
        object.__setattr__(self, "factors", _frozen(self.factors))
        object.__setattr__(self, "_batch", _batch_size(self.factors, "scaling"))

    @property
    def batch_size(self) -> int | None:
        """``B`` for a batch of ``[B, n]`` factors, ``None`` for a single one."""
        return self._batch

    def inverse(self) -> NeuronScaling:
        return NeuronScaling(self.kind, {k: 1.0 / v for k, v in self.factors.items()})

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {list(v.shape)}" for k, v in self.factors.items())
        return f"NeuronScaling({self.kind}, {inner})"


# ------------------------------------------------------------------ helpers
def _batch_size(tensors: Mapping[str, Tensor], what: str) -> int | None:
    sizes = {v.shape[0] if v.dim() == 2 else None for v in tensors.values()}
    if any(v.dim() not in (1, 2) for v in tensors.values()):
        raise SpecError(f"a {what} holds [n] or [B, n] tensors per space, got shapes "
                        f"{ {k: list(v.shape) for k, v in tensors.items()} }")
    if len(sizes) > 1:
        raise SpecError(f"a {what} mixes single and batched spaces or batch sizes: "
                        f"{ {k: list(v.shape) for k, v in tensors.items()} }")
    return next(iter(sizes)) if sizes else None


def expand_index(index: Tensor, block: int) -> Tensor:
    """Neuron index -> axis index when each neuron owns ``block`` entries
    (an :class:`~weightspace.spec.containers.Axis` with ``block > 1``).

    Shapes:
        - index: ``[..., n]``
        - output: ``[..., n * block]``
    """
    if block == 1:
        return index
    within = torch.arange(block, device=index.device)
    return (index[..., None] * block + within).reshape(*index.shape[:-1], -1)


def cpu_uniform(shape: tuple[int, ...], generator: torch.Generator | None,
                dtype: torch.dtype = torch.float64) -> Tensor:
    """Uniform ``[0, 1)`` noise drawn on the CPU: a CPU generator cannot drive
    a CUDA draw, and a seed then gives the same draw on every device (the
    random symmetries here and the augmentations of :mod:`weightspace.zoo.transforms`)."""
    return torch.rand(shape, generator=generator, dtype=dtype)


def check_permutation(spec: WeightSpaceSpec, perm: Permutation) -> None:
    """Raise :class:`SpecError` unless ``perm`` (single or batched) is a valid
    symmetry of ``spec``."""
    for name, p in perm.perms.items():
        space = spec.space(name)
        if not space.permutable:
            raise SpecError(f"space {name!r} is an {space.role} space and cannot be permuted")
        if p.shape[-1] != space.size:
            raise SpecError(f"permutation of space {name!r} has shape {list(p.shape)}, "
                            f"expected [{space.size}] (or [B, {space.size}] for a batch)")
        rows = p.reshape(-1, space.size)
        expected = torch.arange(space.size, device=p.device)
        if not torch.equal(torch.sort(rows, dim=-1).values, expected.expand_as(rows)):
            raise SpecError(f"permutation of space {name!r} is not a permutation of 0..{space.size - 1}")
        g = space.permutation_blocks
        if g > 1:
            groups = rows.reshape(len(rows), g, -1) // (space.size // g)
            if not (groups == groups[..., :1]).all():
                raise SpecError(
                    f"permutation of space {name!r} splits one of its {g} GroupNorm groups; "
                    f"only permutations that map groups onto groups are symmetries"
                )


# ------------------------------------------------------------- permutations
def identity_permutation(spec: WeightSpaceSpec, batch_size: int | None = None) -> Permutation:
    lead = () if batch_size is None else (batch_size,)
    return Permutation({s.name: torch.arange(s.size).expand(*lead, s.size).clone()
                        for s in spec.permutable_spaces})


def random_permutation(spec: WeightSpaceSpec, generator: torch.Generator | None = None,
                       batch_size: int | None = None) -> Permutation:
    """A uniformly random permutation of every permutable space, respecting
    GroupNorm groups (whole groups move, and channels within each group).

    With ``batch_size=B`` the result holds ``[B, n]`` tensors, one independent
    draw per row. Drawn as the argsort of float64 uniform noise (on the CPU),
    so all rows come from one call per space; ties, which would bias the draw,
    are practically impossible.
    """
    b = 1 if batch_size is None else batch_size
    out = {}
    for s in spec.permutable_spaces:
        blocks = s.permutation_blocks
        if blocks > 1:
            size = s.size // blocks
            order = cpu_uniform((b, blocks), generator).argsort(dim=-1)
            within = cpu_uniform((b, blocks, size), generator).argsort(dim=-1)
            out[s.name] = (order[:, :, None] * size + within).reshape(b, s.size)
        else:
            out[s.name] = cpu_uniform((b, s.size), generator).argsort(dim=-1)
    if batch_size is None:
        out = {k: v[0] for k, v in out.items()}
    return Permutation(out)


def permute(spec: WeightSpaceSpec, state_dict: Mapping[str, Tensor], perm: Permutation) -> dict[str, Tensor]:
    """Apply ``perm`` (a single permutation) to every axis of every parameter
    (buffers included)."""
    spec.check_state_dict(state_dict)
    check_permutation(spec, perm)
    if perm.batch_size is not None:
        raise SpecError("a state dict is permuted by a single permutation; for a batch of "
                        "flat vectors use permute_flat (or perm.row(b))")
    return select_neurons(spec, state_dict, perm.perms)


def select_neurons(spec: WeightSpaceSpec, state_dict: Mapping[str, Tensor],
                   index: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Gather the neurons ``index[space]`` of each named space from every axis
    that indexes it (:meth:`WeightSpaceSpec.axes_of`; buffers included).

    A permutation of the space reorders its neurons (:func:`permute`); a
    subset removes the others (structured pruning). Unchecked: callers
    validate ``index``. Every returned tensor is new.
    """
    out = dict(state_dict)
    for name, neurons in index.items():
        for ref in spec.axes_of(name):
            t = out[ref.parameter]
            out[ref.parameter] = t.index_select(ref.axis, expand_index(neurons.to(t.device), ref.block))
    return {p.name: out[p.name].clone() if out[p.name] is state_dict[p.name] else out[p.name]
            for p in spec.parameters}


def permutation_index(spec: WeightSpaceSpec, perm: Permutation, *, check: bool = True,
                      device: torch.device | str | None = None) -> Tensor:
    """The flat gather index of ``perm``: ``permute_flat(v) == v[..., index]``
    for a single permutation, ``v.gather(-1, index)`` for a batch.

    Built parameter by parameter into one buffer, in place: the unpermuted
    axes give a base shared by all rows and each permuted axis adds a
    broadcast per-row term, so no ``[B, *shape]`` temporary is made (for a
    batch the index is the largest tensor of an augmentation).

    Args:
        spec: the weight-space spec.
        perm: a single or a batched permutation.
        check: validate ``perm`` first (:func:`check_permutation`).
        device: where to build the index (the parameters' device avoids a copy).

    Shapes:
        output: ``[P]``, or ``[B, P]`` for a batch (``int64``).
    """
    if check:
        check_permutation(spec, perm)
    single = perm.batch_size is None
    batch = 1 if single else perm.batch_size
    perms = {k: (v[None] if single else v).to(device=device, dtype=torch.long)
             for k, v in perm.perms.items()}
    index = torch.empty(batch, spec.num_parameters, dtype=torch.long, device=device)
    for p in spec.parameters:
        start, end = spec.offsets[p.name]
        if start == end:
            continue
        ndim = len(p.shape)
        base = torch.full((1,) * (ndim + 1), start, dtype=torch.long, device=device)
        moves = []
        stride = p.numel
        for axis, (size, a) in enumerate(zip(p.shape, p.axes, strict=True)):
            stride //= size  # row-major stride of this axis
            shape = [1] * (ndim + 1)
            shape[1 + axis] = size
            if a is not None and a.space in perms:
                shape[0] = batch
                moves.append((expand_index(perms[a.space], a.block) * stride).reshape(shape))
            else:
                base = base + (torch.arange(size, device=device) * stride).reshape(shape)
        out = index[:, start:end].view(batch, *p.shape)
        out.copy_(base.expand(batch, *p.shape))
        for move in moves:
            out.add_(move)
    return index[0] if single else index


def permute_flat(spec: WeightSpaceSpec, params: Tensor, perm: Permutation) -> Tensor:
    """Permute flat parameter vectors in one gather.

    Shapes:
        - params: ``[P]`` or ``[N, P]`` with a single permutation (every row
          moved alike); ``[B, P]`` with a batch of ``B`` permutations (row
          ``b`` by permutation ``b``).
        - output: same as ``params``.
    """
    index = permutation_index(spec, perm, device=params.device)
    if perm.batch_size is None:
        return params[..., index]
    if params.dim() != 2 or params.shape[0] != perm.batch_size:
        raise SpecError(f"a batch of {perm.batch_size} permutations permutes [{perm.batch_size}, P] "
                        f"flat parameters, got {list(params.shape)}")
    return params.gather(1, index)


# ----------------------------------------------------------------- scalings
def random_scaling(
    spec: WeightSpaceSpec,
    generator: torch.Generator | None = None,
    low: float = 0.5,
    high: float = 2.0,
    batch_size: int | None = None,
) -> NeuronScaling:
    """Log-uniform positive factors in ``[low, high]`` for every space with a
    scaling symmetry (``[B, n]`` per space with ``batch_size=B``)."""
    if not 0 < low <= high:
        raise SpecError(f"need 0 < low <= high, got low={low}, high={high}")
    # float64 factors so that a float64 network is rescaled (and restored by
    # the inverse) to float64 precision; rescaling casts to each parameter's dtype
    lo, hi = math.log(low), math.log(high)
    b = 1 if batch_size is None else batch_size
    out = {s.name: torch.exp(lo + (hi - lo) * cpu_uniform((b, s.size), generator))
           for s in spec.permutable_spaces if s.scale_rules}
    return NeuronScaling("scale", out if batch_size is not None else {k: v[0] for k, v in out.items()})


def random_sign_flip(spec: WeightSpaceSpec, generator: torch.Generator | None = None,
                     p: float = 0.5, batch_size: int | None = None) -> NeuronScaling:
    """``±1`` factors for every space with a sign-flip symmetry: each neuron
    flipped with probability ``p`` (``[B, n]`` per space with ``batch_size=B``)."""
    if not 0.0 <= p <= 1.0:
        raise SpecError(f"the flip probability must be in [0, 1], got p={p}")
    b = 1 if batch_size is None else batch_size
    out = {s.name: 1.0 - 2.0 * (cpu_uniform((b, s.size), generator) < p).double()
           for s in spec.permutable_spaces if s.sign_rules}
    return NeuronScaling("sign", out if batch_size is not None else {k: v[0] for k, v in out.items()})


def _check_scaling(spec: WeightSpaceSpec, scaling: NeuronScaling) -> None:
    for name, factors in scaling.factors.items():
        space = spec.space(name)
        if not _rules(space, scaling.kind):
            raise SpecError(f"space {name!r} has no {scaling.kind} symmetry "
                            f"(its symmetries: {', '.join(space.symmetries) or 'none'})")
        if factors.shape[-1] != space.size:
            raise SpecError(f"{scaling.kind} factors of space {name!r} have shape "
                            f"{list(factors.shape)}, expected [{space.size}] (or [B, {space.size}])")
        if scaling.kind == "scale" and not bool((factors > 0).all()):
            raise SpecError(f"scale factors of space {name!r} must be positive")


def _rules(space, kind: str) -> tuple[ScaleRule, ...]:
    return space.scale_rules if kind == "scale" else space.sign_rules


def multiply_rules_flat(spec: WeightSpaceSpec, params: Tensor, rules: Sequence[ScaleRule],
                        factors: Tensor) -> None:
    """In place: multiply each rule's axis of ``params`` by ``factors ** rule.power``.

    The one primitive behind every scaling of flat vectors: a whole
    :class:`NeuronScaling` (:func:`rescale_flat`), or a chosen subset of a
    space's rules (the readers of a SIREN neuron whose bias moved half a
    period). Unchecked.

    Shapes:
        - params: ``[B, P]``, contiguous.
        - factors: ``[B, n]`` (float64 is best: the power is taken before the
          one rounding to the parameters' dtype).
    """
    batch = params.shape[0]
    for rule in rules:
        p = spec.parameter(rule.parameter)
        start, end = spec.offsets[p.name]
        axis = p.axes[rule.axis]
        block = axis.block if axis is not None else 1
        f = (factors.repeat_interleave(block, dim=-1) ** rule.power).to(params.device, params.dtype)
        shape = [batch] + [1] * len(p.shape)
        shape[1 + rule.axis] = -1
        # a column slice of a contiguous [B, P] tensor can be viewed as
        # [B, *shape]: only its last (unit-stride) dimension is split
        params[:, start:end].view(batch, *p.shape).mul_(f.reshape(shape))


def rescale_flat(spec: WeightSpaceSpec, params: Tensor, scaling: NeuronScaling) -> Tensor:
    """Apply a scaling or sign flip to flat parameter vectors (a new tensor).

    Shapes:
        - params: ``[P]`` or ``[N, P]`` with single factors (every row alike),
          ``[B, P]`` with a batch of ``B`` (row ``b`` by factors ``b``).
        - output: same as ``params``.
    """
    _check_scaling(spec, scaling)
    single_row = params.dim() == 1
    out = (params[None] if single_row else params).clone(memory_format=torch.contiguous_format)
    b = scaling.batch_size
    if b is not None and out.shape[0] != b:
        raise SpecError(f"a batch of {b} scalings rescales [{b}, P] flat parameters, "
                        f"got {list(params.shape)}")
    for name, factors in scaling.factors.items():
        rows = factors.double().expand(out.shape[0], -1) if b is None else factors.double()
        multiply_rules_flat(spec, out, _rules(spec.space(name), scaling.kind), rows)
    return out[0] if single_row else out


def rescale(spec: WeightSpaceSpec, state_dict: Mapping[str, Tensor], scaling: NeuronScaling) -> dict[str, Tensor]:
    """Apply a single scaling or sign flip to a state dict; the network's
    function is unchanged."""
    spec.check_state_dict(state_dict)
    _check_scaling(spec, scaling)
    if scaling.batch_size is not None:
        raise SpecError("a state dict is rescaled by single factors; for a batch of flat "
                        "vectors use rescale_flat")
    out = {k: v.clone() for k, v in state_dict.items()}
    for name, factors in scaling.factors.items():
        for rule in _rules(spec.space(name), scaling.kind):
            t = out[rule.parameter]
            axis = spec.parameter(rule.parameter).axes[rule.axis]
            block = axis.block if axis is not None else 1
            f = factors.to(t.dtype).repeat_interleave(block) ** rule.power
            shape = [1] * t.dim()
            shape[rule.axis] = -1
            out[rule.parameter] = t * f.reshape(shape)
    return out
