"""Data augmentations for flat parameter vectors, for training metanetworks.

A metanetwork (DWSNets, Navon et al. 2023; NFN, Zhou et al. 2023; Neural
Graphs, Kofinas et al. 2024; GMN, Lim et al. 2024) reads a network's weights
as its input. Its training data can be augmented like images are: either with
*symmetries* of the weight space, which change the weights but not the
function the network computes (:class:`RandomPermutation`,
:class:`RandomScaling`, :class:`RandomSignFlip`, :class:`SirenBiasShift`), or
with small perturbations (:class:`GaussianNoise`, :class:`WeightDropout`).
:class:`Compose` and :class:`RandomApply` combine them.

Every transform takes flat vectors in the spec's canonical order
(:meth:`~weightspace.spec.containers.WeightSpaceSpec.flatten`), one network
(``[P]``) or a batch of networks of one architecture (``[B, P]``); each row of
a batch gets its own random draw. Transforms never modify their input, and all
randomness comes from the ``generator`` argument (a CPU
:class:`torch.Generator`; the global RNG when it is ``None``), so a seeded
generator gives the same result on every device. Which parameters a symmetry
moves comes from the spec (:attr:`NeuronSpace.scale_rules` /
:attr:`NeuronSpace.sign_rules`), so the transforms work on any traced
architecture, not only MLPs. Example::

    spec = weightspace.trace(model, (1, 2))
    augment = Compose([RandomPermutation(), RandomSignFlip(), GaussianNoise(0.01)])
    batch = augment(spec.flatten_many(state_dicts), spec, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.spec.containers import ScaleRule, WeightSpaceSpec
from weightspace.spec.symmetry import cpu_uniform, multiply_rules_flat, permutation_index

__all__ = [
    "Compose",
    "GaussianNoise",
    "RandomApply",
    "RandomPermutation",
    "RandomScaling",
    "RandomSignFlip",
    "SirenBiasShift",
    "WeightDropout",
    "WeightTransform",
]


# ------------------------------------------------------------------ helpers
def _copy(params: Tensor) -> Tensor:
    """A contiguous copy, so that parameter slices can be viewed in their shapes."""
    return params.clone(memory_format=torch.contiguous_format)


def _learnable_mask(spec: WeightSpaceSpec, device: torch.device) -> Tensor:
    """``[P]`` bool: ``True`` on parameters, ``False`` on buffers (running
    statistics, ``num_batches_tracked``), which are not weights: noise could
    make a running variance negative and dropout would zero it."""
    mask = torch.zeros(spec.num_parameters, dtype=torch.bool)
    for p in spec.parameters:
        if not p.is_buffer:
            start, end = spec.offsets[p.name]
            mask[start:end] = True
    return mask.to(device)


def _activations(spec: WeightSpaceSpec) -> str:
    """``"relu (layers.0, layers.3)"``-style summary of the hidden spaces' activations."""
    by_act: dict[str, list[str]] = {}
    for s in spec.permutable_spaces:
        by_act.setdefault(s.activation, []).append(s.name)
    if not by_act:
        return "none (the spec has no hidden space)"
    return ", ".join(f"{act} ({', '.join(names)})" for act, names in by_act.items())


# -------------------------------------------------------------- base class
class WeightTransform(ABC):
    """Base class of the weight-space augmentations.

    Subclasses implement :meth:`forward` on a ``[B, P]`` batch;
    :meth:`__call__` checks the input, accepts a single ``[P]`` vector too, and
    gives the result the input's shape.

    Shapes:
        - params: ``[P]`` or ``[B, P]`` with ``P = spec.num_parameters``.
        - output: same shape, dtype and device as ``params``.
    """

    def __call__(
        self, params: Tensor, spec: WeightSpaceSpec, generator: torch.Generator | None = None
    ) -> Tensor:
        if not isinstance(params, Tensor):
            raise TypeError(
                f"{type(self).__name__} expects a tensor of flat parameters, "
                f"got {type(params).__name__}"
            )
        if params.dim() not in (1, 2):
            raise WeightspaceError(
                f"{type(self).__name__} expects flat parameters of shape [P] or [B, P], "
                f"got shape {list(params.shape)}"
            )
        if params.shape[-1] != spec.num_parameters:
            raise WeightspaceError(
                f"{type(self).__name__} got flat parameters with {params.shape[-1]} values "
                f"in the last dimension, but the spec has {spec.num_parameters} parameters; "
                f"are they from another architecture?"
            )
        if not params.is_floating_point():
            raise WeightspaceError(
                f"{type(self).__name__} expects floating-point parameters, got {params.dtype}"
            )
        batch = params if params.dim() == 2 else params.unsqueeze(0)
        out = self.forward(batch, spec, generator)
        return out if params.dim() == 2 else out.squeeze(0)

    @abstractmethod
    def forward(
        self, params: Tensor, spec: WeightSpaceSpec, generator: torch.Generator | None
    ) -> Tensor:
        """Transform a checked ``[B, P]`` batch; must return a new tensor."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ------------------------------------------------------------ permutations
class RandomPermutation(WeightTransform):
    """Permute the neurons of every permutable (hidden) space at random.

    Hidden neurons have no order: permuting them together with their incoming
    and outgoing weights gives the same function. This is the symmetry that
    DWSNets (Navon et al. 2023), NFN (Zhou et al. 2023) and Neural Graphs
    (Kofinas et al. 2024) build into their architectures and that
    non-equivariant metanetworks learn from augmentation. Uniform over the
    permutations :meth:`WeightSpaceSpec.random_permutation` can draw (GroupNorm
    groups are kept together); buffers such as BatchNorm running statistics
    move with their channels. Function-preserving exactly (a gather).

    A batch is permuted with one gather and a ``[B, P]`` index built for all
    rows at once (:func:`weightspace.spec.symmetry.permutation_index` of a
    batched :class:`~weightspace.spec.symmetry.Permutation`).

    Shapes:
        - params: ``[P]`` or ``[B, P]``.
        - output: same as ``params``.
    """

    def forward(self, params, spec, generator):
        if not spec.permutable_spaces:
            return params.clone()
        perm = spec.random_permutation(generator, batch_size=params.shape[0])
        index = permutation_index(spec, perm, check=False, device=params.device)
        return params.gather(1, index)


# ---------------------------------------------------------------- scalings
class RandomScaling(WeightTransform):
    """Scale the neurons of every space with a positive-scaling symmetry.

    ``relu(a·z) = a·relu(z)`` for ``a > 0``: multiplying the weights and bias
    that produce a ReLU-like (ReLU, leaky ReLU, identity) neuron by ``a`` and
    dividing the weights that read it by ``a`` keeps the function (Neyshabur
    et al. 2015; the ``pos_scale`` augmentation of the DWSNets code). Factors
    are log-uniform in ``[low, high]``, one per neuron and row, drawn like
    :meth:`WeightSpaceSpec.random_scaling`. Spaces without the symmetry
    (tanh, sine, a normalised layer …) are left unchanged. Function-preserving
    up to float rounding.

    Args:
        low: smallest factor (> 0).
        high: largest factor (>= ``low``).

    Shapes:
        - params: ``[P]`` or ``[B, P]``.
        - output: same as ``params``.
    """

    def __init__(self, low: float = 0.5, high: float = 2.0) -> None:
        if not 0 < low <= high:
            raise WeightspaceError(f"RandomScaling needs 0 < low <= high, got low={low}, high={high}")
        self.low = float(low)
        self.high = float(high)

    def forward(self, params, spec, generator):
        scaling = spec.random_scaling(generator, self.low, self.high, batch_size=params.shape[0])
        return spec.rescale_flat(params, scaling)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(low={self.low}, high={self.high})"


class RandomSignFlip(WeightTransform):
    """Flip the sign of neurons whose activation is odd (tanh, sine …).

    ``tanh(−z) = −tanh(z)``: negating the weights and bias that produce a
    neuron and the weights that read it keeps the function (Chen, Lu and
    Hecht-Nielsen 1993; for tanh networks and SIREN INRs see also
    Kalogeropoulos et al. 2024, "Scale Equivariant Graph Metanetworks"). Each
    neuron is flipped with probability ``p``, independently per row. Spaces
    without the symmetry (ReLU …) are left unchanged. Function-preserving
    exactly.

    Args:
        p: probability of flipping each neuron.

    Shapes:
        - params: ``[P]`` or ``[B, P]``.
        - output: same as ``params``.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise WeightspaceError(f"RandomSignFlip needs 0 <= p <= 1, got p={p}")
        self.p = float(p)

    def forward(self, params, spec, generator):
        flips = spec.random_sign_flip(generator, self.p, batch_size=params.shape[0])
        return spec.rescale_flat(params, flips)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class SirenBiasShift(WeightTransform):
    r"""Shift the biases of sine neurons by whole (and half) periods.

    A SIREN neuron computes :math:`\sin(\omega_0 (w^\top x + b))`, which is
    unchanged when :math:`b` moves by :math:`k \cdot 2\pi/\omega_0` for an
    integer :math:`k`. With ``half_periods=True`` the shift may also be an odd
    multiple of :math:`\pi/\omega_0`: since :math:`\sin(z + \pi) = -\sin(z)`,
    the weights reading that neuron are then negated to compensate. Per neuron
    and row the shift is uniform over the multiples of :math:`\pi/\omega_0`
    (``half_periods=True``) or of :math:`2\pi/\omega_0` (``False``) of at most
    ``max_periods`` whole periods either way, zero included. Function-preserving
    up to float rounding (:math:`\omega_0 = 30` amplifies the rounding of the
    shifted bias; a float32 network changes by about ``1e-6``).

    Which bias is shifted comes from the spec: in every hidden space whose
    activation is ``sin`` and that has a sign symmetry, the bias (or, after a
    norm layer, the norm's bias) that produces the neuron. This assumes, as in
    SIREN, that the pre-activation feeds only the sine. The spec does not
    record :math:`\omega_0` (it is a constant of the activation), so give it:
    a float for every sine space, or a mapping that names each of them, e.g.
    ``{"net.0": model.w0_initial, "net.2": model.w0}`` for
    :class:`~weightspace.models.SIREN` (its first layer has its own
    ``w0_initial``).

    Args:
        w0: the frequency :math:`\omega_0`, a float or ``space name -> w0``.
        max_periods: the largest shift, in whole periods (>= 1).
        half_periods: also shift by half periods, negating outgoing weights.

    Raises:
        ValueError: (when called) the spec has no sine space with a bias, or
            the ``w0`` mapping does not name exactly those spaces.

    Shapes:
        - params: ``[P]`` or ``[B, P]``.
        - output: same as ``params``.
    """

    def __init__(
        self,
        w0: float | Mapping[str, float] = 30.0,
        max_periods: int = 1,
        half_periods: bool = True,
    ) -> None:
        if isinstance(w0, Mapping):
            w0 = {str(k): float(v) for k, v in w0.items()}
            values = list(w0.values())
        else:
            w0 = float(w0)
            values = [w0]
        if not all(v > 0 and math.isfinite(v) for v in values):
            raise WeightspaceError(f"SirenBiasShift needs positive, finite w0, got {w0}")
        if int(max_periods) != max_periods or max_periods < 1:
            raise WeightspaceError(f"SirenBiasShift needs an integer max_periods >= 1, got {max_periods}")
        self.w0 = w0
        self.max_periods = int(max_periods)
        self.half_periods = bool(half_periods)

    @staticmethod
    def _sine_biases(spec: WeightSpaceSpec) -> dict[str, tuple[ScaleRule, list[ScaleRule]]]:
        """``space -> (its bias rule, the rules of the weights that read it)``."""
        out = {}
        for s in spec.permutable_spaces:
            if s.activation != "sin" or not s.sign_rules:
                continue
            biases = [
                r for r in s.sign_rules
                if r.power == 1 and spec.parameter(r.parameter).role in ("bias", "norm_bias")
            ]
            if biases:
                # a norm's bias is added after the normalisation, so it is the
                # one that shifts the sine's argument directly
                biases.sort(key=lambda r: spec.parameter(r.parameter).role != "norm_bias")
                readers = [r for r in s.sign_rules if r.power == -1]
                out[s.name] = (biases[0], readers)
        return out

    def _w0_of(self, spaces: Sequence[str]) -> dict[str, float]:
        if not isinstance(self.w0, Mapping):
            return {name: self.w0 for name in spaces}
        missing = [n for n in spaces if n not in self.w0]
        extra = [n for n in self.w0 if n not in spaces]
        if missing or extra:
            raise WeightspaceError(
                f"SirenBiasShift w0 mapping must name exactly the sine spaces with a bias "
                f"{list(spaces)}; missing {missing}, not sine spaces {extra}"
            )
        return {n: self.w0[n] for n in spaces}

    def forward(self, params, spec, generator):
        targets = self._sine_biases(spec)
        if not targets:
            raise WeightspaceError(
                f"SirenBiasShift needs a hidden space with a sine activation and a bias; "
                f"the spec's hidden spaces have activations: {_activations(spec)}"
            )
        w0 = self._w0_of(list(targets))
        out = _copy(params)
        batch = params.shape[0]
        for name, (bias_rule, readers) in targets.items():
            size = spec.space(name).size
            # the shift in half periods (π/w0), symmetric about 0
            if self.half_periods:
                bound = 2 * self.max_periods
                halves = torch.randint(-bound, bound + 1, (batch, size), generator=generator)
                # sin(z + π) = −sin(z): the readers of a neuron shifted by an odd
                # number of half periods are negated
                odd = halves.remainder(2).to(torch.float64)
                multiply_rules_flat(spec, out, readers, 1.0 - 2.0 * odd)
            else:
                bound = self.max_periods
                halves = 2 * torch.randint(-bound, bound + 1, (batch, size), generator=generator)
            shift = halves.to(torch.float64) * (math.pi / w0[name])
            start, end = spec.offsets[bias_rule.parameter]
            block = spec.parameter(bias_rule.parameter).axes[bias_rule.axis].block
            out[:, start:end] += shift.repeat_interleave(block, dim=1).to(out.device, out.dtype)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(w0={self.w0}, max_periods={self.max_periods}, "
                f"half_periods={self.half_periods})")


# ------------------------------------------------------------ perturbations
class GaussianNoise(WeightTransform):
    """Add Gaussian noise to every parameter (buffers are left unchanged).

    With ``relative=True`` the standard deviation of the noise on each
    parameter tensor (``layers.0.weight`` …) is ``std`` times that tensor's
    own standard deviation in the same row, so layers of different scales are
    perturbed alike (the noise augmentation of DWSNets, Navon et al. 2023;
    their code adds ``std · w.std()`` as a constant, here it is zero-mean
    noise). A one-element tensor has no spread and is left unchanged
    (DWSNets skips those too). Not function-preserving.

    Args:
        std: the noise's standard deviation (absolute, or relative).
        relative: scale ``std`` by each tensor's standard deviation.

    Shapes:
        - params: ``[P]`` or ``[B, P]``.
        - output: same as ``params``.
    """

    def __init__(self, std: float = 0.01, relative: bool = False) -> None:
        if not (std >= 0 and math.isfinite(std)):
            raise WeightspaceError(f"GaussianNoise needs a finite std >= 0, got std={std}")
        self.std = float(std)
        self.relative = bool(relative)

    def forward(self, params, spec, generator):
        batch = params.shape[0]
        # drawn in float32 (float64 for float64 params) on the CPU, see cpu_uniform
        dtype = torch.float64 if params.dtype == torch.float64 else torch.float32
        noise = torch.randn((batch, spec.num_parameters), generator=generator, dtype=dtype)
        noise = noise.to(params.device, params.dtype) * self.std
        if self.relative:
            scale = torch.zeros_like(params)
            for p in spec.parameters:
                start, end = spec.offsets[p.name]
                if p.numel > 1:
                    scale[:, start:end] = params[:, start:end].std(dim=1, keepdim=True)
            noise = noise * scale
        learnable = _learnable_mask(spec, params.device)
        if bool(learnable.all()):
            return params + noise
        return params + noise * learnable

    def __repr__(self) -> str:
        return f"{type(self).__name__}(std={self.std}, relative={self.relative})"


class WeightDropout(WeightTransform):
    """Zero each parameter with probability ``p`` (buffers are left unchanged).

    Follows DWSNets (Navon et al. 2023) and Neural Graphs (Kofinas et al.
    2024), whose INR augmentation is ``F.dropout(w, p)`` on every weight *and*
    bias in training mode: kept values are multiplied by ``1 / (1 - p)`` so
    every entry keeps its expected value. ``rescale=False`` only zeroes
    (the kept values are unchanged). Not function-preserving.

    Args:
        p: probability of zeroing each value, in ``[0, 1)``.
        rescale: multiply the kept values by ``1 / (1 - p)``.

    Shapes:
        - params: ``[P]`` or ``[B, P]``.
        - output: same as ``params``.
    """

    def __init__(self, p: float = 0.1, rescale: bool = True) -> None:
        if not 0.0 <= p < 1.0:
            raise WeightspaceError(f"WeightDropout needs 0 <= p < 1, got p={p}")
        self.p = float(p)
        self.rescale = bool(rescale)

    def forward(self, params, spec, generator):
        learnable = _learnable_mask(spec, params.device)
        # float32 uniforms: half the memory of float64, resolution 2**-24 is plenty
        drop = cpu_uniform((params.shape[0], spec.num_parameters), generator, torch.float32) < self.p
        drop = drop.to(params.device)
        if not bool(learnable.all()):
            drop &= learnable
        out = params
        if self.rescale:  # like F.dropout: kept values times 1 / (1 - p), buffers times 1
            scale = torch.where(learnable, 1.0 / (1.0 - self.p), 1.0).to(params.dtype)
            out = params * scale
        return out.masked_fill(drop, 0.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, rescale={self.rescale})"


# -------------------------------------------------------------- combinators
#: Anything called like a :class:`WeightTransform`: ``(params, spec, generator) -> params``.
Transform = Callable[..., Tensor]


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


class Compose(WeightTransform):
    """Apply several transforms in order, all drawing from one generator.

    Args:
        transforms: the transforms (any callable with the
            :class:`WeightTransform` signature).

    Shapes:
        - params: ``[P]`` or ``[B, P]``.
        - output: same as ``params``.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        transforms = list(transforms)
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(
                    f"Compose expects transforms, but item {i} is a {type(t).__name__}"
                )
        self.transforms = transforms

    def forward(self, params, spec, generator):
        out = params
        for t in self.transforms:
            out = t(out, spec, generator)
        return out.clone() if out is params else out

    def __repr__(self) -> str:
        if not self.transforms:
            return f"{type(self).__name__}([])"
        inner = ",\n".join(_indent(repr(t)) for t in self.transforms)
        return f"{type(self).__name__}([\n{inner},\n])"


class RandomApply(WeightTransform):
    """Apply ``transform`` with probability ``p``, decided per row.

    In a batch each row is chosen independently; the transform sees only the
    chosen rows (the others are copied unchanged).

    Args:
        transform: the transform to apply.
        p: probability of applying it to each row.

    Shapes:
        - params: ``[P]`` or ``[B, P]``.
        - output: same as ``params``.
    """

    def __init__(self, transform: Transform, p: float = 0.5) -> None:
        if not callable(transform):
            raise TypeError(f"RandomApply expects a transform, got a {type(transform).__name__}")
        if not 0.0 <= p <= 1.0:
            raise WeightspaceError(f"RandomApply needs 0 <= p <= 1, got p={p}")
        self.transform = transform
        self.p = float(p)

    def forward(self, params, spec, generator):
        chosen = (cpu_uniform((params.shape[0],), generator) < self.p).nonzero().reshape(-1)
        out = params.clone()
        if len(chosen):
            chosen = chosen.to(params.device)
            out[chosen] = self.transform(params[chosen], spec, generator)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n{_indent(repr(self.transform))},\n    p={self.p},\n)"
