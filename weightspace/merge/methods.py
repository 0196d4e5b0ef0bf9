"""Data-free merge methods: pure functions on state dicts.

Every function takes state dicts (``Mapping[str, Tensor]``: parameters *and*
buffers) of one architecture and returns a new ``dict`` in the key order of
its first state-dict argument. Nothing is modified in place.

Conventions shared by all methods:

* every state dict must have the same keys and, per key, the same shape; a
  difference raises :class:`~weightspace.errors.WeightspaceError` naming the
  model and the key;
* a NaN or infinite value raises :class:`~weightspace.spec.NonFiniteError`
  (a ``WeightspaceError``) naming the model and the key;
* floating tensors (weights, biases and floating buffers such as BatchNorm's
  ``running_mean``/``running_var``) are combined by the method's formula,
  computed in at least float32 and cast back to the first argument's dtype;
* non-floating tensors (``num_batches_tracked`` …) are copied from the first
  state-dict argument (``state_a``, ``states[0]`` or ``base``).

Merged BatchNorm statistics are only a starting point: re-estimate them on
data with :func:`weightspace.merge.reset_batchnorm` (Jordan et al. 2023).

Methods:

* :func:`interpolate` / :func:`average` — linear interpolation and weighted
  averaging ("model soups", Wortsman et al. 2022); what a permutation
  alignment (Ainsworth et al. 2023, "Git Re-Basin") is for.
* :func:`task_arithmetic` — Ilharco et al. 2023, "Editing Models with Task
  Arithmetic" (ICLR 2023): ``θ = θ_base + λ Σ_i w_i (θ_i − θ_base)``.
* :func:`ties` — Yadav et al. 2023, "TIES-Merging: Resolving Interference
  When Merging Models" (NeurIPS 2023): trim, elect sign, disjoint mean.
* :func:`dare` — Yu et al. 2024, "Language Models are Super Mario: Absorbing
  Abilities from Homologous Models as a Free Lunch" (ICML 2024): random drop
  and rescale of the task vectors, then task arithmetic or TIES.

:data:`MERGE_METHODS` registers each method once, as a :class:`MergeMethod`
(function, description, paper, and what a config may set — read from the
function's signature); its names are the ``merge_method`` values of a merge
config (:mod:`weightspace.merge.config`) and :func:`merge` dispatches on them.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.registry import Entry, Parameter, Registry
from weightspace.spec import check_finite

logger = logging.getLogger(__name__)

StateDict = Mapping[str, Tensor]

__all__ = [
    "MERGE_METHODS",
    "MergeMethod",
    "check_density",
    "average",
    "dare",
    "interpolate",
    "merge",
    "task_arithmetic",
    "ties",
]


# ----------------------------------------------------------------------------- checks
def _check_states(states: Sequence[StateDict], labels: Sequence[str],
                  parameters: Sequence[str]) -> list[str]:
    """Same keys, tensors, same shapes, finite floats; returns the key order.

    ``labels[i]`` names state dict ``i`` in messages (``"model 1"``) and
    ``parameters[i]`` the argument that held it (``"states"``, ``"base"``).
    """
    if not states:
        raise WeightspaceError("no state dicts to merge", parameter="states")
    for state, label, parameter in zip(states, labels, parameters, strict=True):
        if not isinstance(state, Mapping):
            raise WeightspaceError(f"{label} is a {type(state).__name__}, not a state dict (a "
                                   f"mapping from parameter names to tensors)", parameter=parameter)
    first, first_label = states[0], labels[0]
    keys = list(first)
    key_set = set(keys)
    for state, label, parameter in zip(states[1:], labels[1:], parameters[1:], strict=True):
        for key in keys:
            if key not in state:
                raise WeightspaceError(f"{label} has no key {key!r} that {first_label} has; are "
                                       f"these checkpoints of the same architecture?",
                                       parameter=parameter)
        for key in state:
            if key not in key_set:
                raise WeightspaceError(f"{label} has a key {key!r} that {first_label} does not "
                                       f"have; are these checkpoints of the same architecture?",
                                       parameter=parameter)
    for state, label, parameter in zip(states, labels, parameters, strict=True):
        for key in keys:
            value = state[key]
            if not isinstance(value, Tensor):
                raise WeightspaceError(f"{label}: entry {key!r} is a {type(value).__name__}, "
                                       f"not a tensor", parameter=parameter)
            if value.shape != first[key].shape:
                raise WeightspaceError(f"{label}: entry {key!r} has shape {list(value.shape)} "
                                       f"but {first_label} has {list(first[key].shape)}",
                                       parameter=parameter)
        check_finite(state, label, keys)
    return keys


def _labels(n: int, base: bool = False) -> tuple[list[str], list[str]]:
    """Message labels and argument names of ``[base,] states[0..n-1]``."""
    labels = (["base model"] if base else []) + [f"model {i}" for i in range(n)]
    return labels, (["base"] if base else []) + ["states"] * n


def _check_weights(weights: Sequence[float] | None, n: int, positive: bool = False) -> list[float]:
    if weights is None:
        return [1.0] * n
    if isinstance(weights, Tensor):
        weights = weights.tolist()
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise WeightspaceError(f"weights has {len(weights)} entries for {n} models",
                               parameter="weights")
    for i, w in enumerate(weights):
        if not math.isfinite(w):
            raise WeightspaceError(f"weight of model {i} is {w}; weights must be finite",
                                   parameter="weights")
        if positive and w <= 0:
            raise WeightspaceError(f"weight of model {i} is {w}; this method needs positive "
                                   f"weights", parameter="weights")
    return weights


def check_density(density: Any) -> float:
    """``density`` as a float in ``(0, 1]``, the fraction of task-vector entries kept.

    Raises:
        WeightspaceError: not a number in ``(0, 1]`` (``parameter="density"``).
    """
    if isinstance(density, bool) or not isinstance(density, (int, float)) \
            or not 0.0 < float(density) <= 1.0:
        raise WeightspaceError(f"density must be in (0, 1] (the fraction of task-vector entries "
                               f"kept), got {density!r}", parameter="density")
    return float(density)


def _check_density(density: float | Sequence[float], n: int) -> list[float]:
    values = [density] * n if isinstance(density, (int, float)) else list(density)
    if len(values) != n:
        raise WeightspaceError(f"density has {len(values)} entries for {n} models",
                               parameter="density")
    out = []
    for i, d in enumerate(values):
        try:
            out.append(check_density(d))
        except WeightspaceError:
            raise WeightspaceError(f"density of model {i} is {d!r}; it must be in (0, 1] (the "
                                   f"fraction of task-vector entries kept)",
                                   parameter="density") from None
    return out


def _check_scalar(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WeightspaceError(f"{name} must be a finite number, got {value!r}", parameter=name)
    return float(value)


def _check_integer(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WeightspaceError(f"{name} must be an integer, got {value!r}", parameter=name)
    return value


def _check_boolean(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise WeightspaceError(f"{name} must be true or false, got {value!r}", parameter=name)
    return value


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _task_vectors(base: StateDict, states: Sequence[StateDict], key: str) -> tuple[Tensor, Tensor]:
    """``(base[key], stack of θ_i[key] − base[key])`` in the working dtype."""
    b = base[key]
    dtype = _work_dtype(b)
    b = b.detach().to(dtype)
    return b, torch.stack([s[key].detach().to(device=b.device, dtype=dtype) - b for s in states])


def _broadcast(values: Sequence[float], like: Tensor) -> Tensor:
    """``[n]`` values as a ``[n, 1, …]`` tensor that broadcasts over ``like[0]``."""
    t = torch.tensor(values, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1)))


# ------------------------------------------------------------------------- methods
def interpolate(state_a: StateDict, state_b: StateDict, lam: float) -> dict[str, Tensor]:
    """Linear interpolation ``(1 − lam)·θ_A + lam·θ_B`` of two state dicts.

    ``lam = 0`` returns A and ``lam = 1`` returns B exactly (floating entries);
    ``lam`` outside ``[0, 1]`` extrapolates. Align B to A first (weight or
    activation matching, Ainsworth et al. 2023) unless both come from a common
    parent: without alignment the midpoint of two independently trained
    networks is usually poor.

    Raises:
        WeightspaceError: different keys/shapes, NaN/Inf values (naming the model
            and key), or a non-finite ``lam``.
    """
    lam = _check_scalar("lam", lam)
    keys = _check_states([state_a, state_b], ["model 0 (state_a)", "model 1 (state_b)"],
                         ["state_a", "state_b"])
    out = {}
    for key in keys:
        a = state_a[key]
        if not a.is_floating_point():
            out[key] = a.detach().clone()
            continue
        dtype = _work_dtype(a)
        b = state_b[key].detach().to(device=a.device, dtype=dtype)
        out[key] = ((1.0 - lam) * a.detach().to(dtype) + lam * b).to(a.dtype)
    return out


def average(states: Sequence[StateDict], weights: Sequence[float] | None = None
            ) -> dict[str, Tensor]:
    """Weighted mean ``Σ_i w_i θ_i / Σ_i w_i`` of state dicts (equal weights by
    default). Weights are normalised, as mergekit's ``linear`` method does by
    default ("model soups", Wortsman et al. 2022).

    Raises:
        WeightspaceError: mismatched keys/shapes, NaN/Inf values, bad weights
            (wrong count, non-finite, or summing to zero).
    """
    states = list(states)
    keys = _check_states(states, *_labels(len(states)))
    w = _check_weights(weights, len(states))
    total = sum(w)
    if abs(total) < 1e-12:
        raise WeightspaceError(f"weights {w} sum to zero; average needs a non-zero total weight",
                               parameter="weights")
    out = {}
    for key in keys:
        first = states[0][key]
        if not first.is_floating_point():
            out[key] = first.detach().clone()
            continue
        dtype = _work_dtype(first)
        stacked = torch.stack([s[key].detach().to(device=first.device, dtype=dtype)
                               for s in states])
        out[key] = ((_broadcast(w, stacked) * stacked).sum(0) / total).to(first.dtype)
    return out


def task_arithmetic(base: StateDict, states: Sequence[StateDict], scaling: float = 1.0,
                    weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """Task arithmetic (Ilharco et al. 2023): ``θ = θ_base + scaling · Σ_i w_i τ_i``
    with task vectors ``τ_i = θ_i − θ_base`` (weights default to 1, not
    normalised; ``scaling`` is the paper's λ and mergekit's ``lambda``).

    With one model, ``scaling = 1`` and weight 1 this returns that model.

    Raises:
        WeightspaceError: mismatched keys/shapes, NaN/Inf values, bad weights.
    """
    states = list(states)
    keys = _check_states([base, *states], *_labels(len(states), base=True))
    scaling = _check_scalar("scaling", scaling)
    w = _check_weights(weights, len(states))
    out = {}
    for key in keys:
        if not base[key].is_floating_point():
            out[key] = base[key].detach().clone()
            continue
        b, tau = _task_vectors(base, states, key)
        out[key] = (b + scaling * (_broadcast(w, tau) * tau).sum(0)).to(base[key].dtype)
    return out


def _trim(tau: Tensor, density: float) -> Tensor:
    """Keep the ``ceil(density · n)`` entries of largest magnitude of one task
    vector's tensor, zero the rest (TIES step 1)."""
    n = tau.numel()
    k = min(n, math.ceil(density * n - 1e-9))
    if k >= n:
        return tau.clone()
    flat = tau.reshape(-1)
    keep = torch.zeros(n, dtype=torch.bool, device=tau.device)
    keep[flat.abs().topk(k).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(tau.shape)


def _elect_and_mean(tau: Tensor, weights: Sequence[float]) -> Tensor:
    """TIES steps 2 and 3 on stacked sparse task vectors ``[n, *shape]``.

    Elected sign ``γ = sgn(Σ_i w_i τ_i)`` (the sign of the larger total mass);
    disjoint mean ``Σ_{i∈A} w_i τ_i / Σ_{i∈A} w_i`` over the models ``A`` whose
    entry is non-zero with the elected sign (0 where ``A`` is empty).
    """
    w = _broadcast(weights, tau)
    weighted = w * tau
    elected = torch.sign(weighted.sum(0))
    agree = (torch.sign(tau) == elected) & (tau != 0)
    numerator = torch.where(agree, weighted, torch.zeros_like(weighted)).sum(0)
    denominator = torch.where(agree, w.expand_as(tau), torch.zeros_like(tau)).sum(0)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30),
                       torch.zeros_like(numerator))


def ties(base: StateDict, states: Sequence[StateDict], density: float | Sequence[float] = 0.2,
         scaling: float = 1.0, weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """TIES-Merging (Yadav et al. 2023).

    For every floating tensor, with task vectors ``τ_i = θ_i − θ_base``:

    1. **Trim**: keep the ``ceil(density · n)`` entries of largest ``|τ_i|`` of
       each model's tensor (per tensor, as mergekit does; the paper trims
       each whole task vector), zero the rest;
    2. **Elect sign**: ``γ = sgn(Σ_i w_i τ̂_i)`` per entry (the sign with the
       larger total magnitude);
    3. **Disjoint mean**: average, per entry, only the trimmed values whose
       sign agrees with ``γ``: ``τ_m = Σ_{i∈A} w_i τ̂_i / Σ_{i∈A} w_i``;

    and return ``θ_base + scaling · τ_m``. With the default weights (all 1)
    steps 2–3 are exactly the paper's; positive weights weigh both the
    election and the mean (mergekit's ``ties`` with ``normalize: true``).

    Args:
        density: fraction kept in step 1, in ``(0, 1]``; one value or one per
            model. The paper's default keeps the top 20%.
        scaling: λ of the paper (1 by default).
        weights: positive per-model weights (default all 1).

    Raises:
        WeightspaceError: mismatched keys/shapes, NaN/Inf values, bad density,
            scaling or weights.
    """
    states = list(states)
    keys = _check_states([base, *states], *_labels(len(states), base=True))
    scaling = _check_scalar("scaling", scaling)
    densities = _check_density(density, len(states))
    w = _check_weights(weights, len(states), positive=True)
    out = {}
    for key in keys:
        if not base[key].is_floating_point():
            out[key] = base[key].detach().clone()
            continue
        b, tau = _task_vectors(base, states, key)
        trimmed = torch.stack([_trim(t, d) for t, d in zip(tau, densities, strict=True)])
        out[key] = (b + scaling * _elect_and_mean(trimmed, w)).to(base[key].dtype)
    return out


def _dare_seed(seed: int, model: int, key: str) -> int:
    """A seed per (seed, model, key): the mask of one tensor does not depend
    on which other tensors the state dict holds or their order."""
    digest = hashlib.blake2b(f"{seed}\0{model}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _drop(tau: Tensor, density: float, seed: int, rescale: bool) -> Tensor:
    if density >= 1.0:
        return tau.clone()
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float64) < density
    kept = torch.where(keep.to(tau.device), tau, torch.zeros_like(tau))
    return kept / density if rescale else kept


def dare(base: StateDict, states: Sequence[StateDict], density: float | Sequence[float] = 0.5,
         scaling: float = 1.0, weights: Sequence[float] | None = None, seed: int = 0,
         rescale: bool = True, ties: bool = False) -> dict[str, Tensor]:
    """DARE, Drop And REscale (Yu et al. 2024).

    Each entry of every task vector ``τ_i = θ_i − θ_base`` is kept with
    probability ``density`` (dropped with probability ``1 − density``) and the
    kept entries are divided by ``density`` (``rescale=True``), so the
    expected task vector is unchanged. The sparse task vectors are then
    combined by task arithmetic, ``θ_base + scaling · Σ_i w_i τ̃_i`` (mergekit's
    ``dare_linear``), or with ``ties=True`` by TIES' sign election and
    disjoint mean, ``θ_base + scaling · τ_m`` (mergekit's ``dare_ties``).

    The masks are deterministic: each (seed, model index, key) seeds its own
    CPU generator, so a tensor's mask does not depend on the other keys.

    Args:
        density: keep probability in ``(0, 1]``; one value or one per model.
        scaling: λ applied to the combined task vector.
        weights: per-model weights (default all 1; positive with ``ties``).
        seed: random seed of the drop masks.
        rescale: divide the kept entries by ``density`` (the paper's rescale).
        ties: combine with TIES sign election + disjoint mean instead of a sum.

    Raises:
        WeightspaceError: mismatched keys/shapes, NaN/Inf values, bad density,
            scaling, weights or seed.
    """
    states = list(states)
    keys = _check_states([base, *states], *_labels(len(states), base=True))
    scaling = _check_scalar("scaling", scaling)
    densities = _check_density(density, len(states))
    w = _check_weights(weights, len(states), positive=ties)
    seed = _check_integer("seed", seed)
    out = {}
    for key in keys:
        if not base[key].is_floating_point():
            out[key] = base[key].detach().clone()
            continue
        b, tau = _task_vectors(base, states, key)
        dropped = torch.stack([
            _drop(t, d, _dare_seed(seed, i, key), rescale)
            for i, (t, d) in enumerate(zip(tau, densities, strict=True))
        ])
        if ties:
            delta = _elect_and_mean(dropped, w)
        else:
            delta = (_broadcast(w, dropped) * dropped).sum(0)
        out[key] = (b + scaling * delta).to(base[key].dtype)
    return out


# ------------------------------------------------------------------------ registry
#: Arguments of a merge function that carry the models rather than settings.
_DATA_ARGUMENTS = ("base", "states", "weights")


@dataclass(frozen=True)
class MergeMethod(Entry):
    """A merge method: its function and what a merge config may set for it.

    The function is ``f(states, weights=None, **params)``, or
    ``f(base, states, weights=None, **params)`` for a method on task vectors;
    every other parameter of its signature is a *global* parameter of the
    method, with the signature's default.

    Attributes:
        per_model: global parameters a model may also set for itself (the
            function then takes one value per model), besides its ``weight``.
        aliases: other names of the method (mergekit's) and the parameters
            each name fixes, e.g. ``{"dare_ties": {"ties": True}}``.
        positive_weights: the method needs positive weights; or the name of
            the boolean parameter that makes it need them (``dare``'s ``ties``).
        normalises_weights: the method divides by the sum of the weights,
            which then must not be zero.
        checks: validators of the parameters whose valid values the type of
            the default does not tell (``density`` in ``(0, 1]``); each
            returns the value to use or raises :class:`WeightspaceError`.
    """

    per_model: tuple[str, ...] = ()
    aliases: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    positive_weights: bool | str = False
    normalises_weights: bool = False
    checks: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        names = {p.name for p in self.global_parameters()}
        flag = [self.positive_weights] if isinstance(self.positive_weights, str) else []
        for name in (*self.per_model, *self.checks, *flag):
            if name not in names:
                raise WeightspaceError(f"merge method {self.name!r}: {name!r} is not a parameter "
                                       f"of {getattr(self.load(), '__name__', self.target)}",
                                       parameter="per_model")

    @property
    def needs_base(self) -> bool:
        """Whether the function's first argument is a base model (task vectors)."""
        parameters = self.parameters()
        return bool(parameters) and parameters[0].name == "base"

    def global_parameters(self) -> tuple[Parameter, ...]:
        """The method's settings: its function's parameters besides the models
        and their weights, with their defaults."""
        return tuple(p for p in self.parameters() if p.name not in _DATA_ARGUMENTS)

    def model_parameters(self) -> tuple[str, ...]:
        """What one model may set for itself: ``weight`` and :attr:`per_model`."""
        return ("weight", *self.per_model)

    def needs_positive_weights(self, parameters: Mapping[str, Any]) -> bool:
        """Whether the weights must be positive with these global ``parameters``."""
        if isinstance(self.positive_weights, str):
            return bool(parameters.get(self.positive_weights,
                                       self.parameter(self.positive_weights).default))
        return self.positive_weights

    def check(self, name: str, value: Any) -> Any:
        """``value`` of global parameter ``name``, validated: by :attr:`checks`,
        else by the type of its default (bool, int, float).

        Raises:
            WeightspaceError: a value of the wrong type or range, or a
                parameter the method does not take (``parameter=name``).
        """
        if name in self.checks:
            return self.checks[name](value)
        default = self.parameter(name).default
        if isinstance(default, bool):
            return _check_boolean(name, value)
        if isinstance(default, int):
            return _check_integer(name, value)
        if isinstance(default, float):
            return _check_scalar(name, value)
        return value


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method", (
    MergeMethod("average", average,
                "weighted mean of the models (model soups)",
                reference="Wortsman et al. 2022, Model soups, ICML 2022",
                aliases={"linear": {}}, normalises_weights=True),
    MergeMethod("task-arith", task_arithmetic,
                "base + scaling * weighted sum of the task vectors",
                reference="Ilharco et al. 2023, Editing Models with Task Arithmetic, ICLR 2023",
                aliases={"task_arithmetic": {}}),
    MergeMethod("ties", ties,
                "trim the task vectors, elect a sign per entry, disjoint mean",
                reference="Yadav et al. 2023, TIES-Merging, NeurIPS 2023",
                per_model=("density",), positive_weights=True,
                checks={"density": check_density}),
    MergeMethod("dare", dare,
                "drop and rescale task-vector entries, then task arithmetic or TIES",
                reference="Yu et al. 2024, Language Models are Super Mario, ICML 2024",
                per_model=("density",), aliases={"dare_linear": {"ties": False},
                                                 "dare_ties": {"ties": True}},
                positive_weights="ties", checks={"density": check_density}),
), parameter="method")
"""Merge methods by their config name (``merge_method`` of a merge config).
Register a :class:`MergeMethod` here and :func:`merge`, merge configs and the
CLI accept it."""


def merge(method: str, states: Sequence[StateDict], base: StateDict | None = None,
          weights: Sequence[float] | None = None, **params: Any) -> dict[str, Tensor]:
    """Run the method called ``method`` (a name of :data:`MERGE_METHODS`).

    ``base`` is required by the methods on task vectors (``task-arith``,
    ``ties``, ``dare``) and refused by the others; ``params`` are the
    method's global parameters (``scaling``, ``density``, ``seed``,
    ``rescale``, ``ties``).

    Raises:
        WeightspaceError: unknown method, a missing/unexpected base, or a
            parameter the method does not take.
    """
    entry = MERGE_METHODS.get(method)
    accepted = [p.name for p in entry.global_parameters()]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise WeightspaceError(f"merge method {method!r} does not take {', '.join(unknown)}; it "
                               f"takes {', '.join(sorted(accepted)) or 'no parameters'}",
                               parameter=unknown[0])
    logger.debug("merging %d models with %s %s", len(states), method, params)
    if entry.needs_base:
        if base is None:
            raise WeightspaceError(f"merge method {method!r} needs a base model (the task "
                                   f"vectors are differences to it)", parameter="base")
        return entry(base, states, weights=weights, **params)
    if base is not None:
        raise WeightspaceError(f"merge method {method!r} does not use a base model",
                               parameter="base")
    return entry(states, weights=weights, **params)
