"""Alignment and merging of models modulo their permutation symmetries.

* :func:`weight_matching` / :func:`align`: Git Re-Basin weight matching
  (Ainsworth et al. 2023) — permute B into A's frame.
* :func:`sinkhorn_matching`: a differentiable, entropy-regularised relaxation
  of weight matching (soft permutations by Sinkhorn) plus a hard projection.
* :func:`activation_matching`: Git Re-Basin activation matching — match
  neurons by the correlation of their activations on data.
* :func:`merge_many`: Git Re-Basin MergeMany — align N models to a common
  frame and average them.
* :func:`repair`: REPAIR (Jordan et al. 2023) — rescale the channels of an
  interpolated model to the interpolated endpoint statistics.
* :func:`reset_batchnorm`: the BatchNorm reset — re-estimate the running
  statistics of a merged model from data.

The last two repair what interpolating aligned models breaks, so they live
with alignment; both read activations through :mod:`weightspace.activations`.

Everything is driven by a :class:`~weightspace.WeightSpaceSpec`, so residual
streams, conv→linear flattens, GroupNorm groups and BatchNorm statistics are
handled without per-architecture code.
"""

from weightspace.align.activation_matching import activation_matching
from weightspace.align.batchnorm import reset_batchnorm
from weightspace.align.merge_many import MergeManyResult, merge_many
from weightspace.align.repair import (
    EndpointStatistics,
    activation_stats,
    apply_repair,
    endpoint_statistics,
    repair,
    repair_points,
)
from weightspace.align.sinkhorn import SinkhornResult, sinkhorn_matching, soft_permute
from weightspace.align.weight_matching import (
    WeightMatchingResult,
    align,
    align_rows,
    weight_matching,
)

__all__ = [
    "EndpointStatistics",
    "MergeManyResult",
    "SinkhornResult",
    "WeightMatchingResult",
    "activation_matching",
    "activation_stats",
    "align",
    "align_rows",
    "apply_repair",
    "endpoint_statistics",
    "merge_many",
    "repair",
    "repair_points",
    "reset_batchnorm",
    "sinkhorn_matching",
    "soft_permute",
    "weight_matching",
]
