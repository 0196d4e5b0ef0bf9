"""Structured pruning: remove whole neurons/channels of a neuron space from
every parameter that touches them, giving a smaller model that really runs.

The spec says, for each hidden space, which axis of which parameter indexes
it — the incoming weights and bias of its producer, its norm parameters and
running statistics, the outgoing weights of every consumer and, for a
residual stream, all of these across the whole stream. Removing neuron ``i``
of a space therefore removes slice ``i`` of each of those axes, which is the
"dependency group" of DepGraph (Fang et al., CVPR 2023) derived from the
trace instead of hand-written rules.

Importance criteria:

* ``"l1"`` / ``"l2"``: the L1 norm / L2 norm of the neuron's whole group
  (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, use the
  producer's filters; the group norm is the DepGraph and Meta-Pruning
  criterion).
* ``"bn"``: the absolute norm scale γ (Liu et al., "Learning Efficient
  Convolutional Networks through Network Slimming", ICCV 2017).
* ``"taylor"``: the squared first-order Taylor estimate of the loss change,
  ``(Σ_group g·w)²`` summed over batches (Molchanov et al., "Importance
  Estimation for Neural Network Pruning", CVPR 2019).
* ``"random"``: uniform random scores, the control every criterion should
  beat.

Input and output spaces are never pruned (they are the data and the classes);
spaces whose GroupNorm groups constrain them are skipped.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from weightspace.errors import WeightspaceError
from weightspace.prune.cost import count_macs
from weightspace.registry import Entry, Registry
from weightspace.spec import WeightSpaceSpec
from weightspace.spec.symmetry import select_neurons

logger = logging.getLogger(__name__)

#: Roles that belong to a neuron's group for the norm criteria: what training
#: changes. Running statistics are data, not weights.
GROUP_ROLES = ("weight", "depthwise_weight", "bias", "norm_weight", "norm_bias")

#: Metadata key of a structurally pruned checkpoint: the new size of every
#: space that was pruned, so the architecture can be rebuilt before loading.
PRUNED_SIZES_METADATA = "weightspace.pruned_sizes"


class PruneError(WeightspaceError):
    """A pruning request that cannot be carried out; the message says why."""


def prunable_spaces(spec: WeightSpaceSpec) -> tuple[str, ...]:
    """Hidden spaces whose neurons can be removed: permutable ones, except
    those split into GroupNorm groups (removing a neuron would unbalance the
    groups)."""
    return tuple(s.name for s in spec.permutable_spaces if s.permutation_blocks == 1)


def _check_spaces(spec: WeightSpaceSpec, spaces: Iterable[str]) -> tuple[str, ...]:
    allowed = set(prunable_spaces(spec))
    spaces = tuple(spaces)
    for name in spaces:
        space = spec.space(name)
        if name not in allowed:
            why = (f"an {space.role} space" if not space.permutable else
                   f"split into {space.permutation_blocks} GroupNorm groups")
            raise PruneError(f"space {name!r} cannot be pruned: it is {why}. "
                             f"Pruneable spaces: {', '.join(sorted(allowed)) or 'none'}.")
    return spaces


# ------------------------------------------------------------------ importance
def _per_neuron(t: Tensor, axis: int, size: int, block: int) -> Tensor:
    """``t`` with every axis but ``axis`` summed away, ``[size]``."""
    moved = t.movedim(axis, 0).reshape(size, block, -1)
    return moved.sum(dim=(1, 2))


def group_sums(values: Mapping[str, Tensor], spec: WeightSpaceSpec,
               spaces: Iterable[str] | None = None,
               roles: Sequence[str] = GROUP_ROLES) -> dict[str, Tensor]:
    """For each space, the sum over its neurons' groups of ``values``.

    ``values`` maps parameter names to tensors of the parameters' shapes
    (e.g. ``|w|``, ``w²`` or ``g·w``); entry ``[i]`` of a space's result sums
    every value on slice ``i`` of every axis that indexes the space. A value
    on two axes of one space (none in feed-forward networks) counts twice.
    Differentiable.

    Shapes:
        values: parameter shapes. Returns ``{space: [size]}``.
    """
    spaces = set(prunable_spaces(spec) if spaces is None else spaces)
    out: dict[str, Tensor] = {}
    for space in spec.spaces:
        if space.name not in spaces:
            continue
        for ref in spec.axes_of(space.name):
            if ref.parameter not in values or spec.parameter(ref.parameter).role not in roles:
                continue
            part = _per_neuron(values[ref.parameter], ref.axis, space.size, ref.block)
            out[space.name] = out[space.name] + part if space.name in out else part
    return out


def group_norms(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec, p: int = 2,
                spaces: Iterable[str] | None = None) -> dict[str, Tensor]:
    """The L``p`` norm of each neuron's group of trainable parameters
    (``p`` = 1 or 2); differentiable, used as a group-sparsity penalty.

    Shapes:
        Returns ``{space: [size]}``.
    """
    if p == 1:
        return group_sums({k: v.abs() for k, v in state_dict.items()}, spec, spaces)
    if p == 2:
        squares = group_sums({k: v.square() for k, v in state_dict.items()}, spec, spaces)
        # the epsilon keeps the gradient finite at a neuron that is already zero
        return {k: (v + 1e-12).sqrt() for k, v in squares.items()}
    raise PruneError(f"group norm order p must be 1 or 2, got {p}")


def _batchnorm_scale(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec,
                     spaces: Sequence[str]) -> dict[str, Tensor]:
    out = group_sums({k: v.abs() for k, v in state_dict.items()}, spec, spaces,
                     roles=("norm_weight",))
    missing = [s for s in spaces if s not in out]
    if missing:
        raise PruneError(f"importance 'bn' needs a norm scale (γ) on every pruned space; "
                         f"{', '.join(missing)} has none. Use 'l1', 'l2' or 'taylor', or "
                         f"restrict the spaces.")
    return out


def taylor_importance(model: nn.Module, spec: WeightSpaceSpec,
                      batches: Iterable[tuple[Tensor, Tensor]],
                      loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                      spaces: Iterable[str] | None = None) -> dict[str, Tensor]:
    """First-order Taylor importance (Molchanov et al., CVPR 2019): for each
    batch, ``(Σ_group ∂L/∂w · w)²`` per neuron, summed over batches.

    ``model`` is used in eval mode so that BatchNorm statistics do not move;
    its parameters are not changed and no gradient is left on them.

    Shapes:
        batches: ``(inputs [B, ...], targets [B])`` pairs. Returns
        ``{space: [size]}``.
    """
    spaces = tuple(prunable_spaces(spec) if spaces is None else spaces)
    trainable = {p.name for p in spec.parameters if p.role in GROUP_ROLES}
    state = {k: v.detach() for k, v in model.state_dict().items()}
    was_training = model.training
    model.eval()
    total: dict[str, Tensor] = {}
    try:
        for inputs, targets in batches:
            params = {k: v.clone().requires_grad_(k in trainable) for k, v in state.items()}
            loss = loss_fn(functional_call(model, params, (inputs,)), targets)
            names = [k for k in params if k in trainable]
            grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
            products = {k: (g * params[k].detach()) for k, g in zip(names, grads, strict=True)
                        if g is not None}
            for space, value in group_sums(products, spec, spaces).items():
                total[space] = total.get(space, 0) + value.square()
    finally:
        model.train(was_training)
    if not total:
        raise PruneError("taylor importance needs at least one batch of data")
    return total


def _scored_spaces(spec: WeightSpaceSpec, spaces: Iterable[str] | None) -> tuple[str, ...]:
    return _check_spaces(spec, prunable_spaces(spec) if spaces is None else spaces)


def _l1_importance(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec,
                   spaces: Iterable[str] | None) -> dict[str, Tensor]:
    return group_norms(state_dict, spec, 1, _scored_spaces(spec, spaces))


def _l2_importance(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec,
                   spaces: Iterable[str] | None) -> dict[str, Tensor]:
    return group_norms(state_dict, spec, 2, _scored_spaces(spec, spaces))


def _norm_scale_importance(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec,
                           spaces: Iterable[str] | None) -> dict[str, Tensor]:
    if spaces is None:
        # network slimming scores the spaces that carry a norm scale; the
        # others (e.g. a classifier's hidden linear layers) keep every neuron
        normed = {s.name for s in spec.spaces
                  if any(spec.parameter(r.parameter).role == "norm_weight"
                         for r in spec.axes_of(s.name))}
        spaces = [s for s in prunable_spaces(spec) if s in normed]
        skipped = sorted(set(prunable_spaces(spec)) - normed)
        if skipped:
            logger.info("importance 'bn': spaces without a norm are not pruned: %s",
                        ", ".join(skipped))
        if not spaces:
            raise PruneError("importance 'bn' needs norm layers (γ); this network has none on "
                             "a prunable space. Use 'l1', 'l2' or 'taylor'.", parameter="method")
    return _batchnorm_scale(state_dict, spec, _scored_spaces(spec, spaces))


def _taylor_criterion(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec,
                      spaces: Iterable[str] | None, *, model: nn.Module | None = None,
                      batches: Iterable[tuple[Tensor, Tensor]] | None = None
                      ) -> dict[str, Tensor]:
    if model is None or batches is None:
        raise PruneError("importance 'taylor' needs the model and data (batches of inputs "
                         "and targets)", parameter="model" if model is None else "batches")
    scored = copy.deepcopy(model)
    scored.load_state_dict(dict(state_dict))
    return taylor_importance(scored, spec, batches, spaces=_scored_spaces(spec, spaces))


def _random_importance(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec,
                       spaces: Iterable[str] | None, *, seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {s: torch.rand(spec.space(s).size, generator=generator, dtype=torch.float64)
            for s in _scored_spaces(spec, spaces)}


#: :attr:`ImportanceCriterion.kind` values.
CRITERION_KINDS = ("magnitude", "data", "control")


@dataclass(frozen=True)
class ImportanceCriterion(Entry):
    """A neuron-importance criterion of :func:`neuron_importance`.

    The function is ``score(state_dict, spec, spaces, **needs) -> {space:
    [size]}``; ``spaces`` is ``None`` for the criterion's default. Its
    keyword parameters (``model``, ``batches``, ``seed``) are what it needs
    beyond the weights; :func:`neuron_importance` passes only those.

    Attributes:
        kind: ``"magnitude"`` (read from the weights alone), ``"data"``
            (needs the model and batches) or ``"control"`` (a baseline every
            criterion should beat).
    """

    kind: str = "magnitude"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_field("kind", CRITERION_KINDS)


IMPORTANCE_METHODS: Registry[ImportanceCriterion] = Registry("importance", (
    ImportanceCriterion("l1", _l1_importance, "L1 norm of each neuron's group of parameters",
                        reference="Li et al. 2017, Pruning Filters for Efficient ConvNets, "
                                  "ICLR 2017"),
    ImportanceCriterion("l2", _l2_importance, "L2 norm of each neuron's group of parameters",
                        reference="Fang et al. 2023, DepGraph, CVPR 2023"),
    ImportanceCriterion("bn", _norm_scale_importance, "absolute norm scale γ (network slimming)",
                        reference="Liu et al. 2017, Learning Efficient Convolutional Networks "
                                  "through Network Slimming, ICCV 2017"),
    ImportanceCriterion("taylor", _taylor_criterion,
                        "squared first-order Taylor estimate of the loss change, over batches",
                        reference="Molchanov et al. 2019, Importance Estimation for Neural "
                                  "Network Pruning, CVPR 2019", kind="data"),
    ImportanceCriterion("random", _random_importance, "uniform random scores",
                        kind="control"),
), parameter="method", error=PruneError)
"""Neuron-importance criteria by name (``method`` of :func:`neuron_importance`)."""


def neuron_importance(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec,
                      method: str = "l2", spaces: Iterable[str] | None = None,
                      model: nn.Module | None = None,
                      batches: Iterable[tuple[Tensor, Tensor]] | None = None,
                      seed: int = 0) -> dict[str, Tensor]:
    """Importance of every neuron of the pruned spaces; higher = keep.

    Args:
        state_dict: the network's parameters.
        spec: its spec.
        method: a name of :data:`IMPORTANCE_METHODS`.
        spaces: spaces to score (default: :func:`prunable_spaces`; ``"bn"``:
            those with a norm scale).
        model, batches: the module and ``(inputs, targets)`` batches, needed by
            ``"taylor"`` only (``state_dict`` is loaded into a copy of the
            module).
        seed: the scores of ``"random"``.

    Shapes:
        Returns ``{space: [size]}``.

    Raises:
        PruneError: an unknown method, or what the criterion needs is missing.
    """
    criterion = IMPORTANCE_METHODS.get(method)
    spec.check_state_dict(state_dict)
    return criterion.call_with_available(state_dict, spec, spaces, model=model, batches=batches,
                                         seed=seed)


# ------------------------------------------------------------------- selection
def _kept_count(size: int, sparsity: float, min_keep: int) -> int:
    return max(min(min_keep, size), size - int(round(sparsity * size)))


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise PruneError(f"sparsity must be in [0, 1) (the fraction of neurons removed), "
                         f"got {sparsity}")


def _top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores, in increasing index order; ties go
    to the lower index so the choice is deterministic."""
    order = torch.argsort(-scores.double(), stable=True)
    return torch.sort(order[:k]).values


def select_neurons_to_keep(importance: Mapping[str, Tensor], spec: WeightSpaceSpec,
                           sparsity: float, scope: str = "space",
                           min_keep: int = 1) -> dict[str, Tensor]:
    """Which neurons of each scored space survive.

    Args:
        importance: ``{space: [size]}`` from :func:`neuron_importance`.
        spec: the architecture.
        sparsity: fraction of the scored neurons removed.
        scope: ``"space"`` removes that fraction from every space;
            ``"global"`` ranks all neurons together after dividing each
            space's scores by their mean (raw norms of spaces of different
            fan-in are not comparable), so less important spaces shrink more.
        min_keep: neurons every space keeps at least.

    Returns:
        ``{space: sorted kept indices}`` for every scored space.
    """
    _check_sparsity(sparsity)
    if min_keep < 1:
        raise PruneError(f"min_keep must be >= 1, got {min_keep}")
    if scope == "space":
        return {s: _top(v.detach(), _kept_count(spec.space(s).size, sparsity, min_keep))
                for s, v in importance.items()}
    if scope != "global":
        raise PruneError(f"unknown scope {scope!r}; choose 'space' or 'global'")
    names = list(importance)
    normalised = [importance[s].detach().double() / importance[s].detach().double().mean()
                  .clamp_min(1e-30) for s in names]
    # every space first keeps its min_keep best, the rest compete globally
    keep = {s: set(_top(v, min(min_keep, len(v))).tolist()) for s, v in zip(names, normalised, strict=True)}
    total = sum(len(v) for v in normalised)
    budget = total - int(round(sparsity * total)) - sum(len(k) for k in keep.values())
    candidates = [(-float(score), s_i, int(i)) for s_i, v in enumerate(normalised)
                  for i, score in enumerate(v) if int(i) not in keep[names[s_i]]]
    candidates.sort()
    for _, s_i, i in candidates[:max(budget, 0)]:
        keep[names[s_i]].add(i)
    return {s: torch.tensor(sorted(keep[s]), dtype=torch.long) for s in names}


def pruned_sizes(spec: WeightSpaceSpec, keep: Mapping[str, Tensor]) -> dict[str, int]:
    """``{space: new size}`` for the spaces in ``keep``."""
    return {s: len(k) for s, k in keep.items()}


def sparsity_for_speedup(spec: WeightSpaceSpec, importance: Mapping[str, Tensor],
                         speedup: float, scope: str = "space", min_keep: int = 1) -> float:
    """The smallest neuron sparsity whose pruned model needs at most
    ``1/speedup`` of the MACs of the full one (bisection on the sparsity;
    MACs fall monotonically with it)."""
    if speedup < 1.0:
        raise PruneError(f"speed-up must be >= 1, got {speedup}")
    full = count_macs(spec)

    def ratio(s: float) -> float:
        keep = select_neurons_to_keep(importance, spec, s, scope, min_keep)
        return full / max(count_macs(spec, pruned_sizes(spec, keep)), 1)

    if ratio(0.0) >= speedup:
        return 0.0
    low, high = 0.0, 0.999
    if ratio(high) < speedup:
        raise PruneError(f"a {speedup:g}x reduction of MACs cannot be reached by pruning the "
                         f"hidden spaces (at most {ratio(high):.2f}x); the input, output and "
                         f"unpruned layers cost the rest")
    for _ in range(40):
        mid = (low + high) / 2
        if ratio(mid) >= speedup:
            high = mid
        else:
            low = mid
    return high


# ------------------------------------------------------------------- pruning
def _check_keep(spec: WeightSpaceSpec, keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
    _check_spaces(spec, keep)
    checked = {}
    for name, index in keep.items():
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        size = spec.space(name).size
        if len(index) == 0:
            raise PruneError(f"space {name!r}: keeping no neuron would disconnect the network")
        if index.min() < 0 or index.max() >= size or len(torch.unique(index)) != len(index):
            raise PruneError(f"space {name!r}: kept indices must be distinct and in "
                             f"0..{size - 1}")
        checked[name] = torch.sort(index).values
    return checked


def prune_state_dict(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec,
                     keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The smaller state dict that keeps the neurons ``keep[space]`` (every
    other space untouched): every axis of every parameter or buffer that
    indexes a pruned space is cut to the kept slices."""
    spec.check_state_dict(state_dict)
    return select_neurons(spec, state_dict, _check_keep(spec, keep))


def _owner(model: nn.Module, name: str) -> tuple[str, nn.Module, str]:
    module_path, _, attribute = name.rpartition(".")
    return module_path, model.get_submodule(module_path) if module_path else model, attribute


def _resize_attributes(path: str, module: nn.Module, old: Mapping[str, int]) -> None:
    """Make ``module``'s size attributes agree with its (new) tensors."""
    label = f"module {path or '<root>'!r} ({type(module).__name__})"
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            raise PruneError(f"{label}: transposed convolutions cannot be pruned yet")
        out_channels = module.weight.shape[0]
        if module.groups == 1:
            module.in_channels = module.weight.shape[1]
        elif module.groups == old["in_channels"] == old["out_channels"]:
            module.groups = module.in_channels = out_channels
        else:
            raise PruneError(f"{label}: a grouped convolution with {module.groups} groups "
                             f"cannot lose channels; exclude its spaces")
        module.out_channels = out_channels
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        tensor = module.weight if module.weight is not None else module.running_mean
        module.num_features = tensor.shape[0]
    elif isinstance(module, nn.GroupNorm):
        channels = module.weight.shape[0] if module.weight is not None else None
        if channels is None:
            raise PruneError(f"{label}: a GroupNorm without affine parameters cannot be "
                             f"resized from its tensors")
        if module.num_groups == old["num_channels"]:
            module.num_groups = channels
        elif module.num_groups != 1:
            raise PruneError(f"{label}: GroupNorm with {module.num_groups} groups cannot lose "
                             f"channels")
        module.num_channels = channels
    elif isinstance(module, nn.LayerNorm):
        if module.weight is None:
            raise PruneError(f"{label}: a LayerNorm without affine parameters cannot be "
                             f"resized from its tensors")
        module.normalized_shape = tuple(module.weight.shape)


_SIZE_ATTRIBUTES = ("in_channels", "out_channels", "num_channels", "in_features",
                    "out_features", "num_features")


def shrink_model(model: nn.Module, spec: WeightSpaceSpec, keep: Mapping[str, Tensor],
                 state_dict: Mapping[str, Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` whose pruned spaces hold only the ``keep`` neurons.

    Tensors are replaced by their cut versions and the owning modules' size
    attributes (``in_features``, ``out_channels``, ``num_features`` …) are
    updated, so the result is a plain, smaller module of the same classes
    that runs faster. ``model`` itself is not changed.

    Args:
        model: the full network.
        spec: its spec.
        keep: ``{space: kept neuron indices}``.
        state_dict: values to prune instead of ``model``'s own.

    Raises:
        PruneError: a space that cannot be pruned, an invalid index, a module
            type that cannot be resized, or a forward pass that fails after
            resizing (the model hard-codes a size somewhere; the message
            names the failure).
    """
    source = dict(model.state_dict() if state_dict is None else state_dict)
    small_state = prune_state_dict(source, spec, keep)
    small = copy.deepcopy(model)
    if state_dict is not None:
        # every value comes from `state_dict`, also those of tensors pruning leaves whole
        # (a classifier's bias, buffers the spec does not describe)
        own = small.state_dict()
        with torch.no_grad():
            for name, value in source.items():
                if name in own and tuple(own[name].shape) == tuple(value.shape):
                    own[name].copy_(value)
    touched: dict[str, tuple[nn.Module, dict[str, int]]] = {}
    for p in spec.parameters:
        new = small_state[p.name]
        path, module, attribute = _owner(small, p.name)
        if tuple(new.shape) == tuple(p.shape):
            continue
        if path not in touched:
            touched[path] = (module, {a: getattr(module, a) for a in _SIZE_ATTRIBUTES
                                      if isinstance(getattr(module, a, None), int)})
        old = module._parameters.get(attribute) if attribute in module._parameters else None
        if old is not None:
            module._parameters[attribute] = nn.Parameter(new.to(old.device),
                                                         requires_grad=old.requires_grad)
        elif attribute in module._buffers:
            module._buffers[attribute] = new.to(module._buffers[attribute].device)
        else:
            raise PruneError(f"parameter {p.name!r} of the spec is neither a parameter nor a "
                             f"buffer of module {path!r}")
    for path, (module, old_sizes) in touched.items():
        _resize_attributes(path, module, old_sizes)
    _check_runs(small, spec)
    return small


def _check_runs(model: nn.Module, spec: WeightSpaceSpec) -> None:
    like = next((t for t in model.state_dict().values() if t.is_floating_point()),
                torch.zeros(()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *spec.input_shape, device=like.device, dtype=like.dtype))
    except Exception as err:
        raise PruneError(f"the pruned {type(model).__name__} no longer runs ({err}); its "
                         f"forward or a module of a type weightspace cannot resize probably "
                         f"stores a size. Restrict the pruned spaces or make the size follow "
                         f"the tensors.") from err
    finally:
        model.train(was_training)


def resize_model(model: nn.Module, spec: WeightSpaceSpec, sizes: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` with the spaces ``sizes`` resized (their first
    neurons kept): the empty architecture a pruned checkpoint loads into."""
    keep = {}
    for space, size in sizes.items():
        full = spec.space(space).size
        if not 1 <= int(size) <= full:
            raise PruneError(f"space {space!r}: pruned size {size} is not in 1..{full}")
        keep[space] = torch.arange(int(size))
    return shrink_model(model, spec, keep)


def pruned_metadata(sizes: Mapping[str, int]) -> dict[str, str]:
    """Checkpoint metadata that records a structured pruning's architecture."""
    return {PRUNED_SIZES_METADATA: json.dumps({k: int(v) for k, v in sizes.items()},
                                              sort_keys=True)}


def sizes_from_metadata(metadata: Mapping[str, str], source: str = "checkpoint"
                        ) -> dict[str, int] | None:
    """The pruned sizes stored by :func:`pruned_metadata`, or ``None``."""
    text = metadata.get(PRUNED_SIZES_METADATA)
    if text is None:
        return None
    try:
        sizes = json.loads(text)
        if not isinstance(sizes, dict):
            raise ValueError("not an object")
        return {str(k): int(v) for k, v in sizes.items()}
    except (ValueError, TypeError) as err:
        raise PruneError(f"{source}: metadata {PRUNED_SIZES_METADATA!r} is corrupt ({err})"
                         ) from err


def load_pruned(path, model: nn.Module, spec: WeightSpaceSpec) -> nn.Module:
    """Load a checkpoint into ``model``'s architecture, shrunk first to the
    sizes a structured pruning recorded in its metadata (unchanged when it
    has none). Loading never runs code (safetensors, or ``torch.load`` with
    ``weights_only=True``).

    Returns:
        A new module (``model`` is not changed) in eval mode.
    """
    from weightspace.io import load_metadata, load_state_dict

    sizes = sizes_from_metadata(load_metadata(path), str(path))
    target = resize_model(model, spec, sizes) if sizes else copy.deepcopy(model)
    state = load_state_dict(path)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise PruneError(f"{path}: does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            hint = "" if sizes else " (a pruned checkpoint saved without its sizes?)"
            raise PruneError(f"{path}: parameter {key!r} has shape {list(state[key].shape)}, "
                             f"the model expects {list(value.shape)}{hint}")
    target.load_state_dict(state)
    return target.eval()
