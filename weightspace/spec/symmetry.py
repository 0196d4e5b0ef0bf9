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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.errors import SpecError


def _frozen(d: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, eq=False)
class Permutation:
    """One permutation per permutable neuron space (absent spaces: identity).

    Args:
        perms: space name -> ``LongTensor[n]``.
    """

    perms: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        object.__setattr__(self, "perms", _frozen({k: v.long() for k, v in self.perms.items()}))

    def __getitem__(self, space: str) -> Tensor:
        return self.perms[space]

    def __iter__(self) -> Iterator[str]:
        return iter(self.perms)

    def __len__(self) -> int:
        return len(self.perms)

    def __contains__(self, space: object) -> bool:
        return space in self.perms

    def inverse(self) -> Permutation:
        return Permutation({k: torch.argsort(v) for k, v in self.perms.items()})

    def then(self, other: Permutation) -> Permutation:
        """The permutation that applies ``self`` and then ``other``."""
        out = dict(self.perms)
        for k, q in other.perms.items():
            out[k] = out[k][q] if k in out else q
        return Permutation(out)

    def equal(self, other: Permutation) -> bool:
        keys = set(self) | set(other)
        for k in keys:
            a = self.perms.get(k)
            b = other.perms.get(k)
            n = len(a) if a is not None else len(b)
            a = a if a is not None else torch.arange(n)
            b = b if b is not None else torch.arange(n)
            if not torch.equal(a, b):
                return False
        return True

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: [{len(v)}]" for k, v in self.perms.items())
        return f"Permutation({inner})"


@dataclass(frozen=True, eq=False)
class NeuronScaling:
    """Per-neuron factors for the spaces of a scaling (``kind="scale"``,
    positive factors) or sign-flip (``kind="sign"``, ``±1``) symmetry."""

    kind: str
    factors: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        if self.kind not in ("scale", "sign"):
            raise SpecError(f"scaling kind must be 'scale' or 'sign', got {self.kind!r}")
        object.__setattr__(self, "factors", _frozen(self.factors))

    def inverse(self) -> NeuronScaling:
        return NeuronScaling(self.kind, {k: 1.0 / v for k, v in self.factors.items()})

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: [{len(v)}]" for k, v in self.factors.items())
        return f"NeuronScaling({self.kind}, {inner})"


# ------------------------------------------------------------------ helpers
def _expand(index: Tensor, block: int) -> Tensor:
    """Neuron index -> axis index when each neuron owns ``block`` entries."""
    if block == 1:
        return index
    return (index[:, None] * block + torch.arange(block, device=index.device)).reshape(-1)


def _random_block_permutation(n: int, blocks: int, generator: torch.Generator | None) -> Tensor:
    size = n // blocks
    order = torch.randperm(blocks, generator=generator)
    within = torch.stack([torch.randperm(size, generator=generator) for _ in range(blocks)])
    return (order[:, None] * size + within).reshape(-1)


def check_permutation(spec: WeightSpaceSpec, perm: Permutation) -> None:
    """Raise :class:`SpecError` unless ``perm`` is a valid symmetry of ``spec``."""
    for name, p in perm.perms.items():
        space = spec.space(name)
        if not space.permutable:
            raise SpecError(f"space {name!r} is an {space.role} space and cannot be permuted")
        if p.dim() != 1 or len(p) != space.size:
            raise SpecError(f"permutation of space {name!r} has shape {list(p.shape)}, "
                            f"expected [{space.size}]")
        if not torch.equal(torch.sort(p).values, torch.arange(space.size, device=p.device)):
            raise SpecError(f"permutation of space {name!r} is not a permutation of 0..{space.size - 1}")
        g = space.permutation_blocks
        if g > 1:
            rows = p.reshape(g, -1) // (space.size // g)
            if not (rows == rows[:, :1]).all():
                raise SpecError(
                    f"permutation of space {name!r} splits one of its {g} GroupNorm groups; "
                    f"only permutations that map groups onto groups are symmetries"
                )


# ------------------------------------------------------------- permutations
def identity_permutation(spec: WeightSpaceSpec) -> Permutation:
    return Permutation({s.name: torch.arange(s.size) for s in spec.permutable_spaces})


def random_permutation(spec: WeightSpaceSpec, generator: torch.Generator | None = None) -> Permutation:
    """A uniformly random permutation of every permutable space (respecting
    GroupNorm groups)."""
    out = {}
    for s in spec.permutable_spaces:
        if s.permutation_blocks > 1:
            out[s.name] = _random_block_permutation(s.size, s.permutation_blocks, generator)
        else:
            out[s.name] = torch.randperm(s.size, generator=generator)
    return Permutation(out)


def permute(spec: WeightSpaceSpec, state_dict: Mapping[str, Tensor], perm: Permutation) -> dict[str, Tensor]:
    """Apply ``perm`` to every axis of every parameter (buffers included)."""
    spec.check_state_dict(state_dict)
    check_permutation(spec, perm)
    return select_neurons(spec, state_dict, perm.perms)


def select_neurons(spec: WeightSpaceSpec, state_dict: Mapping[str, Tensor],
                   index: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Gather the neurons ``index[space]`` of each named space from every axis
    of every parameter that indexes it (buffers included).

    A permutation of the space reorders its neurons (:func:`permute`); a
    subset removes the others (structured pruning). Unchecked: callers
    validate ``index``. Every returned tensor is new.
    """
    out = {}
    for p in spec.parameters:
        t = state_dict[p.name]
        for axis, a in enumerate(p.axes):
            if a is not None and a.space in index:
                t = t.index_select(axis, _expand(index[a.space].to(t.device), a.block))
        out[p.name] = t.clone() if t is state_dict[p.name] else t
    return out


def permutation_index(spec: WeightSpaceSpec, perm: Permutation) -> Tensor:
    """The flat gather index of ``perm``: ``permute_flat(v) == v[..., index]``.

    Shapes:
        output: ``[P]``.
    """
    check_permutation(spec, perm)
    pieces = []
    for p in spec.parameters:
        start, _ = spec.offsets[p.name]
        idx = torch.arange(p.numel).reshape(p.shape) + start
        for axis, a in enumerate(p.axes):
            if a is not None and a.space in perm:
                idx = idx.index_select(axis, _expand(perm[a.space], a.block))
        pieces.append(idx.reshape(-1))
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def permute_flat(spec: WeightSpaceSpec, params: Tensor, perm: Permutation) -> Tensor:
    """Permute flat parameter vectors (``[P]`` or ``[N, P]``) in one gather."""
    return params[..., permutation_index(spec, perm).to(params.device)]


# ----------------------------------------------------------------- scalings
def random_scaling(
    spec: WeightSpaceSpec,
    generator: torch.Generator | None = None,
    low: float = 0.5,
    high: float = 2.0,
) -> NeuronScaling:
    """Log-uniform positive factors in ``[low, high]`` for every space with a
    scaling symmetry."""
    if not 0 < low <= high:
        raise SpecError(f"need 0 < low <= high, got low={low}, high={high}")
    out = {}
    # float64 factors so that a float64 network is rescaled (and restored by
    # the inverse) to float64 precision; rescale casts to each parameter's dtype
    lo = torch.log(torch.tensor(low, dtype=torch.float64))
    hi = torch.log(torch.tensor(high, dtype=torch.float64))
    for s in spec.permutable_spaces:
        if s.scale_rules:
            u = torch.rand(s.size, generator=generator, dtype=torch.float64)
            out[s.name] = torch.exp(lo + (hi - lo) * u)
    return NeuronScaling("scale", out)


def random_sign_flip(spec: WeightSpaceSpec, generator: torch.Generator | None = None) -> NeuronScaling:
    """Random ``±1`` factors for every space with a sign-flip symmetry."""
    out = {}
    for s in spec.permutable_spaces:
        if s.sign_rules:
            out[s.name] = torch.randint(0, 2, (s.size,), generator=generator).double() * 2 - 1
    return NeuronScaling("sign", out)


def rescale(spec: WeightSpaceSpec, state_dict: Mapping[str, Tensor], scaling: NeuronScaling) -> dict[str, Tensor]:
    """Apply a scaling or sign flip; the network's function is unchanged."""
    spec.check_state_dict(state_dict)
    out = {k: v.clone() for k, v in state_dict.items()}
    for name, factors in scaling.factors.items():
        space = spec.space(name)
        rules = space.scale_rules if scaling.kind == "scale" else space.sign_rules
        if not rules:
            raise SpecError(f"space {name!r} has no {scaling.kind} symmetry "
                            f"(its symmetries: {', '.join(space.symmetries) or 'none'})")
        if factors.shape != (space.size,):
            raise SpecError(f"{scaling.kind} factors of space {name!r} have shape "
                            f"{list(factors.shape)}, expected [{space.size}]")
        if scaling.kind == "scale" and not bool((factors > 0).all()):
            raise SpecError(f"scale factors of space {name!r} must be positive")
        for rule in rules:
            t = out[rule.parameter]
            block = spec.parameter(rule.parameter).axes[rule.axis]
            block = block.block if block is not None else 1
            f = factors.to(t.dtype).repeat_interleave(block) ** rule.power
            shape = [1] * t.dim()
            shape[rule.axis] = -1
            out[rule.parameter] = t * f.reshape(shape)
    return out
