"""PyTorch Geometric datasets over a zoo, and splits that keep training runs
together.

:class:`ZooGraphDataset` is a ``torch_geometric.data.Dataset``: indexing it
gives one parameter graph (``Data``) with its target ``y``, so it works with
PyG's ``DataLoader``. Its :meth:`~ZooGraphDataset.loader` is the fast path:
it reads a batch of rows at once and turns each architecture's rows into
graphs with one gather of the graph template, applying the weight-space
augmentations to the whole ``[B, P]`` block.

Splits (:func:`split_by_run`) put every checkpoint of one training run on the
same side: checkpoints of one run are near-duplicates, and a metanetwork
tested on a run it has seen at another epoch is tested on its training data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data, Dataset

from weightspace.zoo.batching import graphs_for_rows
from weightspace.zoo.errors import ZooError
from weightspace.zoo.mixup import WeightMixup
from weightspace.zoo.reader import IndexLike, Zoo
from weightspace.zoo.transforms import WeightTransform

logger = logging.getLogger(__name__)


def split_by_run(
    zoo: Zoo,
    index: IndexLike = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    run_column: str = "run_id",
) -> dict[str, np.ndarray]:
    """Split rows into named parts so that all rows of a run share a part.

    Runs are shuffled with ``seed`` and dealt to the parts in order until each
    part holds its fraction of the rows. A zoo without ``run_column`` splits
    row by row (every row its own run).

    Args:
        fractions: part name -> fraction of rows, e.g. the default
            ``{"train": 0.8, "val": 0.1, "test": 0.1}``; normalised to sum 1.

    Returns:
        Part name -> sorted global row indices.
    """
    fractions = dict(fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ZooError(f"split fractions must be non-negative and not all zero, got {fractions}")
    rows = zoo._indices(index)
    if run_column in zoo.columns:
        runs = np.char.add(np.char.add(zoo.column("group", rows).astype(str), "\0"),
                           zoo.column(run_column, rows).astype(str))
    else:
        logger.info("%s has no %r column; splitting row by row", zoo.path, run_column)
        runs = rows.astype(str)
    unique, run_of_row, counts = np.unique(runs, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    total = sum(fractions.values())
    bounds = np.cumsum([f / total for f in fractions.values()]) * len(rows)
    filled = np.cumsum(counts[order])
    # A run goes to the first part whose boundary its cumulative count has
    # not passed (its midpoint, so a run straddling a boundary goes where most
    # of it lies).
    midpoints = filled - counts[order] / 2.0
    part_of_run = np.empty(len(unique), dtype=np.int64)
    part_of_run[order] = np.minimum(np.searchsorted(bounds, midpoints, side="right"),
                                    len(fractions) - 1)
    part_of_row = part_of_run[run_of_row]
    return {name: np.sort(rows[part_of_row == i]) for i, name in enumerate(fractions)}


def split_by_column(zoo: Zoo, column: str, index: IndexLike = None) -> dict[str, np.ndarray]:
    """Split rows by the values of a column (e.g. the ``split`` column that
    ``digits-inr`` records from the image split)."""
    rows = zoo._indices(index)
    values = zoo.column(column, rows)
    return {str(v): rows[values == v] for v in dict.fromkeys(values)}


class ZooGraphDataset(Dataset):
    """Parameter graphs of zoo rows with a target, for metanetwork training.

    Example::

        zoo = Zoo("digits-inr.h5")
        parts = split_by_run(zoo, zoo.select())
        train = ZooGraphDataset(zoo, parts["train"], target="label",
                                weight_transform=Compose([RandomPermutation(),
                                                          SirenBiasShift()]))
        for batch in train.loader(batch_size=64, shuffle=True):
            logits = model(batch); loss = F.cross_entropy(logits, batch.y)

    Args:
        zoo: a :class:`Zoo` or the path of one.
        index: the rows (default: every row with finite weights).
        target: a metadata column for ``y``: numbers give a float ``[1]``
            target (regression) unless ``classification=True``; strings and
            ``classification=True`` give a class index (``self.classes``
            holds the values in class order). ``None``: no ``y``.
        weight_transform: a :class:`~weightspace.zoo.transforms.WeightTransform`
            applied to the flat parameters before the graph is built.
        transform: a PyG transform applied to each ``Data`` (per-sample path).
        mixup: a :class:`~weightspace.zoo.mixup.WeightMixup` applied by
            :meth:`batch` / :meth:`loader` after ``weight_transform``: each
            graph is mixed with a partner of the same architecture in the
            batch, and the batch gets ``y_partner``, ``lam`` and
            ``partner_row`` (the partner's zoo row) for the mixed loss. Single items (``dataset[i]``) are never mixed.
        seed: seeds the augmentation generator (each DataLoader worker
            derives its own from it).
        templates: group -> :class:`~weightspace.graph.GraphTemplate`
            (default: :meth:`Zoo.templates`, one feature layout for all
            groups, so mixed architectures batch together).

    Attributes added to each graph: ``y``, ``row`` (the zoo row index) and
    ``arch`` (the index of the row's group).
    """

    def __init__(
        self,
        zoo: Zoo | str | os.PathLike[str],
        index: IndexLike = None,
        target: str | None = "label",
        classification: bool | None = None,
        weight_transform: WeightTransform | None = None,
        transform: Callable[[Data], Data] | None = None,
        seed: int = 0,
        templates: Mapping[str, Any] | None = None,
        mixup: WeightMixup | None = None,
    ) -> None:
        self.zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
        self.rows = self.zoo._indices(index) if index is not None else self.zoo.select()
        self.target = target
        self.weight_transform = weight_transform
        self.mixup = mixup
        self.templates = dict(templates) if templates is not None else self.zoo.templates()
        self.group_names = list(self.zoo.groups)
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._generator_owner: tuple[int, Any] | None = None
        self.classes: list[Any] | None = None
        self._targets: Tensor | None = None
        if target is not None:
            self._targets = self._make_targets(target, classification)
        super().__init__(None, transform)
        self._groups_of_rows = np.searchsorted(
            [g.offset + g.num_rows for g in self.zoo.groups.values()], self.rows, side="right")

    def _make_targets(self, target: str, classification: bool | None) -> Tensor:
        values = self.zoo.column(target)  # validates the name
        kinds = {g.columns.get(target) for g in self.zoo.groups.values()} - {None}
        is_str = "str" in kinds
        if classification is None:
            classification = is_str or kinds <= {"int", "bool"}
        if classification:
            # Over the whole zoo, so every split maps a value to the same class.
            uniques = sorted({v for v in values.tolist() if v == v and v != ""})
            self.classes = uniques
            lookup = {v: i for i, v in enumerate(uniques)}
            mapped = np.array([lookup.get(v, -1) for v in values.tolist()], dtype=np.int64)
            return torch.from_numpy(mapped)
        numbers = values.astype(np.float64)
        bad = self.rows[~np.isfinite(numbers[self.rows])]
        if len(bad):
            raise ZooError(f"target {target!r} is missing (NaN) for row {int(bad[0])} "
                           f"({self.zoo.row_metadata(int(bad[0]))['key']}) and "
                           f"{len(bad) - 1} more; select rows that have it")
        return torch.from_numpy(numbers.astype(np.float32)).unsqueeze(-1)

    @property
    def num_classes(self) -> int:
        if self.classes is None:
            raise ZooError(f"target {self.target!r} is a regression target; it has no classes")
        return len(self.classes)

    # ---------------------------------------------------------- randomness
    def generator(self) -> torch.Generator:
        """The augmentation generator of this process / DataLoader worker."""
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if info is None else info.id)
        if self._generator is None or self._generator_owner != owner:
            seed = self.seed if info is None else hash((self.seed, info.seed)) % 2**63
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_owner = owner
        return self._generator

    def reseed(self, seed: int) -> None:
        """Restart this process's augmentation generator from ``seed`` (e.g.
        per epoch, so that a resumed training run repeats the same draws)."""
        info = torch.utils.data.get_worker_info()
        self._generator = torch.Generator().manual_seed(int(seed) % 2**63)
        self._generator_owner = (os.getpid(), None if info is None else info.id)

    def _augment(self, params: Tensor, group: str) -> Tensor:
        if self.weight_transform is None:
            return params
        return self.weight_transform(params, self.zoo.group(group).spec, self.generator())

    # ---------------------------------------------------------- per sample
    def len(self) -> int:
        return len(self.rows)

    def get(self, idx: int) -> Data:
        row = int(self.rows[idx])
        group = self.group_names[int(self._groups_of_rows[idx])]
        params = self._augment(self.zoo.params(row), group)
        data = self.templates[group].to_data(params)
        self._attach(data, torch.tensor([row]), torch.tensor([int(self._groups_of_rows[idx])]))
        return data

    def _attach(self, data: Data, rows: Tensor, arch: Tensor) -> None:
        data.row = rows
        data.arch = arch
        if self._targets is not None:
            data.y = self._targets[rows]

    # ------------------------------------------------------------ batched
    def batch(self, positions: Sequence[int] | np.ndarray | Tensor) -> Batch:
        """Graphs of dataset items ``positions`` as one ``Batch`` (template
        gather per architecture, augmentation on the whole block)."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = self.rows[positions]
        groups = self.zoo.column("group", rows)
        partner = np.arange(len(rows))
        lam = torch.ones(len(rows))

        def transform(params: Tensor, group: str) -> Tensor:
            params = self._augment(params, group)
            if self.mixup is None:
                return params
            mixed = self.mixup(params, self.zoo.group(group).spec, self.generator())
            where = np.flatnonzero(groups == group)
            partner[where] = where[mixed.partner.numpy()]
            lam[torch.from_numpy(where)] = mixed.lam
            return mixed.params

        needs_transform = self.weight_transform is not None or self.mixup is not None
        batch = graphs_for_rows(self.zoo, rows, self.templates,
                                transform=transform if needs_transform else None)
        arch = torch.from_numpy(self._groups_of_rows[positions].astype(np.int64))
        self._attach(batch, torch.from_numpy(rows), arch)
        if self.mixup is not None:
            batch.lam = lam
            batch.partner_row = torch.from_numpy(rows[partner])
            if self._targets is not None:
                batch.y_partner = self._targets[torch.from_numpy(rows[partner])]
        return batch

    def loader(self, batch_size: int = 32, shuffle: bool = False, drop_last: bool = False,
               seed: int | None = None) -> Iterator[Batch]:
        """Iterate over template-built batches (the fast path).

        Args:
            shuffle: a new order each call, from ``seed`` (default: the
                dataset's seed plus a call counter).
        """
        count = len(self)
        if shuffle:
            calls = self.__dict__.setdefault("_loader_calls", 0)
            self._loader_calls = calls + 1
            rng = np.random.default_rng(self.seed + calls if seed is None else seed)
            order = rng.permutation(count)
        else:
            order = np.arange(count)
        stop = count - count % batch_size if drop_last else count
        for start in range(0, stop, batch_size):
            yield self.batch(order[start: start + batch_size])

    def __repr__(self) -> str:
        return (f"ZooGraphDataset({len(self)} graphs from {self.zoo.path.name}, "
                f"target={self.target!r}, groups={self.group_names})")
