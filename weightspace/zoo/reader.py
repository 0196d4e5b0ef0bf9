"""Lazy reading of zoo files.

A :class:`Zoo` opens the file once and reads nothing but the group
attributes until asked; metadata columns are read whole on first use (they are
one number per row), parameters chunk by chunk. Rows are addressed by a global
index ``0 .. len(zoo) - 1`` running through the groups in name order.

Random access goes through a small LRU cache of decompressed chunks
(``cache_bytes``), so reading rows in any order costs one decompression per
chunk while the cache holds it; streaming (:meth:`Zoo.iter_chunks`) bypasses
the cache and holds one chunk at a time, so a zoo larger than memory streams
with bounded memory.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor, nn

from weightspace.spec import WeightSpaceSpec
from weightspace.zoo import format as fmt
from weightspace.zoo.errors import ZooError
from weightspace.zoo.rows import ModelDef

IndexLike = int | Sequence[int] | np.ndarray | Tensor | slice | None


@dataclass(frozen=True)
class ZooChunk:
    """A block of rows of one group, as yielded by :meth:`Zoo.iter_chunks`.

    Shapes:
        indices: ``[k]`` global row indices; params: ``[k, P]``.
    """

    group: str
    indices: np.ndarray
    params: np.ndarray


class ZooGroup:
    """One architecture of a zoo: its spec, model and ``[N, P]`` rows."""

    def __init__(self, zoo: Zoo, name: str, offset: int) -> None:
        self.zoo = zoo
        self.name = name
        self.offset = offset
        handle = zoo._h5[name]
        where = f"{zoo.path}:/{name}"
        self.num_rows = int(handle.attrs.get("num_rows", -1))
        if self.num_rows < 0:
            raise ZooError(f"{where}: attribute 'num_rows' is missing")
        self.spec = WeightSpaceSpec.from_dict(fmt.read_json_attr(handle, "spec", where))
        self.model_def = ModelDef.from_json(handle.attrs["model"])
        for dataset in (fmt.PARAMS, fmt.KEY, fmt.CHECKSUM):
            if dataset not in handle:
                raise ZooError(f"{where}: dataset {dataset!r} is missing")
            if handle[dataset].shape[0] < self.num_rows:
                raise ZooError(f"{where}/{dataset} has {handle[dataset].shape[0]} rows, the "
                               f"group says {self.num_rows}; the file is damaged")
        params = handle[fmt.PARAMS]
        if params.ndim != 2 or params.shape[1] != self.spec.num_parameters:
            raise ZooError(f"{where}/params has shape {params.shape}, but the group's spec has "
                           f"{self.spec.num_parameters} parameters per row")
        self.chunk_rows = params.chunks[0] if params.chunks else max(1, self.num_rows)

    @property
    def params_dataset(self) -> h5py.Dataset:
        return self.zoo._h5[self.name][fmt.PARAMS]

    @cached_property
    def keys(self) -> np.ndarray:
        return self.zoo._h5[self.name][fmt.KEY].asstr()[: self.num_rows].astype(object)

    @cached_property
    def checksums(self) -> np.ndarray:
        return self.zoo._h5[self.name][fmt.CHECKSUM][: self.num_rows]

    @cached_property
    def finite(self) -> np.ndarray:
        handle = self.zoo._h5[self.name]
        if fmt.FINITE not in handle:
            return np.ones(self.num_rows, dtype=bool)
        return handle[fmt.FINITE][: self.num_rows].astype(bool)

    @cached_property
    def columns(self) -> dict[str, str]:
        """Metadata column name -> kind (``int``, ``float``, ``bool``, ``str``)."""
        meta = self.zoo._h5[self.name].get(fmt.META, {})
        return {name: str(meta[name].attrs.get("kind", _kind_of(meta[name]))) for name in meta}

    def column(self, name: str) -> np.ndarray:
        """One metadata column, ``[num_rows]``; strings as an object array."""
        cache = self.__dict__.setdefault("_columns", {})
        if name not in cache:
            if name == fmt.KEY:
                return self.keys
            if name == fmt.FINITE:
                return self.finite
            meta = self.zoo._h5[self.name].get(fmt.META)
            if meta is None or name not in meta:
                raise ZooError(f"{self.zoo.path}:/{self.name} has no column {name!r}; it has "
                               f"{', '.join(self.columns) or 'none'}")
            dataset = meta[name]
            if dataset.shape[0] < self.num_rows:
                raise ZooError(f"{self.zoo.path}:/{self.name}/meta/{name} has "
                               f"{dataset.shape[0]} values for {self.num_rows} rows; the file "
                               f"is damaged")
            if h5py.check_string_dtype(dataset.dtype) is not None:
                values = dataset.asstr()[: self.num_rows].astype(object)
            else:
                values = dataset[: self.num_rows]
            cache[name] = values
        return cache[name]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Local rows ``[start, stop)`` straight from the file (no cache)."""
        return self.params_dataset[start:stop]

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return (f"ZooGroup({self.name!r}, rows={self.num_rows}, "
                f"parameters={self.spec.num_parameters}, model={self.model_def.family!r})")


def _kind_of(dataset: h5py.Dataset) -> str:
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return fmt.KIND_STR
    if dataset.dtype == np.bool_:
        return fmt.KIND_BOOL
    return fmt.KIND_INT if np.issubdtype(dataset.dtype, np.integer) else fmt.KIND_FLOAT


class Zoo:
    """A zoo file opened for reading.

    Example::

        zoo = Zoo("digits-cnn.h5")
        last = zoo.select(last_checkpoint=True, where=lambda m: m["test_accuracy"] > 0.5)
        model = zoo.model(int(last[0]))
        batch = zoo.graphs(last[:64])          # one PyG Batch

    Args:
        path: the ``.h5`` file.
        cache_bytes: budget of the decompressed-chunk cache for random access.
    """

    def __init__(self, path: str | os.PathLike[str], cache_bytes: int = 256 * 2**20) -> None:
        self.path = Path(path)
        self.cache_bytes = int(cache_bytes)
        self._pid = os.getpid()
        self._h5 = self._open()
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v)
                      for k, v in self._h5.attrs.items()}
        self.groups: dict[str, ZooGroup] = {}
        offset = 0
        for name in sorted(self._h5):
            if not isinstance(self._h5[name], h5py.Group):
                continue
            group = ZooGroup(self, name, offset)
            self.groups[name] = group
            offset += group.num_rows
        self._num_rows = offset
        self._group_list = tuple(self.groups.values())
        self._starts = np.array([g.offset for g in self.groups.values()] + [offset])
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_used = 0

    def _open(self) -> h5py.File:
        handle = fmt.open_h5(str(self.path), "r")
        try:
            fmt.check_file_format(handle, str(self.path))
        except ZooError:
            handle.close()
            raise
        return handle

    def _ensure_process(self) -> None:
        # h5py handles do not survive fork (DataLoader workers): reopen.
        if os.getpid() != self._pid:
            self._h5 = self._open()
            self._pid = os.getpid()
            self._cache.clear()
            self._cache_used = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["cache_bytes"])

    # ----------------------------------------------------------- structure
    def __len__(self) -> int:
        return self._num_rows

    @property
    def num_rows(self) -> int:
        return self._num_rows

    def group(self, name: str) -> ZooGroup:
        try:
            return self.groups[name]
        except KeyError:
            raise ZooError(f"{self.path} has no group {name!r}; groups: "
                           f"{', '.join(self.groups) or 'none'}", parameter="name") from None

    @property
    def columns(self) -> list[str]:
        """Every metadata column of any group, in first-seen order."""
        return list(dict.fromkeys(c for g in self.groups.values() for c in g.columns))

    def locate(self, index: int) -> tuple[ZooGroup, int]:
        """Global row index -> (group, local index)."""
        index = int(index)
        if index < 0:
            index += self._num_rows
        if not 0 <= index < self._num_rows:
            raise IndexError(f"row {index} is out of range for {self.path} with "
                             f"{self._num_rows} rows")
        position = int(np.searchsorted(self._starts, index, side="right")) - 1
        group = self._group_list[position]
        return group, index - group.offset

    def group_index(self) -> np.ndarray:
        """``[N]`` position of each row's group in :attr:`groups`."""
        return np.repeat(np.arange(len(self.groups)), [g.num_rows for g in self.groups.values()])

    def _indices(self, index: IndexLike) -> np.ndarray:
        if index is None:
            return np.arange(self._num_rows)
        if isinstance(index, slice):
            return np.arange(self._num_rows)[index]
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        array = np.atleast_1d(np.asarray(index))
        if array.dtype == np.bool_:
            if len(array) != self._num_rows:
                raise ZooError(f"a boolean row mask must have {self._num_rows} entries, got "
                               f"{len(array)}", parameter="index")
            return np.flatnonzero(array)
        if not np.issubdtype(array.dtype, np.integer):
            raise ZooError(f"row indices must be integers, got {array.dtype}", parameter="index")
        array = np.where(array < 0, array + self._num_rows, array)
        bad = array[(array < 0) | (array >= self._num_rows)]
        if len(bad):
            raise IndexError(f"row {int(bad[0])} is out of range for {self.path} with "
                             f"{self._num_rows} rows")
        return array.astype(np.int64)

    # ------------------------------------------------------------ metadata
    def column(self, name: str, index: IndexLike = None) -> np.ndarray:
        """A metadata column over all groups (or the rows ``index``).

        Groups without the column contribute NaN (numbers) or ``""`` (strings).
        Also ``"key"``, ``"finite"`` and ``"group"``.
        """
        parts = []
        kinds = {g.columns.get(name) for g in self.groups.values()} - {None}
        if name == "group":
            parts = [np.full(g.num_rows, g.name, dtype=object) for g in self.groups.values()]
        elif name in (fmt.KEY, fmt.FINITE):
            parts = [g.column(name) for g in self.groups.values()]
        elif not kinds:
            raise ZooError(f"{self.path} has no column {name!r}; columns: "
                           f"{', '.join(self.columns) or 'none'}", parameter="name")
        else:
            is_str = fmt.KIND_STR in kinds
            for g in self.groups.values():
                if name in g.columns:
                    parts.append(g.column(name))
                else:
                    parts.append(np.full(g.num_rows, "" if is_str else np.nan,
                                         dtype=object if is_str else float))
        if not parts:
            return np.zeros(0)
        values = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return values if index is None else values[self._indices(index)]

    def metadata(self, index: IndexLike = None) -> dict[str, np.ndarray]:
        """Every column (plus ``key``, ``group``, ``finite``) for the rows ``index``."""
        names = [fmt.KEY, "group", fmt.FINITE, *self.columns]
        return {name: self.column(name, index) for name in names}

    def row_metadata(self, index: int) -> dict[str, Any]:
        """One row's metadata as Python scalars (missing columns left out)."""
        group, local = self.locate(index)
        out: dict[str, Any] = {"key": group.keys[local], "group": group.name,
                               "finite": bool(group.finite[local])}
        for name in group.columns:
            value = group.column(name)[local]
            out[name] = value.item() if isinstance(value, np.generic) else value
        return out

    def select(
        self,
        where: Callable[[Mapping[str, np.ndarray]], np.ndarray] | np.ndarray | None = None,
        *,
        group: str | Sequence[str] | None = None,
        finite: bool | None = True,
        last_checkpoint: bool = False,
        run_column: str = "run_id",
        order_column: str | None = None,
        **equals: Any,
    ) -> np.ndarray:
        """Global indices of the rows matching every condition, in order.

        Args:
            where: a boolean mask, or a function of the metadata columns
                (name -> ``[N]`` array) returning one, e.g.
                ``lambda m: m["test_accuracy"] > 0.5``.
            group: only these groups.
            finite: ``True`` (default) drops rows holding NaN/Inf weights,
                ``None`` keeps them.
            last_checkpoint: keep only the last checkpoint of each training
                run (largest ``order_column`` per ``run_column``); the order
                column defaults to the first of ``step``, ``epoch`` present.
            equals: column == value (a list/tuple/set: column in values),
                e.g. ``label=3`` or ``activation=["relu", "tanh"]``.
        """
        mask = np.ones(self._num_rows, dtype=bool)
        if group is not None:
            names = [group] if isinstance(group, str) else list(group)
            for name in names:
                self.group(name)
            mask &= np.isin(self.column("group"), names)
        if finite is not None:
            mask &= self.column(fmt.FINITE) == finite
        for name, value in equals.items():
            column = self.column(name)
            if isinstance(value, (list, tuple, set, frozenset)):
                mask &= np.isin(column, list(value))
            else:
                mask &= column == value
        if where is not None:
            if callable(where):
                where = where(_LazyColumns(self))
            where = np.asarray(where)
            if where.shape != (self._num_rows,) or where.dtype != np.bool_:
                raise ZooError(f"select(where=...) must give a boolean mask of {self._num_rows} "
                               f"rows, got {where.dtype} {where.shape}", parameter="where")
            mask &= where
        if last_checkpoint:
            mask &= self._last_checkpoint_mask(run_column, order_column)
        return np.flatnonzero(mask)

    def _last_checkpoint_mask(self, run_column: str, order_column: str | None) -> np.ndarray:
        if order_column is None:
            order_column = next((c for c in ("step", "epoch") if c in self.columns), None)
            if order_column is None:
                raise ZooError(f"{self.path}: last_checkpoint needs a 'step' or 'epoch' column "
                               f"(or pass order_column=...)", parameter="order_column")
        runs = self.column(run_column).astype(str)
        order = self.column(order_column).astype(float)
        groups = self.column("group").astype(str)
        _, run_of_row = np.unique(np.char.add(np.char.add(groups, "\0"), runs),
                                  return_inverse=True)
        best = np.full(run_of_row.max() + 1 if len(run_of_row) else 0, -np.inf)
        np.maximum.at(best, run_of_row, order)
        return order == best[run_of_row]

    # ------------------------------------------------------------ parameters
    def _chunk(self, group: ZooGroup, chunk: int) -> np.ndarray:
        key = (group.name, chunk)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        start = chunk * group.chunk_rows
        block = group.read_rows(start, min(start + group.chunk_rows, group.num_rows))
        self._cache[key] = block
        self._cache_used += block.nbytes
        while self._cache_used > self.cache_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cache_used -= evicted.nbytes
        return block

    def params(self, index: IndexLike) -> Tensor:
        """Flat parameters: ``[P]`` for one int index, ``[k, P]`` for several
        rows of one group.

        Raises:
            ZooError: the rows span groups of different sizes (use
                :meth:`iter_rows` or :meth:`graphs`).
        """
        self._ensure_process()
        if isinstance(index, (int, np.integer)):
            group, local = self.locate(int(index))
            return torch.from_numpy(
                self._chunk(group, local // group.chunk_rows)[local % group.chunk_rows].copy())
        indices = self._indices(index)
        positions = np.unique(np.searchsorted(self._starts, indices, side="right") - 1)
        groups = [self._group_list[p].name for p in positions]
        if len(groups) > 1:
            raise ZooError(f"rows from several groups ({', '.join(sorted(groups))}) have "
                           f"different parameter counts; read them per group", parameter="index")
        return torch.from_numpy(self._gather(indices))

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        if not len(indices):
            return np.zeros((0, 0), dtype=np.float32)
        group, _ = self.locate(int(indices[0]))
        local = indices - group.offset
        out = np.empty((len(local), group.spec.num_parameters),
                       dtype=group.params_dataset.dtype)
        chunks = local // group.chunk_rows
        for chunk in np.unique(chunks):
            where = np.flatnonzero(chunks == chunk)
            out[where] = self._chunk(group, int(chunk))[local[where] % group.chunk_rows]
        return out

    def state_dict(self, index: int) -> dict[str, Tensor]:
        """Row ``index`` as a state dict of its architecture."""
        group, _ = self.locate(index)
        return {k: v.clone() for k, v in group.spec.unflatten(self.params(int(index))).items()}

    def model(self, index: int) -> nn.Module:
        """Row ``index`` as a module (built from the group's model definition,
        weights loaded, in eval mode)."""
        group, _ = self.locate(index)
        module = group.model_def.build()
        state = self.state_dict(index)
        missing, unexpected = module.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if m in group.spec.offsets]:
            raise ZooError(f"{self.path}:/{group.name}: the model built from {group.model_def} "
                           f"does not take the stored parameters (missing {missing}, unexpected "
                           f"{unexpected})")
        return module.eval()

    def spec(self, index_or_group: int | str) -> WeightSpaceSpec:
        if isinstance(index_or_group, str):
            return self.group(index_or_group).spec
        return self.locate(index_or_group)[0].spec

    def iter_chunks(self, index: IndexLike = None, chunk_rows: int | None = None
                    ) -> Iterator[ZooChunk]:
        """Stream rows group by group in blocks of at most ``chunk_rows`` (the
        file's chunk size by default), holding one block in memory.

        Rows are yielded in increasing index order.
        """
        self._ensure_process()
        indices = np.sort(self._indices(index))
        for group in self.groups.values():
            lo, hi = np.searchsorted(indices, [group.offset, group.offset + group.num_rows])
            local = indices[lo:hi] - group.offset
            step = chunk_rows or group.chunk_rows
            position = 0
            while position < len(local):
                # One contiguous file range per block: from the first wanted
                # row, at most `step` rows long.
                first = local[position]
                end = np.searchsorted(local, first + step, side="left")
                block_rows = local[position:end]
                block = group.read_rows(int(first), int(block_rows[-1]) + 1)
                yield ZooChunk(group.name, block_rows + group.offset, block[block_rows - first])
                position = end

    def graphs(self, index: IndexLike, templates: Mapping[str, Any] | None = None):
        """Rows as one PyG ``Batch`` of parameter graphs (one gather per group).

        Rows of several groups are batched with :meth:`GraphTemplate.common`
        templates so their feature widths agree; graphs come in the order of
        ``index``.
        """
        from weightspace.zoo.batching import graphs_for_rows

        return graphs_for_rows(self, self._indices(index), templates)

    def templates(self):
        """Graph templates of every group, sharing one feature layout."""
        from weightspace.graph import GraphTemplate

        names = list(self.groups)
        made = GraphTemplate.common([self.groups[n].spec for n in names])
        return dict(zip(names, made, strict=True))

    # --------------------------------------------------------------- lifetime
    def close(self) -> None:
        self._h5.close()
        self._cache.clear()

    def __enter__(self) -> Zoo:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        groups = ", ".join(f"{g.name}: {g.num_rows}" for g in self.groups.values())
        return f"Zoo({str(self.path)!r}, rows={self._num_rows}, groups={{{groups}}})"


class _LazyColumns(Mapping[str, np.ndarray]):
    """Metadata columns read only when a ``where`` function asks for them."""

    def __init__(self, zoo: Zoo) -> None:
        self._zoo = zoo

    def __getitem__(self, name: str) -> np.ndarray:
        return self._zoo.column(name)

    def __iter__(self) -> Iterator[str]:
        return iter([fmt.KEY, "group", fmt.FINITE, *self._zoo.columns])

    def __len__(self) -> int:
        return 3 + len(self._zoo.columns)


def open_zoo(path: str | os.PathLike[str], **kwargs: Any) -> Zoo:
    """Open a zoo for reading (same as :class:`Zoo`)."""
    return Zoo(path, **kwargs)
