"""A zoo in, a trained meta-pruner out: the job behind ``weightspace train-pruner``.

Meta-pruning (Liu, Wang, Zhang, "Meta Pruning via Graph Metanetworks",
arXiv:2506.12041, 2025): a graph metanetwork with an equivariant head is
meta-trained over the trained networks of one zoo group to map each network
to one of the same architecture that is easier to prune structurally (the
task loss of the output networks plus a group-lasso term,
:func:`weightspace.prune.meta.meta_train`). The pruner is saved atomically as
``.safetensors`` with its settings and the zoo it came from in the header
(:func:`weightspace.prune.meta.training_notes`); ``prune_checkpoint`` with
``method="meta"`` uses it. The settings are one :class:`MetaPrunerOptions`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weightspace.jobs.checkpoints import load_data
from weightspace.jobs.report import report_dict
from weightspace.prune.meta import (
    MetaPruner,
    group_lasso,
    meta_train,
    save_meta_pruner,
    trained_zoo_rows,
)
from weightspace.prune.structured import PruneError
from weightspace.zoo import open_zoo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetaPrunerOptions:
    """How :func:`train_meta_pruner` builds and meta-trains the pruner (one
    field per setting; ``metadata["help"]`` says what it does)."""

    group: str | None = field(default=None, metadata={
        "help": "the zoo group (architecture) to train on; may be omitted for a one-group zoo"})
    mode: str = field(default="edit", metadata={
        "help": "edit: change every parameter (the paper's); gate: only rescale each "
                "neuron's group"})
    hidden: int = field(default=32, metadata={"help": "GMN channels"})
    num_layers: int = field(default=3, metadata={"help": "GMN message-passing layers"})
    epochs: int = field(default=100, metadata={"help": "passes over the networks"})
    batch_size: int = field(default=8, metadata={"help": "networks per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    sparsity_weight: float = field(default=1e-2, metadata={
        "help": "weight of the group-lasso term"})
    sparsity_alpha: float = field(default=0.0, metadata={
        "help": "DepGraph's adaptive weighting: the least important neurons' norms count up "
                "to 2**alpha times more (0: plain group lasso)"})
    sparsity_ramp: float = field(default=0.0, metadata={
        "help": "fraction of training over which the group-lasso weight grows from 0 "
                "(0: constant)"})
    min_accuracy: float | None = field(default=None, metadata={
        "help": "train only on networks with at least this test accuracy"})
    data: str = field(default="digits", metadata={
        "help": "digits or an .npz file: the training images of the task loss"})
    seed: int = field(default=0, metadata={
        "help": "seed of the pruner's initial weights, the network order and the images"})


@dataclass(frozen=True)
class MetaPrunerReport:
    """What :func:`train_meta_pruner` did (``--json`` prints :meth:`to_dict`).

    Args:
        zoo, group, min_accuracy, data, epochs, batch_size, lr,
            sparsity_weight, sparsity_alpha, sparsity_ramp, mode: the settings.
        networks: how many networks it was trained on.
        rows: their row indices in the zoo (not in :meth:`to_dict`: one per
            network).
        seconds: wall time of the meta-training.
        first: the first epoch of the history (``loss``, ``task_loss``,
            ``group_lasso``, ``input_group_lasso``, ``train_accuracy``), or
            ``None`` for zero epochs.
        last: its last epoch.
        group_lasso_ratio: output over input group-lasso penalty of the
            training networks after training (below 1: sparser outputs).
        output: the pruner that was written.
    """

    zoo: str
    group: str
    networks: int
    min_accuracy: float | None
    data: str
    epochs: int
    batch_size: int
    lr: float
    sparsity_weight: float
    sparsity_alpha: float
    sparsity_ramp: float
    rows: tuple[int, ...]
    seconds: float
    mode: str
    first: dict[str, float] | None
    last: dict[str, float] | None
    group_lasso_ratio: float
    output: str

    def to_dict(self) -> dict[str, Any]:
        out = report_dict(self)
        del out["rows"]
        return out


def _architecture(zoo: str | os.PathLike[str], group: str | None):
    """``(group, spec, model)`` of the zoo group to meta-train on."""
    handle = open_zoo(zoo)
    try:
        if group is None and len(handle.groups) != 1:
            raise PruneError(f"{zoo} has groups {list(handle.groups)}; name the architecture "
                             f"to meta-train on (group=...)", parameter="group")
        group = group or next(iter(handle.groups))
        if group not in handle.groups:
            raise PruneError(f"{zoo} has no group {group!r}; it has {list(handle.groups)}",
                             parameter="group")
        return group, handle.group(group).spec, handle.group(group).model_def.build().eval()
    finally:
        handle.close()


def train_meta_pruner(zoo: str | os.PathLike[str], output: str | os.PathLike[str],
                      options: MetaPrunerOptions = MetaPrunerOptions(), *,
                      progress: bool = False) -> MetaPrunerReport:
    """Meta-train a :class:`~weightspace.prune.meta.MetaPruner` on the trained
    networks of a zoo group and save it.

    The networks are the group's last checkpoints of the ``train`` split
    (:func:`~weightspace.prune.meta.trained_zoo_rows`), optionally only those
    with test accuracy ``>= options.min_accuracy``; the architecture is
    rebuilt from the zoo's stored model definition.

    Args:
        zoo: the zoo file (``.h5``).
        output: the pruner (``.safetensors``, written atomically).
        options: the settings (:class:`MetaPrunerOptions`).
        progress: tqdm progress bar.

    Returns:
        The :class:`MetaPrunerReport`.

    Raises:
        PruneError: an output that is not ``.safetensors``, a group the zoo
            does not have (or none named in a zoo of several), no trained
            networks (the error names the parameter).
    """
    output = Path(output)
    if output.suffix.lower() != ".safetensors":
        raise PruneError(f"{output}: a meta-pruner is saved as .safetensors (its config lives "
                         f"in the header)", parameter="output")
    group, spec, model = _architecture(zoo, options.group)
    networks, indices = trained_zoo_rows(zoo, group, min_accuracy=options.min_accuracy,
                                         spec=spec)
    split = load_data(options.data, spec)
    pruner = MetaPruner(spec, hidden=options.hidden, num_layers=options.num_layers,
                        seed=options.seed, mode=options.mode)
    start = time.perf_counter()
    history = meta_train(pruner, networks, spec, model, split, epochs=options.epochs,
                         batch_size=options.batch_size, lr=options.lr,
                         sparsity_weight=options.sparsity_weight,
                         sparsity_alpha=options.sparsity_alpha,
                         sparsity_ramp=options.sparsity_ramp, seed=options.seed,
                         progress=progress)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        ratio = float((group_lasso(spec, pruner(networks)) / group_lasso(spec, networks)).mean())
    settings = {"zoo": str(zoo), "group": group, "networks": len(networks),
                "min_accuracy": options.min_accuracy, "data": options.data,
                "epochs": options.epochs, "batch_size": options.batch_size, "lr": options.lr,
                "sparsity_weight": options.sparsity_weight,
                "sparsity_alpha": options.sparsity_alpha,
                "sparsity_ramp": options.sparsity_ramp}
    save_meta_pruner(pruner, output, training=settings)
    logger.info("%s: meta-trained on %d networks of %s in %.0f s; output/input group lasso %.3f",
                output, len(networks), group, seconds, ratio)
    return MetaPrunerReport(**settings, rows=tuple(int(i) for i in indices), seconds=seconds,
                            mode=options.mode, first=history[0] if history else None,
                            last=history[-1] if history else None, group_lasso_ratio=ratio,
                            output=str(output))


__all__ = ["MetaPrunerOptions", "MetaPrunerReport", "train_meta_pruner"]
