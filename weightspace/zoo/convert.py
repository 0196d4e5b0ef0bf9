"""Zoo rows -> one batched graph file (``weightspace convert zoo.h5``)."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch_geometric.data import Batch
from tqdm.auto import tqdm

from weightspace.graph import GraphTemplate
from weightspace.zoo.errors import ZooError
from weightspace.zoo.reader import IndexLike, Zoo


def convert_zoo(path: str | os.PathLike[str], group: str | None = None,
                index: IndexLike = None, progress: bool = False
                ) -> tuple[Batch, GraphTemplate, list[str]]:
    """Rows of one zoo group as one batched graph.

    Args:
        group: the group to convert; may be left out when the zoo has one.
        index: rows (global indices) to convert; default every finite row of
            the group.

    Returns:
        ``(batch, template, sources)`` like
        :func:`weightspace.graph.convert_checkpoints`, with each source
        ``"<zoo>#<row key>"``.
    """
    with Zoo(path) as zoo:
        if group is None:
            if len(zoo.groups) != 1:
                raise ZooError(f"{path} has {len(zoo.groups)} groups "
                               f"({', '.join(zoo.groups) or 'none'}); pick one with --group")
            group = next(iter(zoo.groups))
        rows = zoo.select(group=group)
        if index is not None:
            rows = np.intersect1d(rows, zoo._indices(index))
        spec = zoo.group(group).spec
        template = GraphTemplate.for_spec(spec)
        params = torch.empty(len(rows), spec.num_parameters, dtype=spec.dtype)
        with tqdm(total=len(rows), unit="row", desc="reading zoo", disable=not progress) as bar:
            position = 0
            for chunk in zoo.iter_chunks(rows):
                params[position: position + len(chunk.indices)] = torch.from_numpy(chunk.params)
                position += len(chunk.indices)
                bar.update(len(chunk.indices))
        keys = zoo.column("key", rows)
    return template.to_batch(params), template, [f"{path}#{k}" for k in keys]
