"""Meta-training of a :class:`~weightspace.prune.meta.MetaPruner` (Liu et al., 2025).

Each step maps a batch of trained networks through the pruner and minimises
the cross-entropy of the *output* networks on a minibatch of images
(:func:`~weightspace.prune.meta.output_logits`) plus ``λ`` times their group
lasso (:func:`~weightspace.prune.meta.group_lasso`), optionally with ``λ``
ramped up from 0. AdamW, gradient clipping and the warm-up/cosine schedule
every training loop of the library shares
(:func:`~weightspace.train.schedule.warmup_cosine_scheduler`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from weightspace.data import Split
from weightspace.prune.meta.losses import group_lasso, output_logits
from weightspace.prune.meta.pruner import MetaPruner
from weightspace.prune.meta.selection import trained_zoo_rows
from weightspace.prune.structured import PruneError
from weightspace.spec import WeightSpaceSpec
from weightspace.train.schedule import warmup_cosine_scheduler

logger = logging.getLogger("weightspace.prune.meta")

__all__ = ["meta_train"]

#: The per-epoch means :func:`meta_train` reports (besides ``epoch``).
_METRICS = ("loss", "task_loss", "group_lasso", "input_group_lasso", "train_accuracy")


def meta_train(pruner: MetaPruner, networks: Tensor | str | os.PathLike[str],
               spec: WeightSpaceSpec, model: nn.Module, data: Split, *, group: str | None = None,
               epochs: int = 100, batch_size: int = 8, lr: float = 1e-3,
               sparsity_weight: float = 1e-3, sparsity_alpha: float = 0.0,
               sparsity_ramp: float = 0.0,
               image_batch: int = 128,
               weight_decay: float = 0.0, grad_clip: float = 1.0, seed: int = 0,
               progress: bool = False) -> list[dict[str, float]]:
    """Meta-train ``pruner`` over a zoo of networks (Liu et al., 2025).

    Each step takes a batch of networks and a minibatch of training images,
    maps the networks through the pruner, and minimises the mean
    cross-entropy of the *output* networks on the images plus
    ``sparsity_weight`` times their mean group-lasso penalty
    (:func:`group_lasso`). AdamW with a cosine learning-rate decay and
    gradient clipping. The encoders' normalisation is fitted on ``networks``
    first unless the pruner already has it. Deterministic for a ``seed`` (on
    one device and thread count).

    Args:
        pruner: the metanetwork (trained in place; left in eval mode).
        networks: ``[N, P]`` flat parameters of trained networks, or a zoo
            path whose trained networks (:func:`trained_zoo_rows`: last
            checkpoints, train split) of ``group`` are used.
        spec: the architecture (must be the pruner's).
        model: a module of the architecture, for the functional forward (its
            weights are not used or changed).
        data: images and labels; only the training part is used.
        group: the zoo group when ``networks`` is a path.
        epochs: passes over the networks.
        batch_size: networks per step.
        lr: peak learning rate.
        sparsity_weight: ``λ``, weight of the group-lasso penalty.
        sparsity_ramp: the fraction of training over which ``λ`` grows
            linearly from 0 to ``sparsity_weight`` (0: constant), so the
            pruner first learns to keep the task before it is pushed to
            sparsify.
        sparsity_alpha: DepGraph's importance-adaptive weighting of the
            penalty (:func:`group_lasso`; 0: plain group lasso).
        image_batch: training images per step (shared by the step's networks).
        weight_decay: AdamW weight decay of the metanetwork.
        grad_clip: maximum gradient norm (``0``: no clipping).
        seed: network order, images and dropout.
        progress: tqdm progress bar.

    Returns:
        One entry per epoch: mean ``loss``, ``task_loss`` (cross-entropy of
        the output networks), ``group_lasso`` (penalty of the outputs),
        ``input_group_lasso`` (penalty of the inputs, for reference) and
        ``train_accuracy`` (of the output networks on the step's images).

    Shapes:
        - networks: ``[N, P]``
    """
    networks = _training_networks(pruner, networks, spec, group, epochs, batch_size,
                                  image_batch, sparsity_ramp)
    weight = next(pruner.parameters())
    networks = networks.detach().to(device=weight.device, dtype=weight.dtype)
    images = _Images(data.x_train.to(device=weight.device, dtype=weight.dtype),
                     data.y_train.to(weight.device), image_batch)
    if not pruner.is_normalisation_fitted:
        pruner.fit_normalisation(networks[:512])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(pruner.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, math.ceil(len(networks) / batch_size) * epochs)
    scheduler = warmup_cosine_scheduler(optimizer, min(20, max(1, total // 20)), total)
    objective = _Objective(spec, _functional_copy(model, weight), sparsity_weight,
                           sparsity_alpha, sparsity_ramp, total)
    history: list[dict[str, float]] = []
    pruner.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout inside the GMN
        bar = tqdm(range(epochs), desc="meta-training", unit="epoch", disable=not progress)
        for epoch in bar:
            sums = _epoch(pruner, objective, optimizer, scheduler, networks, images, generator,
                          batch_size, grad_clip)
            record = {"epoch": epoch + 1, **sums}
            history.append(record)
            bar.set_postfix(task=f"{sums['task_loss']:.3f}",
                            lasso=f"{sums['group_lasso']:.1f}/{sums['input_group_lasso']:.1f}")
            logger.debug("meta-training epoch %d: %s", epoch + 1, record)
    pruner.eval()
    if history:
        logger.info("meta-training done: task loss %.4f, group lasso %.2f (inputs %.2f)",
                    history[-1]["task_loss"], history[-1]["group_lasso"],
                    history[-1]["input_group_lasso"])
    return history


def _training_networks(pruner: MetaPruner, networks: Tensor | str | os.PathLike[str],
                       spec: WeightSpaceSpec, group: str | None, epochs: int, batch_size: int,
                       image_batch: int, sparsity_ramp: float) -> Tensor:
    """Check :func:`meta_train`'s arguments; the ``[N, P]`` networks (read from
    the zoo when ``networks`` is a path)."""
    if pruner.spec.hash != spec.hash:
        raise PruneError("the meta-pruner was built for another architecture than `spec`",
                         parameter="spec")
    if isinstance(networks, (str, os.PathLike)):
        networks, _ = trained_zoo_rows(networks, group, spec=spec)
    if networks.dim() != 2 or networks.shape[1] != spec.num_parameters:
        raise PruneError(f"networks must be [N, {spec.num_parameters}] flat parameters, got "
                         f"{list(networks.shape)}", parameter="networks")
    if epochs < 0 or batch_size < 1 or image_batch < 1:
        raise PruneError("epochs must be >= 0 and batch_size, image_batch >= 1",
                         parameter="epochs" if epochs < 0 else
                         "batch_size" if batch_size < 1 else "image_batch")
    if not 0.0 <= sparsity_ramp <= 1.0:
        raise PruneError(f"sparsity_ramp is a fraction of training in [0, 1], got "
                         f"{sparsity_ramp}", parameter="sparsity_ramp")
    return networks


def _functional_copy(model: nn.Module, like: Tensor) -> nn.Module:
    """A frozen eval-mode copy of ``model`` on ``like``'s device and dtype, for
    the functional forward (the caller's module is left untouched)."""
    functional = copy.deepcopy(model).to(device=like.device, dtype=like.dtype).eval()
    for p in functional.parameters():
        p.requires_grad_(False)
    return functional


@dataclass(frozen=True)
class _Images:
    """The training images, drawn ``batch`` at a time (with replacement)."""

    x: Tensor
    y: Tensor
    batch: int

    def draw(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        index = torch.randint(len(self.y), (self.batch,), generator=generator)
        index = index.to(self.y.device)
        return self.x[index], self.y[index]


@dataclass(frozen=True)
class _Objective:
    """The meta-training loss: task loss of the output networks plus the
    (ramped) group-lasso penalty, ``task + λ · ramp(step) · penalty``.

    ``ramp`` grows linearly from 0 to 1 over the first ``sparsity_ramp``
    fraction of the ``total`` optimiser steps (1 throughout when it is 0).
    """

    spec: WeightSpaceSpec
    functional: nn.Module
    sparsity_weight: float
    sparsity_alpha: float
    sparsity_ramp: float
    total: int

    def __call__(self, out: Tensor, x: Tensor, y: Tensor, step: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(loss, task, penalty, logits)`` of output networks ``out`` [B, P]."""
        logits = output_logits(self.functional, self.spec, out, x)
        task = nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(len(out)))
        penalty = group_lasso(self.spec, out, self.sparsity_alpha).mean()
        ramp = (1.0 if self.sparsity_ramp == 0
                else min(1.0, step / (self.sparsity_ramp * self.total)))
        return task + self.sparsity_weight * ramp * penalty, task, penalty, logits


def _epoch(pruner: MetaPruner, objective: _Objective, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, networks: Tensor, images: _Images,
           generator: torch.Generator, batch_size: int, grad_clip: float) -> dict[str, float]:
    """One pass over ``networks`` [N, P] in a random order, ``batch_size`` per
    step; the metrics' means over the networks."""
    order = torch.randperm(len(networks), generator=generator)
    sums = dict.fromkeys(_METRICS, 0.0)
    for start in range(0, len(order), batch_size):
        params = networks[order[start:start + batch_size].to(networks.device)]
        step = _step(pruner, objective, optimizer, scheduler, params, images.draw(generator),
                     grad_clip)
        share = len(params) / len(networks)
        for key, value in step.items():
            sums[key] += value * share
    return sums


def _step(pruner: MetaPruner, objective: _Objective, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, params: Tensor,
          images: tuple[Tensor, Tensor], grad_clip: float) -> dict[str, float]:
    """One optimiser step on the networks ``params`` [B, P]; the step's metrics."""
    x, y = images
    out = pruner(params)
    # scheduler.last_epoch: the optimiser steps taken so far
    loss, task, penalty, logits = objective(out, x, y, scheduler.last_epoch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(pruner.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        return {"loss": float(loss), "task_loss": float(task), "group_lasso": float(penalty),
                "input_group_lasso": float(group_lasso(objective.spec, params).mean()),
                "train_accuracy": float((logits.argmax(-1) == y).float().mean())}
