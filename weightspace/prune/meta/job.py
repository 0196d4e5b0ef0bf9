"""Meta-train a pruner from a zoo file and save it (``weightspace train-pruner``).

A file-in, file-out job on top of :func:`~weightspace.prune.meta.meta_train`;
it belongs to the jobs layer (``weightspace/jobs/``), where it is moving.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from weightspace.prune.meta.losses import group_lasso
from weightspace.prune.meta.pruner import MetaPruner
from weightspace.prune.meta.saving import save_meta_pruner
from weightspace.prune.meta.selection import trained_zoo_rows
from weightspace.prune.meta.training import meta_train
from weightspace.prune.structured import PruneError

logger = logging.getLogger("weightspace.prune.meta")

__all__ = ["train_meta_pruner"]


def train_meta_pruner(zoo: str | os.PathLike[str], output: str | os.PathLike[str], *,
                      group: str | None = None, mode: str = "edit", hidden: int = 32,
                      num_layers: int = 3, epochs: int = 100, batch_size: int = 8,
                      lr: float = 3e-3, sparsity_weight: float = 1e-2,
                      sparsity_alpha: float = 0.0, sparsity_ramp: float = 0.0,
                      min_accuracy: float | None = None, data: str = "digits", seed: int = 0,
                      progress: bool = False) -> dict[str, Any]:
    """Meta-train a :class:`MetaPruner` on the trained networks of a zoo group
    and save it (what ``weightspace train-pruner`` runs).

    The networks are the group's last checkpoints of the ``train`` split
    (:func:`trained_zoo_rows`), optionally only those with test accuracy
    ``>= min_accuracy``; the architecture is rebuilt from the zoo's stored
    model definition. The pruner is written atomically with its settings and
    the zoo it came from in the header (:func:`training_notes`).

    Args:
        zoo: the zoo file (``.h5``).
        output: the pruner (``.safetensors``).
        group: the zoo group (architecture); may be omitted for a one-group zoo.
        mode, hidden, num_layers, seed: :class:`MetaPruner` arguments.
        epochs, batch_size, lr, sparsity_weight, sparsity_alpha, sparsity_ramp:
            :func:`meta_train` arguments.
        min_accuracy: only train on networks at least this accurate.
        data: ``"digits"`` or an ``.npz`` (its training images feed the task
            loss).
        progress: tqdm progress bar.

    Returns:
        A JSON-ready report: ``group``, ``networks``, ``seconds``,
        ``first`` and ``last`` epoch of the history, ``group_lasso_ratio``
        (output over input penalty of the training networks after
        training) and ``output``.
    """
    import time

    from weightspace.classify import load_split
    from weightspace.zoo import open_zoo

    output = Path(output)
    if output.suffix.lower() != ".safetensors":
        raise PruneError(f"{output}: a meta-pruner is saved as .safetensors (its config lives "
                         f"in the header)")
    handle = open_zoo(zoo)
    try:
        if group is None and len(handle.groups) != 1:
            raise PruneError(f"{zoo} has groups {list(handle.groups)}; name the architecture "
                             f"to meta-train on with --group")
        group = group or next(iter(handle.groups))
        if group not in handle.groups:
            raise PruneError(f"{zoo} has no group {group!r}; it has {list(handle.groups)}")
        spec = handle.group(group).spec
        model = handle.group(group).model_def.build().eval()
    finally:
        handle.close()
    networks, indices = trained_zoo_rows(zoo, group, min_accuracy=min_accuracy, spec=spec)
    split = load_split(data, (1, *spec.input_shape))
    pruner = MetaPruner(spec, hidden=hidden, num_layers=num_layers, seed=seed, mode=mode)
    start = time.perf_counter()
    history = meta_train(pruner, networks, spec, model, split, epochs=epochs,
                         batch_size=batch_size, lr=lr, sparsity_weight=sparsity_weight,
                         sparsity_alpha=sparsity_alpha, sparsity_ramp=sparsity_ramp,
                         seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        ratio = float((group_lasso(spec, pruner(networks)) / group_lasso(spec, networks)).mean())
    settings = {"zoo": str(zoo), "group": group, "networks": len(networks),
                "min_accuracy": min_accuracy, "data": data, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "sparsity_weight": sparsity_weight,
                "sparsity_alpha": sparsity_alpha, "sparsity_ramp": sparsity_ramp}
    save_meta_pruner(pruner, output, training=settings)
    report = {**settings, "rows": indices.tolist(), "seconds": seconds, "mode": mode,
              "first": history[0] if history else None,
              "last": history[-1] if history else None,
              "group_lasso_ratio": ratio, "output": str(output)}
    logger.info("%s: meta-trained on %d networks of %s in %.0f s; output/input group lasso %.3f",
                output, len(networks), group, seconds, ratio)
    return report

