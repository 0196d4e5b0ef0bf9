"""Metanetwork-guided structured pruning.

Reference: Liu, Wang, Zhang, "Meta Pruning via Graph Metanetworks: A
Universal Meta Learning Framework for Network Pruning" (arXiv:2506.12041,
2025; code github.com/Yewei-Liu/MetaPruning). A network becomes its parameter graph (channels as nodes, kernels as
edge features), a graph metanetwork with *equivariant* outputs maps it to a
modified network of the same architecture that is easier to prune, and the
metanetwork is meta-trained over many networks with

.. math::
    \\mathcal{L}(\\phi) = \\mathbb{E}_{\\theta \\sim \\text{zoo}}\\Big[
        \\mathcal{L}_{\\text{task}}\\big(f_{M_\\phi(\\theta)}\\big)
        + \\lambda \\sum_{s} \\sum_{i \\in s} \\lVert M_\\phi(\\theta)_{g(s, i)} \\rVert_2 \\Big]

— the task loss of the *output* network (through a functional forward, so
the gradient reaches the metanetwork) plus a group-lasso term over every
neuron's dependency group ``g(s, i)`` (all weights that touch neuron ``i`` of
space ``s``, :func:`~weightspace.prune.group_norms`). A new network is then
mapped once, pruned structurally to a target speed-up by group-L2
importance, and fine-tuned.

The metanetwork is a :class:`~weightspace.nn.GMN` (Lim et al., ICLR 2024)
with its equivariant head: permuting the hidden neurons of the input permutes
those of the output the same way, and its decoder starts at the identity (it
adds zero-initialised changes to the input's values), so an untrained
:class:`MetaPruner` returns its input and meta-training starts from "prune
the network as it is".

Example::

    >>> spec = zoo.group("cnn-silu").spec
    >>> model = zoo.group("cnn-silu").model_def.build()
    >>> pruner = MetaPruner(spec, hidden=64, num_layers=4)
    >>> rows, _ = trained_zoo_rows("digits-cnn.h5", "cnn-silu")
    >>> history = meta_train(pruner, rows, spec, model, load_digits_split(),
    ...                      epochs=100, sparsity_weight=3e-3)
    >>> small, report = meta_prune(pruner, model, spec, state_dict, speedup=2.0,
    ...                            data=load_digits_split(), finetune_epochs=5)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from weightspace.classify import evaluate, train_classifier
from weightspace.data import Split
from weightspace.graph.template import GraphTemplate
from weightspace.nn.base import as_parameters, graph_batch
from weightspace.nn.gmn import GMN
from weightspace.nn.probes import add_probe_features
from weightspace.prune.cost import count_macs
from weightspace.prune.structured import (
    PruneError,
    group_norms,
    neuron_importance,
    pruneable_spaces,
    pruned_sizes,
    select_neurons_to_keep,
    shrink_model,
    sparsity_for_speedup,
)
from weightspace.spec import WeightSpaceSpec

logger = logging.getLogger(__name__)

#: Metadata keys of a saved :class:`MetaPruner` (``.safetensors`` header).
CONFIG_METADATA = "weightspace.meta_pruner.config"
SPEC_METADATA = "weightspace.meta_pruner.spec"
FORMAT_METADATA = "weightspace.meta_pruner.format"
TRAINING_METADATA = "weightspace.meta_pruner.training"
FORMAT_VERSION = "1"

#: Constructor arguments of :class:`MetaPruner` that a saved config may set,
#: with the type each must have (loading builds the module from these alone).
GMN_ARGUMENTS: dict[str, type | tuple[type, ...]] = {
    "hidden": int, "num_layers": int, "fourier": int, "fourier_scale": (int, float),
    "aggr": str, "dropout": (int, float), "seed": int, "mode": str,
}

#: What the metanetwork may change: ``"edit"`` adds a change to every
#: parameter (the paper's equivariant GMN); ``"gate"`` only rescales each
#: hidden neuron's whole dependency group by a learned non-negative factor.
MODES = ("edit", "gate")

#: Roles scaled by a neuron's gate: its group (weights in and out, bias, norm
#: parameters) and the running statistics that must follow the producer.
_SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(_SOFTPLUS_ONE) == 1

_GATED_ROLES = ("weight", "depthwise_weight", "bias", "norm_weight", "norm_bias",
                "running_mean", "running_var")


class MetaPruner(nn.Module):
    """A graph metanetwork that maps networks of one architecture to networks
    of the same architecture that are easier to prune structurally (Liu,
    Wang, Zhang, "Meta Pruning via Graph Metanetworks", arXiv:2506.12041).

    A :class:`~weightspace.nn.GMN` with the equivariant head over the
    parameter graph of ``spec`` (:class:`~weightspace.graph.GraphTemplate`):
    permuting the input network's hidden neurons permutes the output's the
    same way, and the untrained pruner is the identity map.

    Two output modes:

    * ``"edit"`` (the paper's): the GMN's equivariant decoder adds a change
      to every weight, bias and norm parameter (in units of each layer's
      fitted standard deviation).
    * ``"gate"`` (a constrained variant): a zero-initialised MLP on each
      hidden neuron's node features gives a factor
      ``s_i = softplus(g_i + log(e - 1)) > 0`` (1 before training)
      that multiplies every parameter of the neuron's dependency group —
      incoming weights and bias, norm parameters, outgoing weights — with
      BatchNorm running statistics following (mean × s, variance × s²). The
      metanetwork then only decides how much of each neuron to keep: one
      number per neuron instead of one per weight, a much smaller family of
      maps to learn from a small zoo. Neurons of a residual stream get the
      mean of their layers' gates.

    Args:
        spec: the architecture of the networks it prunes.
        hidden: node and edge channels of the GMN.
        num_layers: message-passing layers.
        fourier: random Fourier frequencies per input scalar.
        fourier_scale: their standard deviation.
        aggr: message aggregation.
        dropout: dropout inside the GMN layers.
        seed: seed of the initial weights (the construction does not touch
            the global random state).
        mode: ``"edit"`` or ``"gate"`` (see above).

    Shapes:
        - input: ``[B, P]`` flat parameters in ``spec``'s order
          (``P = spec.num_parameters``), any floating dtype
        - output: ``[B, P]`` new flat parameters, in the input's dtype
    """

    def __init__(self, spec: WeightSpaceSpec, *, hidden: int = 64, num_layers: int = 4,
                 fourier: int = 16, fourier_scale: float = 4.0, aggr: str = "mean",
                 dropout: float = 0.0, seed: int = 0, mode: str = "edit") -> None:
        super().__init__()
        if mode not in MODES:
            raise PruneError(f"unknown meta-pruner mode {mode!r}; choose one of {MODES}")
        self.spec = spec
        self.mode = mode
        self.config = {"hidden": int(hidden), "num_layers": int(num_layers),
                       "fourier": int(fourier), "fourier_scale": float(fourier_scale),
                       "aggr": str(aggr), "dropout": float(dropout), "seed": int(seed),
                       "mode": mode}
        self.template = GraphTemplate.for_spec(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.gmn = GMN(self.template, 1, hidden=hidden, num_layers=num_layers,
                           fourier=fourier, fourier_scale=fourier_scale, aggr=aggr,
                           dropout=dropout, head="equivariant")
            if mode == "gate":
                self.gate = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(),
                                          nn.Linear(hidden, 1))
                nn.init.zeros_(self.gate[-1].weight)
                nn.init.zeros_(self.gate[-1].bias)
                del self.gmn.decoder  # the gate replaces the per-weight decoder
        # graph nodes of every pruneable space, [layers on the space, size]
        self._gate_nodes = {
            space: torch.stack([torch.arange(layer.size) + self.template.layer_offsets[layer.name]
                                for layer in spec.layers if layer.space == space])
            for space in pruneable_spaces(spec)}
        # set once the encoders' per-depth statistics are fitted (saved with the weights)
        self.register_buffer("normalisation_fitted", torch.zeros((), dtype=torch.bool))

    @property
    def is_normalisation_fitted(self) -> bool:
        return bool(self.normalisation_fitted)

    @torch.no_grad()
    def fit_normalisation(self, params: Tensor) -> MetaPruner:
        """Fit the GMN encoders' per-depth standardisation on ``[N, P]``
        training networks (the equivariant head's changes are in these units,
        so every layer is changed on its own scale)."""
        self.gmn.fit_normalisation(self._as_gmn_input(params))
        self.normalisation_fitted.fill_(True)
        return self

    def _as_gmn_input(self, params: Tensor) -> Tensor:
        params = params.unsqueeze(0) if params.dim() == 1 else params
        if params.dim() != 2 or params.shape[1] != self.spec.num_parameters:
            raise PruneError(f"the meta-pruner expects flat parameters [B, "
                             f"{self.spec.num_parameters}] of its architecture, got "
                             f"{list(params.shape)}")
        weight = next(self.gmn.parameters())
        return params.to(device=weight.device, dtype=weight.dtype)

    def forward(self, params: Tensor) -> Tensor:
        inputs = self._as_gmn_input(params)
        if self.mode == "edit":
            out = as_parameters(self.gmn(inputs), self.template)
        else:
            out = self._apply_gates(inputs, self.neuron_gates(inputs))
        return out.to(params.dtype)

    @torch.no_grad()
    def rewrite(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Map one network, as a state dict, through the pruner (eval mode,
        no gradient). Entries the spec does not describe (BatchNorm's
        ``num_batches_tracked``) are passed through unchanged."""
        state = {k: v.detach() for k, v in state_dict.items()}
        self.spec.check_state_dict(state)
        was_training = self.training
        self.eval()
        try:
            mapped = self.spec.unflatten(self(self.spec.flatten(state)[None])[0].cpu())
        finally:
            self.train(was_training)
        return {**state, **mapped}

    def neuron_gates(self, params: Tensor) -> dict[str, Tensor]:
        """``"gate"`` mode: each hidden neuron's factor (1 before training).

        Shapes:
            - params: ``[B, P]``
            - output: ``{space: [B, size]}``
        """
        if self.mode != "gate":
            raise PruneError("neuron_gates needs a meta-pruner of mode 'gate'")
        params = self._as_gmn_input(params)
        data = graph_batch(params, self.template)
        h, _ = self.gmn.encode(add_probe_features(data, self.gmn.probe_features))
        g = self.gate(h).reshape(params.shape[0], self.template.num_nodes)
        # softplus shifted so that g = 0 (the zero-initialised MLP) gives 1; smooth, so a
        # gate near zero can still come back
        return {space: nn.functional.softplus(g[:, nodes.to(g.device)].mean(1) + _SOFTPLUS_ONE)
                for space, nodes in self._gate_nodes.items()}

    def _apply_gates(self, params: Tensor, gates: Mapping[str, Tensor]) -> Tensor:
        state = self.spec.split_parameters(params)
        for p in self.spec.parameters:
            if p.role not in _GATED_ROLES:
                continue
            value = state[p.name]
            for axis, a in enumerate(p.axes):
                if a is None or a.space not in gates:
                    continue
                if p.role == "running_var" and axis != 0:
                    continue
                factor = gates[a.space].repeat_interleave(a.block, dim=1)
                if p.role == "running_var":
                    factor = factor.square()
                shape = [params.shape[0]] + [1] * len(p.shape)
                shape[axis + 1] = factor.shape[1]
                value = value * factor.reshape(shape)
            state[p.name] = value
        return self.spec.join_parameters(state)


# ------------------------------------------------------------------ the zoo
def trained_zoo_rows(path: str | os.PathLike[str], group: str | None = None,
                     split: str | None = "train", min_accuracy: float | None = None,
                     accuracy_column: str = "test_accuracy", spec: WeightSpaceSpec | None = None
                     ) -> tuple[Tensor, np.ndarray]:
    """The trained networks of one architecture of a zoo: the last checkpoint
    of every run (finite weights), of the ``split`` part when the zoo has a
    ``split`` column, optionally only those with ``accuracy_column >=
    min_accuracy``.

    Args:
        path: the zoo file.
        group: its architecture (may be omitted when the zoo has one group).
        spec: when given, the group's architecture must be this one.

    Returns:
        ``(rows, indices)``: ``[N, P]`` float32 parameters and their global
        row indices.
    """
    from weightspace.zoo import open_zoo

    zoo = open_zoo(path)
    try:
        if group is None:
            if len(zoo.groups) != 1:
                raise PruneError(f"{path} has groups {list(zoo.groups)}; a meta-pruner works on "
                                 f"one architecture, name one")
            group = next(iter(zoo.groups))
        if spec is not None and zoo.group(group).spec.hash != spec.hash:
            raise PruneError(f"{path}: group {group!r} holds another architecture than the "
                             f"meta-pruner's (e.g. another activation)")
        equals: dict[str, Any] = {}
        if split is not None and "split" in zoo.columns:
            equals["split"] = split
        indices = zoo.select(group=group, last_checkpoint=True, **equals)
        if min_accuracy is not None:
            accuracy = zoo.column(accuracy_column, indices).astype(float)
            indices = indices[accuracy >= min_accuracy]
        if len(indices) == 0:
            raise PruneError(f"{path}: no trained networks in group {group!r}"
                             + (f" with {accuracy_column} >= {min_accuracy}"
                                if min_accuracy is not None else ""))
        rows = zoo.params(indices).float()
    finally:
        zoo.close()
    return rows, indices


# -------------------------------------------------------------- the losses
def output_logits(model: nn.Module, spec: WeightSpaceSpec, params: Tensor, inputs: Tensor
                  ) -> Tensor:
    """Logits of ``B`` networks of ``model``'s architecture on the same
    inputs, differentiable with respect to ``params`` (one vectorised
    functional forward; ``model`` must be in eval mode, its own weights are
    not used).

    Shapes:
        - params: ``[B, P]``, inputs: ``[n, *input_shape]``
        - output: ``[B, n, classes]``
    """
    state = spec.split_parameters(params)

    def run(single: dict[str, Tensor]) -> Tensor:
        return functional_call(model, single, (inputs,))

    try:
        return vmap(run)(state)
    except RuntimeError as err:  # an op without a batching rule: loop instead
        logger.debug("vmap of the functional forward failed (%s); looping", err)
        return torch.stack([run({k: v[b] for k, v in state.items()})
                            for b in range(params.shape[0])])


def group_lasso(spec: WeightSpaceSpec, params: Tensor, alpha: float = 0.0) -> Tensor:
    """The group-sparsity penalty of each network: the sum over every
    pruneable space of its neurons' group-L2 norms
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


# ------------------------------------------------------------ meta-training
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
    if pruner.spec.hash != spec.hash:
        raise PruneError("the meta-pruner was built for another architecture than `spec`")
    if isinstance(networks, (str, os.PathLike)):
        networks, _ = trained_zoo_rows(networks, group, spec=spec)
    if networks.dim() != 2 or networks.shape[1] != spec.num_parameters:
        raise PruneError(f"networks must be [N, {spec.num_parameters}] flat parameters, got "
                         f"{list(networks.shape)}")
    if epochs < 0 or batch_size < 1 or image_batch < 1:
        raise PruneError("epochs must be >= 0 and batch_size, image_batch >= 1")
    if not 0.0 <= sparsity_ramp <= 1.0:
        raise PruneError(f"sparsity_ramp is a fraction of training in [0, 1], got "
                         f"{sparsity_ramp}")
    weight = next(pruner.parameters())
    networks = networks.detach().to(device=weight.device, dtype=weight.dtype)
    x_train = data.x_train.to(device=weight.device, dtype=weight.dtype)
    y_train = data.y_train.to(weight.device)
    functional = copy.deepcopy(model).to(device=weight.device, dtype=weight.dtype).eval()
    for p in functional.parameters():
        p.requires_grad_(False)

    if not pruner.is_normalisation_fitted:
        pruner.fit_normalisation(networks[:512])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(pruner.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(networks) / batch_size)
    total = max(1, steps_per_epoch * epochs)
    warmup = min(20, max(1, total // 20))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, float]] = []
    pruner.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout inside the GMN
        bar = tqdm(range(epochs), desc="meta-training", unit="epoch", disable=not progress)
        for epoch in bar:
            order = torch.randperm(len(networks), generator=generator)
            sums = dict.fromkeys(("loss", "task_loss", "group_lasso", "input_group_lasso",
                                  "train_accuracy"), 0.0)
            for start in range(0, len(order), batch_size):
                params = networks[order[start:start + batch_size].to(networks.device)]
                images = torch.randint(len(y_train), (image_batch,), generator=generator)
                images = images.to(y_train.device)
                x, y = x_train[images], y_train[images]
                out = pruner(params)
                logits = output_logits(functional, spec, out, x)
                task = nn.functional.cross_entropy(logits.flatten(0, 1),
                                                   y.repeat(len(params)))
                penalty = group_lasso(spec, out, sparsity_alpha).mean()
                step = scheduler.last_epoch  # optimiser steps taken so far
                ramp = 1.0 if sparsity_ramp == 0 else min(1.0, step / (sparsity_ramp * total))
                loss = task + sparsity_weight * ramp * penalty
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(pruner.parameters(), grad_clip)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    share = len(params) / len(networks)
                    sums["loss"] += float(loss) * share
                    sums["task_loss"] += float(task) * share
                    sums["group_lasso"] += float(penalty) * share
                    sums["input_group_lasso"] += float(group_lasso(spec, params).mean()) * share
                    sums["train_accuracy"] += float((logits.argmax(-1) == y).float().mean()) * share
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


# ----------------------------------------------------------------- pruning
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
                         f"{pruner.spec.hash[:12]}, this model {spec.hash[:12]})")
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


# ------------------------------------------------------------ saving/loading
def save_meta_pruner(pruner: MetaPruner, path: str | os.PathLike[str],
                     training: Mapping[str, Any] | None = None) -> Path:
    """Save a pruner as ``.safetensors``: its weights, and in the header its
    constructor arguments and the spec of its architecture (JSON), so
    :func:`load_meta_pruner` rebuilds it without running code.

    Args:
        training: optional JSON-ready notes on how it was trained (stored
            under ``weightspace.meta_pruner.training``).
    """
    from weightspace.io import save_state_dict

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise PruneError(f"{path}: a meta-pruner is saved as .safetensors (its config lives in "
                         f"the header)")
    metadata = {FORMAT_METADATA: FORMAT_VERSION,
                CONFIG_METADATA: json.dumps(pruner.config, sort_keys=True),
                SPEC_METADATA: pruner.spec.to_json()}
    if training is not None:
        metadata[TRAINING_METADATA] = json.dumps(dict(training), sort_keys=True)
    state = {k: v.detach().cpu().contiguous() for k, v in pruner.state_dict().items()}
    return save_state_dict(state, path, metadata=metadata)


def _config_from_metadata(metadata: Mapping[str, str], source: str) -> dict[str, Any]:
    missing = [k for k in (FORMAT_METADATA, CONFIG_METADATA, SPEC_METADATA) if k not in metadata]
    if missing:
        raise PruneError(f"{source}: not a saved meta-pruner (metadata {missing} missing); save "
                         f"one with weightspace.prune.meta.save_meta_pruner")
    if metadata[FORMAT_METADATA] != FORMAT_VERSION:
        raise PruneError(f"{source}: meta-pruner format {metadata[FORMAT_METADATA]!r}, this "
                         f"version reads {FORMAT_VERSION!r}")
    try:
        config = json.loads(metadata[CONFIG_METADATA])
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except ValueError as err:
        raise PruneError(f"{source}: metadata {CONFIG_METADATA!r} is corrupt ({err})") from err
    unknown = sorted(set(config) - set(GMN_ARGUMENTS))
    if unknown:
        raise PruneError(f"{source}: unknown meta-pruner arguments {unknown}")
    for key, value in config.items():
        expected = GMN_ARGUMENTS[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise PruneError(f"{source}: meta-pruner argument {key}={value!r} has the wrong type")
    return config


def load_meta_pruner(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                     ) -> MetaPruner:
    """Load a pruner saved by :func:`save_meta_pruner`; the module is built
    from the header's plain-JSON arguments and spec and the tensors are read
    with safetensors, so loading never runs code.

    Returns:
        The pruner, in eval mode.
    """
    from weightspace.io import load_metadata, load_state_dict

    metadata = load_metadata(path)
    config = _config_from_metadata(metadata, str(path))
    spec = WeightSpaceSpec.from_json(metadata[SPEC_METADATA])
    pruner = MetaPruner(spec, **config)
    state = load_state_dict(path)
    try:
        pruner.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PruneError(f"{path}: the weights do not match the meta-pruner its header "
                         f"describes ({err})") from err
    return pruner.to(map_location).eval()


def training_notes(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``training`` notes stored by :func:`save_meta_pruner`, or ``None``."""
    from weightspace.io import load_metadata

    text = load_metadata(path).get(TRAINING_METADATA)
    return None if text is None else json.loads(text)


__all__ = ["MetaPruner", "group_lasso", "load_meta_pruner", "meta_prune", "meta_train",
           "output_logits", "prune_to_speedup", "save_meta_pruner",
           "trained_zoo_rows", "training_notes"]
