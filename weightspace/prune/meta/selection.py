"""Which networks of a zoo a meta-pruner is trained on."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch import Tensor

from weightspace.prune.structured import PruneError
from weightspace.spec import WeightSpaceSpec

__all__ = ["trained_zoo_rows"]


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
                                 f"one architecture, name one", parameter="group")
            group = next(iter(zoo.groups))
        if spec is not None and zoo.group(group).spec.hash != spec.hash:
            raise PruneError(f"{path}: group {group!r} holds another architecture than the "
                             f"meta-pruner's (e.g. another activation)", parameter="spec")
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
                                if min_accuracy is not None else ""),
                             parameter="group" if min_accuracy is None else "min_accuracy")
        rows = zoo.params(indices).float()
    finally:
        zoo.close()
    return rows, indices

