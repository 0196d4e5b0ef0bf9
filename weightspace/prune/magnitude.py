"""Unstructured magnitude pruning: zero the weights of smallest absolute value.

References:

* Han, Pool, Tran & Dally 2015, "Learning both Weights and Connections for
  Efficient Neural Networks" (NeurIPS 2015): prune the connections of
  smallest magnitude, then fine-tune the rest with the pruned ones held at
  zero.
* Frankle & Carbin 2019, "The Lottery Ticket Hypothesis: Finding Sparse,
  Trainable Neural Networks" (ICLR 2019): global versus layer-wise magnitude
  pruning, repeated over rounds (see :mod:`weightspace.prune.lottery`).

A *mask* is a boolean tensor of a parameter's shape, ``True`` where the weight
is **kept**. Only the edge weights of linear/conv layers (spec roles
``"weight"`` and ``"depthwise_weight"``) are pruned: biases, normalisation
parameters and running statistics are one value per neuron, cheap to keep and
harmful to remove, so they are never masked (the usual convention, e.g.
Frankle & Carbin 2019, Appendix; Blalock et al. 2020, "What is the State of
Neural Network Pruning?").

Counts are exact: ``sparsity=s`` on ``n`` candidate weights zeroes exactly
``round(s * n)`` of them, whatever the ties. Weights are ranked by magnitude
with a *stable* sort, so equal magnitudes are pruned in canonical order (the
spec's parameter order, then row-major position) — a threshold
``|w| <= t`` would instead remove every weight tied at ``t`` and over-prune.

Masks stay applied during training through :func:`attach_masks`, which
registers hooks but keeps every parameter name (unlike
:mod:`torch.nn.utils.prune`, which renames ``weight`` to ``weight_orig`` and
so changes the state-dict keys the rest of the toolkit relies on).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.errors import WeightspaceError
from weightspace.spec.containers import WeightSpaceSpec

#: Spec roles of the parameters that magnitude pruning may zero.
PRUNABLE_ROLES = ("weight", "depthwise_weight")

#: Valid values of the ``scope`` argument of :func:`magnitude_masks`.
SCOPES = ("global", "layer")


def prunable_parameters(spec: WeightSpaceSpec) -> tuple[str, ...]:
    """Names of the parameters that pruning may zero, in the spec's order.

    These are the parameters with role ``"weight"`` or ``"depthwise_weight"``
    (the edges of the parameter graph); biases, norm parameters, running
    statistics and scalars are never pruned.
    """
    return tuple(p.name for p in spec.parameters if p.role in PRUNABLE_ROLES)


# ------------------------------------------------------------------ checks
def check_sparsity(sparsity: Any, name: str = "sparsity") -> float:
    """``sparsity`` as a float in ``[0, 1)``, or a clear error naming ``name``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(sparsity).__name__}")
    value = float(sparsity)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise WeightspaceError(
            f"{name} must be in [0, 1) (the fraction of prunable weights set to zero), "
            f"got {sparsity!r}"
        )
    return value


def check_masks(masks: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]],
                label: str = "masks", what: str = "prunable parameter") -> None:
    """Every mask is a boolean tensor named after an entry of ``shapes`` and of
    that entry's shape; the errors name the key."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"{label} must be a dict of boolean tensors, got {type(masks).__name__}")
    for key, mask in masks.items():
        if key not in shapes:
            raise WeightspaceError(
                f"{label} has a mask for {key!r}, which is not a {what}; "
                f"valid names are {sorted(shapes)}"
            )
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise WeightspaceError(f"{label}[{key!r}] must be a boolean tensor (True = kept), got {kind}")
        if tuple(mask.shape) != tuple(shapes[key]):
            raise WeightspaceError(
                f"{label}[{key!r}] has shape {list(mask.shape)}, the parameter has shape "
                f"{list(shapes[key])}"
            )


# ------------------------------------------------------------------ masks
def magnitude_masks(
    state_dict: Mapping[str, Tensor],
    spec: WeightSpaceSpec,
    sparsity: float,
    scope: str = "global",
    existing: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    r"""Keep-masks that zero the prunable weights of smallest magnitude.

    With ``scope="global"`` the magnitudes :math:`|w|` of all prunable
    parameters are ranked together, so layers with many small weights lose
    more (Frankle & Carbin 2019 prune large networks globally); with
    ``scope="layer"`` every prunable parameter is pruned to the same sparsity
    (Han et al. 2015).

    With ``existing`` masks (iterative magnitude pruning), weights already
    pruned stay pruned and count toward the target: only the kept weights of
    smallest magnitude are added, until ``round(sparsity * n)`` of the ``n``
    candidates are pruned. Their values in ``state_dict`` are ignored.

    Args:
        state_dict: the model's weights; must match ``spec``.
        spec: the weight-space spec (:func:`weightspace.trace`).
        sparsity: fraction of prunable weights that are pruned in total,
            ``0 <= sparsity < 1``. With ``scope="layer"`` each parameter gets
            ``round(sparsity * numel)`` pruned weights, so the total can differ
            from ``round(sparsity * n)`` by rounding.
        scope: ``"global"`` or ``"layer"``.
        existing: previous keep-masks for some or all prunable parameters
            (missing ones count as fully kept).

    Returns:
        ``{name: mask}`` for every parameter of :func:`prunable_parameters`,
        in the spec's order, each on the device of its weight.

    Shapes:
        - state_dict[name]: the parameter's shape.
        - existing[name], output[name]: the same shape, ``torch.bool``
          (``True`` = kept).

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)``, an unknown ``scope``,
            ``existing`` masks that already prune more than the target, a mask
            for a name that is not a prunable parameter or of the wrong shape,
            or non-finite candidate weights.
        StateDictMismatchError: ``state_dict`` does not match ``spec``
            (a subclass of ``ValueError``; the message names the key).

    Example::

        >>> masks = magnitude_masks(model.state_dict(), spec, sparsity=0.5)
        >>> model.load_state_dict(apply_masks(model.state_dict(), masks))
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise WeightspaceError(f"unknown scope {scope!r}; valid values are {', '.join(SCOPES)}")
    spec.check_state_dict(state_dict)
    names = prunable_parameters(spec)
    shapes = {name: spec.parameter(name).shape for name in names}
    keep: dict[str, Tensor] = {name: torch.ones(shapes[name], dtype=torch.bool) for name in names}
    if existing is not None:
        check_masks(existing, shapes, label="existing")
        for name, mask in existing.items():
            keep[name] = mask.detach().to("cpu").clone()

    groups = [names] if scope == "global" else [(name,) for name in names]
    masks: dict[str, Tensor] = {}
    for group in groups:
        if group:
            masks.update(_prune_group(state_dict, group, keep, sparsity, scope))
    return {name: masks[name].to(state_dict[name].device) for name in names}


def _prune_group(state_dict: Mapping[str, Tensor], group: tuple[str, ...],
                 keep: Mapping[str, Tensor], sparsity: float, scope: str) -> dict[str, Tensor]:
    """Prune the kept weights of smallest magnitude in ``group`` until exactly
    ``round(sparsity * n)`` of its ``n`` weights are pruned."""
    # float64 on the CPU: exact for every float dtype (so mixed precisions rank
    # correctly) and the same ranking on every device
    magnitudes = torch.cat([
        state_dict[name].detach().to("cpu", torch.float64).abs().reshape(-1) for name in group
    ])
    kept = torch.cat([keep[name].reshape(-1) for name in group])
    total = kept.numel()
    target = round(sparsity * total)
    already = total - int(kept.sum())
    if already > target:
        where = "in total" if scope == "global" else f"in {group[0]!r}"
        raise WeightspaceError(
            f"existing masks already prune {already} of {total} weights {where} "
            f"({already / total:.4f}), more than sparsity={sparsity} asks for ({target}); "
            f"pruned weights are never restored"
        )
    candidates = kept.nonzero().squeeze(1)
    candidate_magnitudes = magnitudes[candidates]
    if not bool(torch.isfinite(candidate_magnitudes).all()):
        bad = next(name for name in group if not bool(torch.isfinite(state_dict[name]).all()))
        raise WeightspaceError(
            f"state_dict[{bad!r}] contains NaN or infinite values; magnitude pruning needs "
            f"finite weights"
        )
    # stable sort: ties are pruned in canonical (flat index) order, so the
    # count is exact and the result is the same on every run
    order = torch.argsort(candidate_magnitudes, stable=True)
    kept = kept.clone()
    kept[candidates[order[: target - already]]] = False
    out, start = {}, 0
    for name in group:
        size = keep[name].numel()
        out[name] = kept[start:start + size].reshape(keep[name].shape)
        start += size
    return out


def apply_masks(state_dict: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A new state dict whose masked entries are zero.

    Entries without a mask are copied unchanged; the input is not modified.

    Args:
        state_dict: any state dict.
        masks: ``{name: keep-mask}`` for some of its entries.

    Shapes:
        - masks[name]: ``state_dict[name].shape``, ``torch.bool``.
        - output: the same keys, order, shapes and dtypes as ``state_dict``.

    Raises:
        ValueError: a mask for a key that ``state_dict`` lacks, of the wrong
            shape or not boolean.
    """
    check_masks(masks, {k: tuple(v.shape) for k, v in state_dict.items()}, what="state-dict key")
    out = {}
    for key, value in state_dict.items():
        value = value.detach()
        if key in masks:
            # masked_fill, not a product: 0 * inf would give NaN
            out[key] = value.masked_fill(~masks[key].to(value.device), 0)
        else:
            out[key] = value.clone()
    return out


# ------------------------------------------------------------------ hooks
class _ParameterMask:
    """One parameter and its keep-mask (with the mask's complement cached on
    the parameter's current device, which can change with ``model.to``)."""

    def __init__(self, name: str, parameter: nn.Parameter, keep: Tensor) -> None:
        self.name = name
        self.parameter = parameter
        self.keep = keep.detach().to("cpu").clone()
        self._drop: Tensor | None = None

    def drop_on(self, device: torch.device) -> Tensor:
        if self._drop is None or self._drop.device != device:
            self._drop = (~self.keep).to(device)
        return self._drop

    @torch.no_grad()
    def enforce(self) -> None:
        """Zero the masked entries in place if any of them is not zero.

        Writing only when needed matters: every in-place write bumps the
        parameter's version counter, which would make autograd reject a
        backward through an earlier forward (gradient accumulation)."""
        drop = self.drop_on(self.parameter.device)
        if bool(self.parameter.masked_select(drop).ne(0).any()):
            self.parameter.masked_fill_(drop, 0)

    def mask_gradient(self, grad: Tensor) -> Tensor:
        return grad.masked_fill(self.drop_on(grad.device), 0)


class MaskHandle:
    """Masks attached to a model by :func:`attach_masks`.

    While attached, the masked weights are zero whenever the model runs a
    forward pass or returns its state dict, and their gradients are zero.
    Call :meth:`remove` (or leave a ``with`` block) to detach every hook; the
    weights keep their current values.
    """

    def __init__(self, entries: list[_ParameterMask], hooks: list[Any]) -> None:
        self._entries = entries
        self._hooks = hooks

    @property
    def masks(self) -> dict[str, Tensor]:
        """``{name: keep-mask}`` (copies, on the CPU)."""
        return {e.name: e.keep.clone() for e in self._entries}

    @property
    def attached(self) -> bool:
        """``False`` once :meth:`remove` was called."""
        return bool(self._hooks)

    def apply(self) -> None:
        """Zero the masked weights in place now (e.g. after an optimiser step
        that had momentum from before the masks were attached)."""
        for entry in self._entries:
            entry.enforce()

    def remove(self) -> None:
        """Remove every hook; calling it twice is harmless."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "removed"
        return f"MaskHandle({len(self._entries)} parameters, {state})"


def attach_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> MaskHandle:
    """Keep ``masks`` applied to ``model``'s parameters while it trains.

    The masked weights are zeroed in place now, and hooks keep them at zero
    without renaming anything (the state-dict keys stay the same):

    * a gradient hook on each masked parameter zeroes the masked gradient
      entries, so no optimiser (momentum, Adam moments, L2 weight decay of a
      zero weight) ever moves them;
    * a forward pre-hook and a state-dict pre-hook on each owning module
      re-zero the masked entries in place if anything else changed them
      (``load_state_dict``, an optimiser with momentum from before the masks
      were attached, decoupled weight decay), so every forward pass and every
      ``state_dict()`` sees masked weights.

    The hooks act on the model's own parameters: a
    :func:`torch.func.functional_call` with other tensors runs those tensors
    as given.

    Args:
        model: the network; modified in place.
        masks: ``{parameter name: keep-mask}`` (``True`` = kept), e.g. from
            :func:`magnitude_masks`. Names are ``model.named_parameters()``
            names; buffers cannot be masked.

    Returns:
        A :class:`MaskHandle`; ``handle.remove()`` detaches every hook.

    Shapes:
        - masks[name]: the parameter's shape, ``torch.bool``.

    Raises:
        ValueError: a name that is not a parameter of ``model``, a mask of the
            wrong shape or not boolean.

    Example::

        >>> handle = attach_masks(model, masks)
        >>> train_classifier(model, data, weight_decay=1e-4)  # masked stay 0
        >>> handle.remove()
    """
    parameters = dict(model.named_parameters())
    buffers = {name for name, _ in model.named_buffers()}
    for name in masks:
        if name in buffers:
            raise WeightspaceError(f"masks[{name!r}] names a buffer; only parameters can be masked")
    check_masks(masks, {k: tuple(p.shape) for k, p in parameters.items()},
                what="parameter of the model")

    by_module: dict[str, list[_ParameterMask]] = {}
    entries = []
    for name, keep in masks.items():
        entry = _ParameterMask(name, parameters[name], keep)
        entries.append(entry)
        by_module.setdefault(name.rpartition(".")[0], []).append(entry)

    hooks: list[Any] = []
    for entry in entries:
        entry.enforce()
        hooks.append(entry.parameter.register_hook(entry.mask_gradient))
    for module_name, module_entries in by_module.items():
        module = model.get_submodule(module_name)

        def enforce(*_: object, _entries: list[_ParameterMask] = module_entries) -> None:
            for e in _entries:
                e.enforce()

        hooks.append(module.register_forward_pre_hook(enforce))
        hooks.append(module.register_state_dict_pre_hook(enforce))
    return MaskHandle(entries, hooks)


# ------------------------------------------------------------------ report
def sparsity(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec) -> dict[str, Any]:
    """How sparse a state dict is.

    Args:
        state_dict: the weights; must match ``spec``.
        spec: the weight-space spec.

    Returns:
        A dict with

        * ``"per_parameter"``: ``{name: fraction of zeros}`` for every prunable
          parameter (:func:`prunable_parameters`);
        * ``"global"``: the fraction of zeros over all prunable weights;
        * ``"prunable"`` / ``"prunable_zero"``: number of prunable weights and
          of those that are zero;
        * ``"total"`` / ``"nonzero"``: number of trainable parameter values
          (buffers such as running statistics excluded) and of those that are
          not zero.

    Raises:
        StateDictMismatchError: ``state_dict`` does not match ``spec``.
    """
    spec.check_state_dict(state_dict)
    per_parameter, prunable, prunable_zero = {}, 0, 0
    for name in prunable_parameters(spec):
        value = state_dict[name]
        zeros = value.numel() - int(torch.count_nonzero(value))
        per_parameter[name] = zeros / max(value.numel(), 1)
        prunable += value.numel()
        prunable_zero += zeros
    trainable = [state_dict[p.name] for p in spec.parameters if not p.is_buffer]
    return {
        "per_parameter": per_parameter,
        "global": prunable_zero / max(prunable, 1),
        "prunable": prunable,
        "prunable_zero": prunable_zero,
        "total": sum(v.numel() for v in trainable),
        "nonzero": sum(int(torch.count_nonzero(v)) for v in trainable),
    }
