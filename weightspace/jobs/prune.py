"""A checkpoint in, a pruned checkpoint out: the job behind ``weightspace prune``.

The checkpoint is checked against the architecture's spec before anything is
computed, the model is measured (parameters, multiply-accumulates, latency,
test accuracy) before and after, and the output is written atomically. A
structured result is saved with the pruned sizes of its spaces in the
checkpoint's metadata, so :func:`~weightspace.prune.load_pruned` rebuilds its
smaller architecture.

Importance: magnitude (Han et al., NeurIPS 2015; group norms for neurons),
first-order Taylor (Molchanov et al., ICLR 2017), a meta-trained
metanetwork that first maps the network to one that is easier to prune
(Liu, Wang, Zhang, arXiv:2506.12041, 2025), or random (the control). The
settings are one :class:`PruneOptions`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.classify import evaluate, train_classifier
from weightspace.data import Split
from weightspace.io import save_state_dict
from weightspace.jobs.checkpoints import load_checked, load_data
from weightspace.jobs.report import report_dict
from weightspace.prune.cost import model_cost
from weightspace.prune.magnitude import SCOPES as WEIGHT_SCOPES
from weightspace.prune.magnitude import MaskHandle, attach_masks, check_sparsity, magnitude_masks
from weightspace.prune.meta import MetaPruner, load_meta_pruner
from weightspace.prune.structured import (
    PruneError,
    neuron_importance,
    pruned_metadata,
    pruned_sizes,
    select_neurons_to_keep,
    shrink_model,
    sparsity_for_speedup,
)
from weightspace.spec import WeightSpaceSpec, trace

logger = logging.getLogger(__name__)

#: ``magnitude``: |w| (or a neuron group's norm); ``taylor``: first-order
#: loss change; ``meta``: a trained metanetwork rewrites the network first,
#: then magnitude; ``random``: the control.
PRUNE_METHODS = ("magnitude", "taylor", "meta", "random")

#: Where neurons compete when pruning structurally: within each ``"space"``
#: (the same fraction of every space) or across all of them (``"global"``).
NEURON_SCOPES = ("space", "global")


@dataclass(frozen=True)
class PruneOptions:
    """How :func:`prune_checkpoint` / :func:`prune_model` prune (one field per
    setting; ``metadata["help"]`` says what it does).

    Give exactly one of ``sparsity`` and ``speedup``; :meth:`check` refuses
    a request that cannot be met.
    """

    sparsity: float | None = field(default=None, metadata={
        "help": "unstructured: the fraction of weights set to zero; structured: the fraction "
                "of hidden neurons removed"})
    speedup: float | None = field(default=None, metadata={
        "help": "structured only, instead of sparsity: the reduction of multiply-accumulates "
                "to reach"})
    structured: bool = field(default=False, metadata={
        "help": "remove whole neurons/channels from every parameter that touches them (a "
                "smaller, faster model) instead of zeroing single weights"})
    method: str = field(default="magnitude", metadata={
        "help": "importance: magnitude, first-order taylor (uses data), meta (a trained "
                "metanetwork rewrites the network first; needs metanet) or random (the "
                "control)"})
    importance: str = field(default="l2", metadata={
        "help": "structured magnitude criterion: l1 or l2 norm of each neuron's parameters, "
                "or bn (its BatchNorm scale)"})
    scope: str | None = field(default=None, metadata={
        "help": "unstructured: global (default) or layer; structured: space (the same "
                "fraction of every space, default) or global"})
    metanet: str | os.PathLike[str] | MetaPruner | None = field(default=None, metadata={
        "help": "a trained meta-pruner (.safetensors) for method meta (prune_model also "
                "takes a loaded MetaPruner)"})
    data: str = field(default="digits", metadata={
        "help": "digits or an .npz file: accuracy, Taylor scores and fine-tuning "
                "(prune_checkpoint)"})
    finetune_epochs: int = field(default=0, metadata={
        "help": "epochs of Adam fine-tuning after pruning (unstructured masks stay applied)"})
    lr: float = field(default=1e-3, metadata={"help": "fine-tuning learning rate"})
    seed: int = field(default=0, metadata={
        "help": "fine-tuning data order (and the random control's scores)"})
    latency_batch: int = field(default=256, metadata={
        "help": "batch size of the latency measurement, 0 skips it (prune_checkpoint)"})

    def check(self) -> None:
        """Refuse a request that cannot be met (the error names the parameter)."""
        if self.method not in PRUNE_METHODS:
            raise PruneError(f"unknown method {self.method!r}; choose one of "
                             f"{', '.join(PRUNE_METHODS)}", parameter="method")
        if (self.sparsity is None) == (self.speedup is None):
            raise PruneError("give exactly one of sparsity and speedup", parameter="sparsity")
        if self.speedup is not None and not self.structured:
            raise PruneError("speedup needs structured=True: zeroing single weights does not "
                             "make a dense model faster", parameter="speedup")
        if self.sparsity is not None and not self.structured:
            try:
                check_sparsity(self.sparsity)
            except (TypeError, ValueError) as err:
                raise PruneError(str(err), parameter="sparsity") from err
        scopes = NEURON_SCOPES if self.structured else WEIGHT_SCOPES
        if self.scope is not None and self.scope not in scopes:
            kind = "structured" if self.structured else "unstructured"
            raise PruneError(f"scope {self.scope!r} is not a scope of {kind} pruning; choose "
                             f"one of {', '.join(scopes)}", parameter="scope")
        if self.finetune_epochs < 0:
            raise PruneError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}",
                             parameter="finetune_epochs")
        if self.method == "meta" and self.metanet is None:
            raise PruneError("method='meta' needs metanet, a pruner trained with "
                             "weightspace.jobs.train_meta_pruner", parameter="metanet")

    @property
    def resolved_scope(self) -> str:
        """``scope``, or its default: ``"space"`` structured, ``"global"`` not."""
        return self.scope or ("space" if self.structured else "global")


@dataclass(frozen=True)
class PruneOutcome:
    """A pruned model and what it took (:func:`prune_model`).

    Args:
        model: the pruned module (smaller for a structured pruning; masks
            already removed, zeros kept, for an unstructured one).
        spec: its spec.
        sparsity: unstructured: the fraction of prunable weights that are
            zero; structured: the fraction of scored neurons removed.
        pruned_sizes: structured: ``{space: new size}``; else ``None``.
        metadata: checkpoint metadata that lets the result load again.
    """

    model: nn.Module
    spec: WeightSpaceSpec
    sparsity: float
    pruned_sizes: dict[str, int] | None
    metadata: dict[str, str] | None


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_checkpoint` did (``--json`` prints :meth:`to_dict`).

    Args:
        checkpoint: the input checkpoint.
        output: the pruned checkpoint that was written.
        structured, method, scope, finetune_epochs: the settings
            (``scope`` resolved to its default).
        importance: the structured magnitude criterion, when one was used.
        sparsity: the sparsity reached (see :class:`PruneOutcome`).
        target_speedup: the MAC reduction asked for, or ``None``.
        before: ``accuracy``, ``loss``, ``parameters``, ``nonzero``,
            ``macs``, ``latency_ms``, ``batch_size`` of the input.
        after: the same of the pruned model.
        parameter_reduction, nonzero_reduction, mac_reduction,
            latency_speedup: ``before / after`` (``None`` when not measured).
        pruned_sizes: structured: ``{space: new size}``; else ``None``.
    """

    checkpoint: str
    output: str
    structured: bool
    method: str
    importance: str | None
    scope: str
    sparsity: float
    target_speedup: float | None
    finetune_epochs: int
    before: dict[str, Any]
    after: dict[str, Any]
    parameter_reduction: float | None
    nonzero_reduction: float | None
    mac_reduction: float | None
    latency_speedup: float | None
    pruned_sizes: dict[str, int] | None

    def to_dict(self) -> dict[str, Any]:
        return report_dict(self)


def data_batches(data: Split, batch_size: int = 256, limit: int = 4
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    """The first ``limit`` training batches, in order (for data-driven
    importance such as Taylor's)."""
    for i in range(limit):
        start = i * batch_size
        if start >= len(data.y_train):
            return
        yield data.x_train[start:start + batch_size], data.y_train[start:start + batch_size]


def _weight_taylor_scores(model: nn.Module, state: dict[str, Tensor], data: Split
                          ) -> dict[str, Tensor]:
    """Per-weight first-order Taylor scores ``(Σ_batches g·w)²`` (Molchanov et
    al., ICLR 2017), shaped like the parameters, for unstructured pruning."""
    scored = copy.deepcopy(model)
    scored.load_state_dict(state)
    scored.eval()
    scored.zero_grad(set_to_none=True)
    for inputs, targets in data_batches(data):
        nn.functional.cross_entropy(scored(inputs), targets).backward()
    grads = {name: p.grad for name, p in scored.named_parameters()}
    return {k: (grads[k] * v).square() if grads.get(k) is not None else v.abs()
            for k, v in state.items()}


def _meta_rewrite(metanet: str | os.PathLike[str] | MetaPruner, spec: WeightSpaceSpec,
                  state: dict[str, Tensor]) -> dict[str, Tensor]:
    pruner = load_meta_pruner(metanet) if isinstance(metanet, (str, os.PathLike)) else metanet
    if pruner.spec.hash != spec.hash:
        raise PruneError(f"{metanet}: the metanetwork was trained for another architecture "
                         f"(spec {pruner.spec.hash[:12]}, this model {spec.hash[:12]})",
                         parameter="metanet")
    return pruner.rewrite(state)


def _prune_structured(full: nn.Module, spec: WeightSpaceSpec, source: dict[str, Tensor],
                      data: Split | None, options: PruneOptions
                      ) -> tuple[nn.Module, WeightSpaceSpec, float, dict[str, int]]:
    """Remove the least important neurons: ``(pruned, its spec, sparsity, sizes)``."""
    scope = options.resolved_scope
    if options.method == "taylor":
        scores = neuron_importance(source, spec, "taylor", model=full,
                                   batches=list(data_batches(data)))
    else:
        criterion = "random" if options.method == "random" else options.importance
        scores = neuron_importance(source, spec, criterion, seed=options.seed)
    sparsity = options.sparsity
    if options.speedup is not None:
        sparsity = sparsity_for_speedup(spec, scores, options.speedup, scope)
    keep = select_neurons_to_keep(scores, spec, sparsity, scope)
    pruned = shrink_model(full, spec, keep, state_dict=source)
    return pruned, trace(pruned, (1, *spec.input_shape)), float(sparsity), pruned_sizes(spec, keep)


def _prune_unstructured(full: nn.Module, spec: WeightSpaceSpec, source: dict[str, Tensor],
                        data: Split | None, options: PruneOptions
                        ) -> tuple[nn.Module, MaskHandle]:
    """Zero the least important weights; the masks stay attached (fine-tuning
    keeps the zeros) until the handle is removed."""
    if options.method == "taylor":
        ranked = _weight_taylor_scores(full, source, data)
    elif options.method == "random":
        generator = torch.Generator().manual_seed(options.seed)
        ranked = {k: torch.rand(v.shape, generator=generator) for k, v in source.items()}
    else:
        ranked = source
    masks = magnitude_masks(ranked, spec, options.sparsity, scope=options.resolved_scope)
    pruned = copy.deepcopy(full)
    pruned.load_state_dict(source)
    return pruned, attach_masks(pruned, masks)


def prune_model(model: nn.Module, spec: WeightSpaceSpec, data: Split | None,
                options: PruneOptions = PruneOptions(), *, progress: bool = False
                ) -> PruneOutcome:
    """Prune ``model`` (not changed) and fine-tune the result, in memory.

    Args:
        model: the network to prune.
        spec: its spec.
        data: the split that Taylor scores and fine-tuning use (may be
            ``None`` without them).
        options: the settings; ``data`` and ``latency_batch`` are those of
            :func:`prune_checkpoint` and not read here, and ``metanet`` may
            be a loaded :class:`~weightspace.prune.meta.MetaPruner`.
        progress: tqdm progress bars while fine-tuning.

    Returns:
        The :class:`PruneOutcome`.
    """
    options.check()
    if data is None and (options.method == "taylor" or options.finetune_epochs):
        raise PruneError("taylor importance and fine-tuning need data", parameter="data")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    full = copy.deepcopy(model).eval()
    source = _meta_rewrite(options.metanet, spec, state) if options.method == "meta" else state
    handle, sizes, metadata = None, None, None
    if options.structured:
        pruned, pruned_spec, sparsity, sizes = _prune_structured(full, spec, source, data, options)
        metadata = pruned_metadata(sizes)
    else:
        pruned, handle = _prune_unstructured(full, spec, source, data, options)
        pruned_spec, sparsity = spec, float(options.sparsity)
    if options.finetune_epochs:
        train_classifier(pruned, data, epochs=options.finetune_epochs, lr=options.lr,
                         seed=options.seed, progress=progress)
    if handle is not None:
        handle.remove()
    return PruneOutcome(pruned.eval(), pruned_spec, sparsity, sizes, metadata)


def _measure(model: nn.Module, spec: WeightSpaceSpec, data: Split, latency_batch: int
             ) -> dict[str, Any]:
    loss, accuracy = evaluate(model, data.x_test, data.y_test)
    cost = model_cost(model, spec, latency_batch=latency_batch)
    return {"accuracy": accuracy, "loss": loss, **cost.to_dict()}


def _ratio(before: dict[str, Any], after: dict[str, Any], key: str) -> float | None:
    if before.get(key) is None or not after.get(key):
        return None
    return before[key] / after[key]


def prune_checkpoint(checkpoint: str | os.PathLike[str], model: nn.Module, spec: WeightSpaceSpec,
                     output: str | os.PathLike[str], options: PruneOptions = PruneOptions(), *,
                     progress: bool = False) -> PruneReport:
    """Prune a checkpoint, fine-tune it, measure it before and after, save it.

    Args:
        checkpoint: ``.safetensors`` or ``.pt`` state dict of ``model``'s
            architecture (loaded without running code).
        model: a module of the architecture (its own weights are not used).
        spec: ``model``'s spec.
        output: where the pruned checkpoint goes (written atomically;
            ``.safetensors`` keeps a structured result loadable).
        options: the settings (:class:`PruneOptions`).
        progress: tqdm progress bars.

    Returns:
        The :class:`PruneReport`.

    Raises:
        PruneError: a request that cannot be met (the error names the
            parameter of :class:`PruneOptions`).
        StateDictMismatchError, NonFiniteError: a checkpoint that does not
            match ``spec`` or holds NaN/Inf (the error names the entry).
    """
    options.check()
    state = load_checked(checkpoint, spec)
    split = load_data(options.data, spec)
    full = copy.deepcopy(model)
    full.load_state_dict(state)
    full.eval()
    before = _measure(full, spec, split, options.latency_batch)
    outcome = prune_model(full, spec, split, options, progress=progress)
    after = _measure(outcome.model, outcome.spec, split, options.latency_batch)
    result = {k: v.detach().clone() for k, v in outcome.model.state_dict().items()}
    save_state_dict(result, output, metadata=outcome.metadata)
    logger.info("%s: pruned %s -> %s", checkpoint, before, after)
    uses_importance = options.structured and options.method in ("magnitude", "meta")
    return PruneReport(
        checkpoint=str(checkpoint), output=str(Path(output)), structured=options.structured,
        method=options.method, importance=options.importance if uses_importance else None,
        scope=options.resolved_scope, sparsity=outcome.sparsity,
        target_speedup=options.speedup, finetune_epochs=options.finetune_epochs,
        before=before, after=after,
        parameter_reduction=_ratio(before, after, "parameters"),
        nonzero_reduction=_ratio(before, after, "nonzero"),
        mac_reduction=_ratio(before, after, "macs"),
        latency_speedup=_ratio(before, after, "latency_ms"),
        pruned_sizes=outcome.pruned_sizes)


__all__ = ["NEURON_SCOPES", "PRUNE_METHODS", "PruneOptions", "PruneOutcome", "PruneReport",
           "data_batches", "prune_checkpoint", "prune_model"]
