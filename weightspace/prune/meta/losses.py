"""The meta-pruner's training losses: the task loss of the output networks and
their group-sparsity penalty.

The task loss runs the ``B`` output networks functionally
(:func:`~weightspace.functional.batched_forward`), so its gradient reaches
the metanetwork; the penalty is the group lasso over every neuron's
dependency group (:func:`~weightspace.prune.group_norms`), optionally
weighted as in DepGraph's sparse training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightspace.functional import batched_forward
from weightspace.prune.structured import group_norms
from weightspace.spec import WeightSpaceSpec

__all__ = ["group_lasso", "output_logits"]


def output_logits(model: nn.Module, spec: WeightSpaceSpec, params: Tensor, inputs: Tensor
                  ) -> Tensor:
    """Logits of ``B`` classifiers of ``model``'s architecture on the same
    inputs, differentiable with respect to ``params``
    (:func:`~weightspace.functional.batched_forward`; ``model`` must be in
    eval mode, its own weights are not used).

    Shapes:
        - params: ``[B, P]``, inputs: ``[n, *input_shape]``
        - output: ``[B, n, classes]``
    """
    return batched_forward(model, spec, params, inputs)


def group_lasso(spec: WeightSpaceSpec, params: Tensor, alpha: float = 0.0) -> Tensor:
    """The group-sparsity penalty of each network: the sum over every
    prunable space of its neurons' group-L2 norms
    (:func:`~weightspace.prune.group_norms`), differentiable.

    With ``alpha > 0`` each norm is weighted as in DepGraph's sparse training
    (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023):
    ``2 ** (alpha * (I_max - I_i) / (I_max - I_min))`` with ``I`` the
    (detached) norms of the space, so the least important neurons are pushed
    to zero up to ``2 ** alpha`` times harder than the most important ones —
    the penalty concentrates on what pruning will remove instead of
    shrinking every neuron alike.

    Shapes:
        - params: ``[B, P]``
        - output: ``[B]``
    """
    state = spec.split_parameters(params)
    totals = []
    for b in range(params.shape[0]):
        total = params.new_zeros(())
        for norms in group_norms({k: v[b] for k, v in state.items()}, spec).values():
            if alpha > 0 and norms.numel() > 1:
                importance = norms.detach()
                spread = (importance.max() - importance.min()).clamp_min(1e-12)
                weights = torch.exp2(alpha * (importance.max() - importance) / spread)
                norms = weights * norms
            total = total + norms.sum()
        totals.append(total)
    return torch.stack(totals)

