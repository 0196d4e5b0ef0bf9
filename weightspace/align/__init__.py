"""Alignment and merging of models modulo their permutation symmetries.

* :func:`weight_matching` / :func:`align`: Git Re-Basin weight matching
  (Ainsworth et al. 2023) — permute B into A's frame.
* :func:`sinkhorn_matching`: a differentiable, entropy-regularised relaxation
  of weight matching (soft permutations by Sinkhorn) plus a hard projection.
* :func:`activation_matching`: Git Re-Basin activation matching — match
  neurons by the correlation of their activations on data.
* :func:`solve_assignment`: the linear assignment all of them end in
  (GroupNorm spaces solved exactly over group-preserving permutations).
* :func:`merge_many`: Git Re-Basin MergeMany — align N models to a common
  frame and average them.

Everything is driven by a :class:`~weightspace.WeightSpaceSpec`, so residual
streams, conv→linear flattens, GroupNorm groups and BatchNorm statistics are
handled without per-architecture code.
"""

from weightspace.align.activation_matching import activation_matching
from weightspace.align.assignment import WeightMatchingResult, solve_assignment
from weightspace.align.merge_many import MergeManyResult, merge_many
from weightspace.align.sinkhorn import SinkhornResult, sinkhorn_matching, soft_permute
from weightspace.align.weight_matching import align, align_rows, weight_matching

__all__ = [
    "MergeManyResult",
    "SinkhornResult",
    "WeightMatchingResult",
    "activation_matching",
    "align",
    "align_rows",
    "merge_many",
    "sinkhorn_matching",
    "soft_permute",
    "solve_assignment",
    "weight_matching",
]
