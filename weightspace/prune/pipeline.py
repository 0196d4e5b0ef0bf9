"""A checkpoint in, a pruned checkpoint out: the library call behind
``weightspace prune``.

The checkpoint is checked against the architecture's spec before anything is
computed, the model is measured (parameters, multiply-accumulates, latency,
test accuracy) before and after, and the output is written atomically. A
structured result is saved with the pruned sizes of its spaces in the
checkpoint's metadata, so :func:`~weightspace.prune.load_pruned` rebuilds its
smaller architecture.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.classify import evaluate, load_split, train_classifier
from weightspace.data import Split
from weightspace.io import save_state_dict
from weightspace.prune.cost import model_cost
from weightspace.prune.magnitude import attach_masks, magnitude_masks
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


def data_batches(data: Split, batch_size: int = 256, limit: int = 4) -> Iterator[tuple[Tensor,
                                                                                       Tensor]]:
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


def _measure(model: nn.Module, spec: WeightSpaceSpec, data: Split, latency_batch: int
             ) -> dict[str, Any]:
    loss, accuracy = evaluate(model, data.x_test, data.y_test)
    cost = model_cost(model, spec, latency_batch=latency_batch)
    return {"accuracy": accuracy, "loss": loss, **cost.to_dict()}


@dataclass
class PruneOutcome:
    """A pruned model and what it took.

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


def _check_request(sparsity: float | None, speedup: float | None, structured: bool,
                   method: str, finetune_epochs: int, metanet) -> None:
    if method not in PRUNE_METHODS:
        raise PruneError(f"unknown method {method!r}; choose one of {', '.join(PRUNE_METHODS)}")
    if (sparsity is None) == (speedup is None):
        raise PruneError("give exactly one of --sparsity and --speedup")
    if speedup is not None and not structured:
        raise PruneError("--speedup needs --structured: zeroing single weights does not make a "
                         "dense model faster")
    if finetune_epochs < 0:
        raise PruneError(f"finetune epochs must be >= 0, got {finetune_epochs}")
    if method == "meta" and metanet is None:
        raise PruneError("method 'meta' needs --metanet (a pruner trained with "
                         "weightspace.prune.meta.meta_train)")


def _meta_rewrite(metanet, spec: WeightSpaceSpec, state: dict[str, Tensor]) -> dict[str, Tensor]:
    from weightspace.prune.meta import load_meta_pruner

    pruner = load_meta_pruner(metanet) if isinstance(metanet, (str, os.PathLike)) else metanet
    if pruner.spec.hash != spec.hash:
        raise PruneError(f"{metanet}: the metanetwork was trained for another architecture "
                         f"(spec {pruner.spec.hash[:12]}, this model {spec.hash[:12]})")
    return pruner.rewrite(state)


def prune_model(model: nn.Module, spec: WeightSpaceSpec, data: Split | None,
                sparsity: float | None = None, speedup: float | None = None,
                structured: bool = False, method: str = "magnitude", importance: str = "l2",
                scope: str | None = None, metanet=None, finetune_epochs: int = 0,
                lr: float = 1e-3, seed: int = 0, progress: bool = False) -> PruneOutcome:
    """Prune ``model`` (not changed) and fine-tune the result.

    The arguments are those of :func:`prune_checkpoint`; ``metanet`` may also
    be a loaded :class:`~weightspace.prune.meta.MetaPruner`, and ``data``
    (needed by Taylor scores and fine-tuning) a :class:`~weightspace.data.Split`.
    """
    _check_request(sparsity, speedup, structured, method, finetune_epochs, metanet)
    if data is None and (method == "taylor" or finetune_epochs):
        raise PruneError("Taylor importance and fine-tuning need data (--data)")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    full = copy.deepcopy(model).eval()
    source = _meta_rewrite(metanet, spec, state) if method == "meta" else state

    if structured:
        scope = scope or "space"
        if method == "taylor":
            scores = neuron_importance(source, spec, "taylor", model=full,
                                       batches=list(data_batches(data)))
        else:
            scores = neuron_importance(source, spec, "random" if method == "random" else
                                       importance, seed=seed)
        if speedup is not None:
            sparsity = sparsity_for_speedup(spec, scores, speedup, scope)
        keep = select_neurons_to_keep(scores, spec, sparsity, scope)
        pruned = shrink_model(full, spec, keep, state_dict=source)
        pruned_spec = trace(pruned, (1, *spec.input_shape))
        sizes = pruned_sizes(spec, keep)
        handle, metadata = None, pruned_metadata(sizes)
    else:
        scope = scope or "global"
        if method == "taylor":
            ranked = _weight_taylor_scores(full, source, data)
        elif method == "random":
            generator = torch.Generator().manual_seed(seed)
            ranked = {k: torch.rand(v.shape, generator=generator) for k, v in source.items()}
        else:
            ranked = source
        masks = magnitude_masks(ranked, spec, sparsity, scope=scope)
        pruned = copy.deepcopy(full)
        pruned.load_state_dict(source)
        handle = attach_masks(pruned, masks)
        pruned_spec, sizes, metadata = spec, None, None

    if finetune_epochs:
        train_classifier(pruned, data, epochs=finetune_epochs, lr=lr, seed=seed,
                         progress=progress)
    if handle is not None:
        handle.remove()
    return PruneOutcome(pruned.eval(), pruned_spec, float(sparsity), sizes, metadata)


def prune_checkpoint(checkpoint: str | os.PathLike[str], model: nn.Module, spec: WeightSpaceSpec,
                     output: str | os.PathLike[str], sparsity: float | None = None,
                     speedup: float | None = None, structured: bool = False,
                     method: str = "magnitude", importance: str = "l2", scope: str | None = None,
                     metanet: str | os.PathLike[str] | None = None, data: str = "digits",
                     finetune_epochs: int = 0, lr: float = 1e-3, seed: int = 0,
                     latency_batch: int = 256, progress: bool = False) -> dict[str, Any]:
    """Prune a checkpoint, fine-tune it, measure it before and after, save it.

    Args:
        checkpoint: ``.safetensors`` or ``.pt`` state dict of ``model``'s
            architecture (loaded without running code).
        model: a module of the architecture (its own weights are not used).
        spec: ``model``'s spec.
        output: where the pruned checkpoint goes (written atomically).
        sparsity: unstructured: the fraction of weights set to zero;
            structured: the fraction of hidden neurons removed.
        speedup: structured only, instead of ``sparsity``: the reduction of
            multiply-accumulates to reach.
        structured: remove neurons (a smaller, faster model) instead of
            zeroing single weights.
        method: one of :data:`PRUNE_METHODS`: ``"magnitude"`` (weights, or
            the ``importance`` norm of each neuron's group), ``"taylor"``
            (first-order loss change, uses data), ``"meta"`` (a trained
            metanetwork first maps the network to one that is easier to
            prune; needs ``metanet``) or ``"random"`` (the control).
        importance: the structured magnitude criterion: ``"l1"``, ``"l2"``
            or ``"bn"`` (norm scale γ).
        scope: unstructured: ``"global"`` (default) or ``"layer"``;
            structured: ``"space"`` (default) or ``"global"``.
        metanet: a pruner saved by :func:`weightspace.prune.meta.save_meta_pruner`.
        data: ``"digits"`` or an ``.npz`` for accuracy, Taylor scores and
            fine-tuning.
        finetune_epochs: epochs of Adam fine-tuning after pruning (masks stay
            applied for unstructured pruning).
        lr: fine-tuning learning rate.
        seed: fine-tuning data order (and the random control's scores).
        latency_batch: batch size of the latency measurement (0: skip it).
        progress: tqdm progress bars.

    Returns:
        A JSON-ready report: ``before`` and ``after`` (accuracy, loss,
        parameters, non-zero parameters, MACs, latency), the reductions, the
        settings and the output path.
    """
    from weightspace.merge.pipeline import load_checked

    _check_request(sparsity, speedup, structured, method, finetune_epochs, metanet)
    state = load_checked(checkpoint, spec)
    split = load_split(data, (1, *spec.input_shape))
    full = copy.deepcopy(model)
    full.load_state_dict(state)
    full.eval()
    before = _measure(full, spec, split, latency_batch)
    outcome = prune_model(full, spec, split, sparsity=sparsity, speedup=speedup,
                          structured=structured, method=method, importance=importance,
                          scope=scope, metanet=metanet, finetune_epochs=finetune_epochs, lr=lr,
                          seed=seed, progress=progress)
    after = _measure(outcome.model, outcome.spec, split, latency_batch)
    result = {k: v.detach().clone() for k, v in outcome.model.state_dict().items()}
    save_state_dict(result, output, metadata=outcome.metadata)
    logger.info("%s: pruned %s -> %s", checkpoint, before, after)

    def ratio(key: str) -> float | None:
        if before.get(key) is None or not after.get(key):
            return None
        return before[key] / after[key]

    return {
        "checkpoint": str(checkpoint), "output": str(Path(output)),
        "structured": structured, "method": method,
        "importance": importance if structured and method in ("magnitude", "meta") else None,
        "scope": scope or ("space" if structured else "global"),
        "sparsity": outcome.sparsity, "target_speedup": speedup,
        "finetune_epochs": finetune_epochs,
        "before": before, "after": after,
        "parameter_reduction": ratio("parameters"), "nonzero_reduction": ratio("nonzero"),
        "mac_reduction": ratio("macs"), "latency_speedup": ratio("latency_ms"),
        "pruned_sizes": outcome.pruned_sizes,
    }
