"""Pruning with a meta-trained pruner, and the magnitude baseline it is compared with.

:func:`prune_to_speedup` prunes a network structurally to a MAC reduction by
group-norm importance and fine-tunes it; :func:`meta_prune` first maps the
network through a :class:`~weightspace.prune.meta.MetaPruner` (Liu et al.,
2025). On the original network, :func:`prune_to_speedup` is the baseline.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from weightspace.classify import evaluate, train_classifier
from weightspace.data import Split
from weightspace.prune.cost import count_macs
from weightspace.prune.meta.pruner import MetaPruner
from weightspace.prune.structured import (
    PruneError,
    neuron_importance,
    pruned_sizes,
    select_neurons_to_keep,
    shrink_model,
    sparsity_for_speedup,
)
from weightspace.spec import WeightSpaceSpec

logger = logging.getLogger("weightspace.prune.meta")

__all__ = ["meta_prune", "prune_to_speedup"]


def prune_to_speedup(model: nn.Module, spec: WeightSpaceSpec, state_dict: Mapping[str, Tensor],
                     speedup: float, data: Split, finetune_epochs: int = 0, lr: float = 1e-3,
                     importance: str = "l2", scope: str = "space", seed: int = 0,
                     batch_size: int = 64, progress: bool = False,
                     pre_finetune_epochs: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Structured pruning of ``state_dict`` to a reduction of MACs by
    ``speedup`` (group-norm importance, :func:`sparsity_for_speedup`,
    :func:`select_neurons_to_keep`, :func:`shrink_model`), then fine-tuning
    with :func:`~weightspace.classify.train_classifier`. With the original
    network this is the magnitude baseline; :func:`meta_prune` calls it on
    the meta-pruner's output.

    Args:
        pre_finetune_epochs: fine-tune the full network this many epochs
            *before* pruning (the paper fine-tunes the metanetwork's output
            first; give the baseline the same budget for a fair comparison).

    Returns:
        ``(small_model, report)``: the pruned, fine-tuned model (eval mode)
        and ``accuracy_pre_finetuned`` (the full network after the
        pre-fine-tuning), ``accuracy_pruned`` (before fine-tuning),
        ``accuracy_finetuned``, ``macs_before``, ``macs_after``, ``speedup``
        (achieved), ``sparsity`` and ``sizes`` (the kept neurons per space).
    """
    state = {k: v.detach() for k, v in state_dict.items()}
    accuracy_pre = None
    if pre_finetune_epochs:
        full = copy.deepcopy(model)
        full.load_state_dict(state)
        train_classifier(full, data, epochs=pre_finetune_epochs, lr=lr, batch_size=batch_size,
                         seed=seed, progress=progress)
        state = {k: v.detach().clone() for k, v in full.state_dict().items()}
        _, accuracy_pre = evaluate(full, data.x_test, data.y_test)
    scores = neuron_importance(state, spec, importance)
    sparsity = sparsity_for_speedup(spec, scores, speedup, scope)
    keep = select_neurons_to_keep(scores, spec, sparsity, scope)
    small = shrink_model(model, spec, keep, state_dict=state)
    sizes = pruned_sizes(spec, keep)
    macs_before, macs_after = count_macs(spec), count_macs(spec, sizes)
    _, pruned_accuracy = evaluate(small, data.x_test, data.y_test)
    if finetune_epochs:
        train_classifier(small, data, epochs=finetune_epochs, lr=lr, batch_size=batch_size,
                         seed=seed, progress=progress)
    small.eval()
    _, finetuned_accuracy = evaluate(small, data.x_test, data.y_test)
    report = {"accuracy_pre_finetuned": accuracy_pre, "pre_finetune_epochs": pre_finetune_epochs,
              "accuracy_pruned": pruned_accuracy, "accuracy_finetuned": finetuned_accuracy,
              "macs_before": macs_before, "macs_after": macs_after,
              "speedup": macs_before / max(macs_after, 1), "target_speedup": speedup,
              "sparsity": sparsity, "sizes": sizes, "importance": importance, "scope": scope,
              "finetune_epochs": finetune_epochs}
    return small, report


def meta_prune(pruner: MetaPruner, model: nn.Module, spec: WeightSpaceSpec,
               state_dict: Mapping[str, Tensor], speedup: float, data: Split,
               finetune_epochs: int = 0, lr: float = 1e-3, importance: str = "l2",
               scope: str = "space", seed: int = 0, batch_size: int = 64,
               progress: bool = False, pre_finetune_epochs: int = 0
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a network with a meta-trained pruner: map it through the
    metanetwork, optionally fine-tune the mapped network
    (``pre_finetune_epochs``), prune it structurally to ``speedup``
    (group-norm importance), fine-tune (Liu et al., 2025).

    Args:
        pruner: a meta-trained :class:`MetaPruner` for ``spec``.
        model: a module of the architecture (its weights are not used or
            changed; the result is a shrunk copy).
        spec: the architecture.
        state_dict: the network to prune.
        speedup: the reduction of multiply-accumulates to reach.
        data: test accuracy and fine-tuning data.
        finetune_epochs, lr, batch_size, seed: the fine-tuning
            (:func:`~weightspace.classify.train_classifier`).
        importance: group-norm criterion on the mapped network (``"l2"``,
            ``"l1"``).
        scope: ``"space"`` (the same fraction of every space) or ``"global"``.

    Returns:
        ``(small_model, report)``: the report of :func:`prune_to_speedup`
        plus ``accuracy_before`` (the input network) and
        ``accuracy_metanet`` (the mapped network, unpruned).
    """
    if pruner.spec.hash != spec.hash:
        raise PruneError(f"the meta-pruner was trained for another architecture (spec "
                         f"{pruner.spec.hash[:12]}, this model {spec.hash[:12]})",
                         parameter="pruner")
    state = {k: v.detach() for k, v in state_dict.items()}
    spec.check_state_dict(state)
    _, accuracy_before = evaluate(model, data.x_test, data.y_test, state_dict=state)
    mapped = pruner.rewrite(state)
    _, accuracy_metanet = evaluate(model, data.x_test, data.y_test, state_dict=mapped)
    small, report = prune_to_speedup(model, spec, mapped, speedup, data, finetune_epochs, lr,
                                     importance, scope, seed, batch_size, progress,
                                     pre_finetune_epochs)
    report = {"accuracy_before": accuracy_before, "accuracy_metanet": accuracy_metanet, **report}
    logger.info("meta-pruning to %.2fx: accuracy %.4f -> metanet %.4f -> pruned %.4f -> "
                "fine-tuned %.4f", report["speedup"], accuracy_before, accuracy_metanet,
                report["accuracy_pruned"], report["accuracy_finetuned"])
    return small, report

