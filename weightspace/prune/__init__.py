"""Pruning modulo the spec: unstructured magnitude masks, structured removal
of neurons from every parameter that touches them, lottery tickets and
metanetwork-guided pruning.

Everything here takes state dicts, modules and specs; pruning a checkpoint
file (load, check, measure, fine-tune, save) is a job:
:func:`weightspace.jobs.prune_checkpoint`."""

from weightspace.prune.cost import (
    ModelCost,
    count_macs,
    count_spec_parameters,
    measure_latency,
    model_cost,
)
from weightspace.prune.lottery import LotteryResult, LotteryRound, iterative_magnitude_pruning
from weightspace.prune.magnitude import (
    MaskHandle,
    apply_masks,
    attach_masks,
    magnitude_masks,
    prunable_parameters,
    sparsity,
)
from weightspace.prune.structured import (
    IMPORTANCE_METHODS,
    ImportanceCriterion,
    PruneError,
    group_norms,
    group_sums,
    load_pruned,
    neuron_importance,
    prunable_spaces,
    prune_state_dict,
    pruned_metadata,
    pruned_sizes,
    resize_model,
    select_neurons_to_keep,
    shrink_model,
    sizes_from_metadata,
    sparsity_for_speedup,
    taylor_importance,
)

__all__ = [
    "IMPORTANCE_METHODS",
    "ImportanceCriterion",
    "LotteryResult",
    "LotteryRound",
    "MaskHandle",
    "apply_masks",
    "attach_masks",
    "iterative_magnitude_pruning",
    "magnitude_masks",
    "prunable_parameters",
    "sparsity",
    "ModelCost",
    "PruneError",
    "count_macs",
    "count_spec_parameters",
    "group_norms",
    "group_sums",
    "load_pruned",
    "measure_latency",
    "model_cost",
    "neuron_importance",
    "prune_state_dict",
    "prunable_spaces",
    "pruned_metadata",
    "pruned_sizes",
    "resize_model",
    "select_neurons_to_keep",
    "shrink_model",
    "sizes_from_metadata",
    "sparsity_for_speedup",
    "taylor_importance",
]
