"""Crash-safe, resumable appends to a zoo file.

How a killed writer loses nothing but the rows in flight:

1. Every call to :meth:`ZooWriter.append` / :meth:`ZooWriter.extend` first
   appends one record to a journal next to the zoo (``zoo.h5.journal``):
   length, CRC-32 and the rows as an ``.npz`` (no pickle). The record is
   written with one ``write`` and ``fsync``-ed before the call returns.
2. Now and then (and on :meth:`~ZooWriter.close`) the journal's rows are
   *committed*: the zoo is copied to a temporary sibling, the rows are
   appended to the copy with h5py, the copy is synced and atomically renamed
   over the zoo, and only then is the journal emptied.

The zoo on disk is therefore always a complete file from some commit: HDF5
files modified in place can be left unreadable by a kill in the middle of a
metadata flush, a renamed copy cannot. A journal's torn last record (killed
while writing it) fails its CRC and is dropped; every whole record is
replayed into the zoo when the zoo is next opened for writing, and rows whose
key the zoo already has are skipped, so a kill between the rename and the
journal truncation duplicates nothing.

Commits copy the file, so they are spaced out: a commit happens once the
pending rows reach ``max(commit_rows, rows_in_file // 4)`` — the copying then
costs at most a few times the final file size in total — or ``commit_seconds``
after the last commit when the copy is cheap.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.io import atomic_output_path
from weightspace.spec import WeightSpaceSpec
from weightspace.zoo import format as fmt
from weightspace.zoo.errors import ZooError
from weightspace.zoo.rows import ModelDef, ZooRow

logger = logging.getLogger(__name__)

_JOURNAL_MAGIC = b"WSZJ"
_JOURNAL_HEADER = struct.Struct("<4sIQ")  # magic, crc32(payload), len(payload)


@dataclass(frozen=True)
class _Group:
    name: str
    spec: WeightSpaceSpec
    model: ModelDef
    model_json: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(str(self.spec.dtype).removeprefix("torch."))


@dataclass(frozen=True)
class _Prepared:
    key: str
    group: str
    params: np.ndarray
    metadata: Mapping[str, Any]


def journal_path(path: str | os.PathLike[str]) -> Path:
    """Where the writer of ``path`` keeps rows not yet committed."""
    path = Path(path)
    return path.with_name(path.name + ".journal")


class ZooWriter:
    """Append checkpoints to a zoo; killed at any moment, it loses at most the
    rows of the call in flight, and re-opening the same path resumes.

    Example::

        with ZooWriter("zoo.h5") as writer:
            writer.append(ZooRow("run0/epoch3", "cnn-relu", model_def,
                                 model.state_dict(), {"test_accuracy": 0.93}))

    Args:
        path: the zoo file. An existing zoo is appended to (resumed): its rows
            stay and their keys are known (:meth:`has`). A journal left by a
            killed writer is replayed first.
        overwrite: start a new zoo even if ``path`` exists; the old file is
            replaced only at the first commit.
        commit_rows: commit once at least this many rows (and a quarter of
            the rows already in the file) are pending.
        commit_seconds: also commit this long after the last commit, when
            the last commit's copy took under 5 % of that time.
        nonfinite: ``"flag"`` stores a row holding NaN/Inf and sets its
            ``finite`` column to False (readers skip such rows by default);
            ``"error"`` refuses it with a :class:`ZooError`.
        duplicates: a key the zoo already has: ``"error"`` (default) or
            ``"skip"`` (with a log message).
        attrs: extra JSON-able attributes stored on the file (for example
            the recipe of a build).
        specs: group name -> spec, for groups whose model should not be
            traced again (importers know it already).
        sync: ``fsync`` each journal record (durable against power loss,
            not only against a killed process).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        commit_rows: int = 1024,
        commit_seconds: float = 60.0,
        nonfinite: str = "flag",
        duplicates: str = "error",
        attrs: Mapping[str, Any] | None = None,
        specs: Mapping[str, WeightSpaceSpec] | None = None,
        sync: bool = True,
    ) -> None:
        if nonfinite not in ("flag", "error"):
            raise WeightspaceError(f"nonfinite must be 'flag' or 'error', got {nonfinite!r}")
        if duplicates not in ("error", "skip"):
            raise WeightspaceError(f"duplicates must be 'error' or 'skip', got {duplicates!r}")
        self.path = Path(path)
        self.journal_path = journal_path(self.path)
        self.commit_rows = max(1, int(commit_rows))
        self.commit_seconds = float(commit_seconds)
        self.nonfinite = nonfinite
        self.duplicates = duplicates
        self.sync = sync
        self._attrs = {k: json.dumps(v) if not isinstance(v, str) else v
                       for k, v in (attrs or {}).items()}
        self._given_specs = dict(specs or {})
        self._spec_cache: dict[str, WeightSpaceSpec] = {}
        self._groups: dict[str, _Group] = {}
        # group -> column -> kind, of committed and pending rows: a row whose
        # value cannot go in its column is refused before it is journaled.
        self._column_kinds: dict[str, dict[str, str]] = {}
        self._keys: set[str] = set()
        self._rows_in_file = 0
        self._pending: list[_Prepared] = []
        self._pending_keys: set[str] = set()
        self._fresh = overwrite or not self.path.exists()
        self._last_commit = time.monotonic()
        self._last_copy_seconds = 0.0
        self._closed = False

        if overwrite and self.journal_path.exists():
            self.journal_path.unlink()
        if not self._fresh:
            self._load_index()
        elif self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._replay_journal()

    # ------------------------------------------------------------------ state
    def has(self, key: str) -> bool:
        """Whether ``key`` is in the zoo (committed or pending)."""
        return key in self._keys or key in self._pending_keys

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._keys | self._pending_keys)

    @property
    def num_rows(self) -> int:
        """Rows in the zoo once the pending ones are committed."""
        return self._rows_in_file + len(self._pending)

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def _load_index(self) -> None:
        with fmt.open_h5(str(self.path), "r") as handle:
            fmt.check_file_format(handle, str(self.path))
            for name, group in handle.items():
                where = f"{self.path}:/{name}"
                spec = WeightSpaceSpec.from_dict(fmt.read_json_attr(group, "spec", where))
                model = ModelDef.from_json(group.attrs["model"])
                self._groups[name] = _Group(name, spec, model, model.to_json())
                meta = group.get(fmt.META, {})
                self._column_kinds[name] = {c: str(meta[c].attrs.get("kind", fmt.KIND_FLOAT))
                                            for c in meta}
                n = int(group.attrs.get("num_rows", 0))
                keys = group[fmt.KEY].asstr()[:n]
                self._keys.update(keys)
                self._rows_in_file += n

    # --------------------------------------------------------------- appending
    def append(self, row: ZooRow) -> bool:
        """Add one row; see :meth:`extend`. Returns whether it was added."""
        return self.extend([row]) == 1

    def extend(self, rows: Iterable[ZooRow]) -> int:
        """Add rows as one journal record: all of them survive a kill after
        this call returns, none of them if it is killed during the call.

        Returns:
            The number of rows added (rows with a known key are skipped when
            ``duplicates="skip"``).

        Raises:
            ZooError: a row of the wrong length for its group, a model that
                differs from its group's, a duplicate key (``duplicates=
                "error"``), NaN/Inf weights (``nonfinite="error"``), a
                metadata value that is not a scalar. Nothing of the call is
                written then.
        """
        self._check_open()
        prepared: list[_Prepared] = []
        batch_keys: set[str] = set()
        kinds = {g: dict(k) for g, k in self._column_kinds.items()}
        for row in rows:
            if self.has(row.key) or row.key in batch_keys:
                if self.duplicates == "skip":
                    logger.info("%s: skipping row %r, the zoo already has it", self.path, row.key)
                    continue
                raise ZooError(f"{self.path}: the zoo already has a row with key {row.key!r}")
            prepared.append(self._prepare(row))
            self._check_kinds(row, kinds.setdefault(row.group, {}))
            batch_keys.add(row.key)
        if not prepared:
            return 0
        self._column_kinds = kinds
        self._journal(prepared)
        self._add_pending(prepared)
        self._maybe_commit()
        return len(prepared)

    def _group_for(self, row: ZooRow) -> _Group:
        model_json = row.model.to_json()
        group = self._groups.get(row.group)
        if group is not None:
            if group.model_json != model_json:
                raise ZooError(
                    f"{self.path}: row {row.key!r} has model {model_json} but group "
                    f"{row.group!r} holds {group.model_json}; put a different architecture in "
                    f"a group of its own")
            return group
        spec = self._given_specs.get(row.group) or self._spec_cache.get(model_json)
        if spec is None:
            spec = row.model.trace()
            self._spec_cache[model_json] = spec
        group = _Group(row.group, spec, row.model, model_json)
        self._groups[row.group] = group
        return group

    def _prepare(self, row: ZooRow) -> _Prepared:
        group = self._group_for(row)
        try:
            params = row.flat(group.spec)
        except ZooError:
            raise
        except Exception as err:  # a state dict that does not fit the spec
            raise ZooError(f"{self.path}: row {row.key!r} does not fit group {row.group!r}: "
                           f"{err}") from err
        params = np.ascontiguousarray(params, dtype=group.dtype)
        metadata = dict(row.metadata)
        for value in metadata.values():
            fmt.value_kind(value)  # raises for unsupported types
        finite = bool(np.isfinite(params).all())
        if not finite and self.nonfinite == "error":
            bad = int(np.flatnonzero(~np.isfinite(params))[0])
            name = next(n for n, (a, b) in group.spec.offsets.items() if a <= bad < b)
            raise ZooError(f"{self.path}: row {row.key!r} has NaN/Inf weights (first in "
                           f"parameter {name!r}); pass nonfinite='flag' to store it flagged")
        metadata[fmt.FINITE] = finite
        return _Prepared(row.key, row.group, params, metadata)

    def _check_kinds(self, row: ZooRow, kinds: dict[str, str]) -> None:
        for name, value in row.metadata.items():
            kind = fmt.value_kind(value)
            merged = fmt.merge_kinds(kinds.get(name, kind), kind)
            if merged is None:
                raise ZooError(f"{self.path}: row {row.key!r}: metadata column {name!r} of group "
                               f"{row.group!r} holds {kinds[name]} values, the row gives "
                               f"{value!r}")
            kinds[name] = merged

    def _add_pending(self, prepared: list[_Prepared]) -> None:
        self._pending.extend(prepared)
        self._pending_keys.update(p.key for p in prepared)

    # ----------------------------------------------------------------- journal
    def _journal(self, prepared: list[_Prepared]) -> None:
        header = [{"key": p.key, "group": p.group, "model": self._groups[p.group].model_json,
                   "metadata": {k: v for k, v in p.metadata.items() if k != fmt.FINITE}}
                  for p in prepared]
        buffer = io.BytesIO()
        arrays = {f"p{i}": p.params for i, p in enumerate(prepared)}
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        np.savez(buffer, **arrays)
        payload = buffer.getvalue()
        record = _JOURNAL_HEADER.pack(_JOURNAL_MAGIC, zlib.crc32(payload), len(payload)) + payload
        with open(self.journal_path, "ab") as handle:
            handle.write(record)
            handle.flush()
            if self.sync:
                os.fsync(handle.fileno())

    def _replay_journal(self) -> None:
        if not self.journal_path.exists():
            return
        rows = list(read_journal(self.journal_path))
        replay = [row for row in rows if not self.has(row.key)]
        if replay:
            logger.info("%s: recovering %d uncommitted row(s) from %s", self.path, len(replay),
                        self.journal_path)
            self._add_pending([self._prepare(row) for row in replay])
        self.commit()

    # ------------------------------------------------------------------ commit
    def _maybe_commit(self) -> None:
        pending = len(self._pending)
        if pending >= max(self.commit_rows, self._rows_in_file // 4):
            self.commit()
            return
        elapsed = time.monotonic() - self._last_commit
        if elapsed >= self.commit_seconds and self._last_copy_seconds < 0.05 * elapsed:
            self.commit()

    def commit(self) -> None:
        """Write the pending rows into the zoo file (copy, append, rename)."""
        if not self._pending and not self._fresh and not self._attrs:
            self._truncate_journal()
            return
        started = time.monotonic()
        # The copy is renamed over the zoo only once it is complete and on
        # disk: a kill leaves the zoo of the last commit (plus the journal).
        with atomic_output_path(self.path) as temporary:
            if not self._fresh:
                shutil.copyfile(self.path, temporary)
            with h5py.File(temporary, "w" if self._fresh else "r+") as handle:
                if self._fresh:
                    handle.attrs["format"] = fmt.FORMAT_NAME
                    handle.attrs["format_version"] = fmt.FORMAT_VERSION
                for name, value in self._attrs.items():
                    handle.attrs[name] = value
                by_group: dict[str, list[_Prepared]] = {}
                for p in self._pending:
                    by_group.setdefault(p.group, []).append(p)
                for name, rows in by_group.items():
                    self._write_group(handle, self._groups[name], rows)
        self._last_copy_seconds = time.monotonic() - started
        self._last_commit = time.monotonic()
        self._rows_in_file += len(self._pending)
        self._keys |= self._pending_keys
        self._pending.clear()
        self._pending_keys.clear()
        self._fresh = False
        self._attrs = {}
        self._truncate_journal()

    def _truncate_journal(self) -> None:
        if self.journal_path.exists():
            self.journal_path.unlink()

    def _write_group(self, handle: h5py.File, group: _Group, rows: list[_Prepared]) -> None:
        p = group.spec.num_parameters
        if group.name not in handle:
            g = handle.create_group(group.name)
            g.attrs["spec"] = group.spec.to_json()
            g.attrs["model"] = group.model_json
            g.attrs["num_parameters"] = p
            g.attrs["dtype"] = group.dtype.name
            g.attrs["num_rows"] = 0
            # The state-dict layout, readable without parsing the spec.
            offsets = group.spec.offsets
            g.attrs["parameter_names"] = json.dumps(list(offsets))
            g.attrs["parameter_shapes"] = json.dumps(
                [list(group.spec.parameter(n).shape) for n in offsets])
            g.attrs["parameter_offsets"] = json.dumps([list(v) for v in offsets.values()])
            g.create_dataset(fmt.PARAMS, shape=(0, p), maxshape=(None, p), dtype=group.dtype,
                             chunks=(fmt.chunk_rows(p, group.dtype.itemsize), max(p, 1)),
                             compression="gzip", compression_opts=4, shuffle=True)
            g.create_dataset(fmt.KEY, shape=(0,), maxshape=(None,), dtype=fmt.STRING_DTYPE,
                             **fmt.COLUMN_STORAGE)
            g.create_dataset(fmt.CHECKSUM, shape=(0,), maxshape=(None,), dtype=np.uint32,
                             **fmt.COLUMN_STORAGE)
            g.create_group(fmt.META)
        g = handle[group.name]
        start = int(g.attrs["num_rows"])
        stop = start + len(rows)
        params = np.stack([r.params for r in rows])
        _append(g[fmt.PARAMS], start, params)
        _append(g[fmt.KEY], start, np.array([r.key for r in rows], dtype=object))
        _append(g[fmt.CHECKSUM], start, fmt.row_checksums(params))
        _write_metadata(g, start, rows, f"{self.path}:/{group.name}")
        g.attrs["num_rows"] = stop

    # --------------------------------------------------------------- lifetime
    def _check_open(self) -> None:
        if self._closed:
            raise ZooError(f"{self.path}: the writer is closed")

    def close(self) -> None:
        """Commit what is pending and release the journal."""
        if not self._closed:
            self.commit()
            self._closed = True

    def __enter__(self) -> ZooWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Rows whose extend() returned are in the journal: commit them even
        # when the caller failed later, so an exception loses nothing.
        self.close()

    def __repr__(self) -> str:
        return (f"ZooWriter({str(self.path)!r}, rows={self._rows_in_file}, "
                f"pending={len(self._pending)}, groups={sorted(self._groups)})")


def _append(dataset: h5py.Dataset, start: int, values: np.ndarray) -> None:
    stop = start + len(values)
    if dataset.shape[0] < stop:
        dataset.resize(stop, axis=0)
    dataset[start:stop] = values


def _column_values(rows: list[_Prepared], name: str) -> tuple[list[Any], str | None, bool]:
    values, kind, missing = [], None, False
    for row in rows:
        if name in row.metadata:
            value = row.metadata[name]
            kind = fmt.value_kind(value) if kind is None else fmt.merge_kinds(
                kind, fmt.value_kind(value))
            if kind is None:
                raise ZooError(f"metadata column {name!r} mixes strings and numbers (row "
                               f"{row.key!r} has {value!r})")
            values.append(value)
        else:
            values.append(None)
            missing = True
    return values, kind, missing


def _write_metadata(g: h5py.Group, start: int, rows: list[_Prepared], where: str) -> None:
    meta = g[fmt.META]
    finite = np.array([r.metadata[fmt.FINITE] for r in rows], dtype=bool)
    if fmt.FINITE not in g:
        g.create_dataset(fmt.FINITE, shape=(start,), maxshape=(None,), dtype=bool,
                         fillvalue=True, **fmt.COLUMN_STORAGE)
    _append(g[fmt.FINITE], start, finite)
    names = list(dict.fromkeys(n for r in rows for n in r.metadata if n != fmt.FINITE))
    names += [n for n in meta if n not in names]
    for name in names:
        values, kind, missing = _column_values(rows, name)
        old_kind = meta[name].attrs["kind"] if name in meta else None
        if kind is None:
            kind = old_kind
        elif old_kind is not None:
            merged = fmt.merge_kinds(old_kind, kind)
            if merged is None:
                raise ZooError(f"{where}: metadata column {name!r} holds {old_kind} values; "
                               f"new rows give {kind} values")
            kind = merged
        if (missing or (old_kind is None and start > 0)) and kind in (fmt.KIND_INT,
                                                                      fmt.KIND_BOOL):
            kind = fmt.KIND_FLOAT  # only float and str columns can say "missing"
        dtype = fmt.KIND_DTYPES[kind]
        if name in meta and old_kind != kind:
            old = meta[name][:start].astype(dtype)
            del meta[name]
            column = meta.create_dataset(name, data=old, maxshape=(None,), dtype=dtype,
                                         **fmt.COLUMN_STORAGE)
        elif name in meta:
            column = meta[name]
        else:
            fill = fmt.MISSING.get(kind)
            column = meta.create_dataset(
                name, data=np.full(start, fill, dtype=object if kind == fmt.KIND_STR else dtype),
                maxshape=(None,), dtype=dtype, **fmt.COLUMN_STORAGE)
        column.attrs["kind"] = kind
        fill = fmt.MISSING.get(kind)
        filled = [fill if v is None else v for v in values]
        array = np.array(filled, dtype=object) if kind == fmt.KIND_STR else np.asarray(
            filled, dtype=dtype)
        _append(column, start, array)


def read_journal(path: str | os.PathLike[str]) -> Iterable[ZooRow]:
    """The rows of every complete record of a journal; a torn or corrupt tail
    (the writer was killed while writing it) is dropped with a log message."""
    path = Path(path)
    with open(path, "rb") as handle:
        data = handle.read()
    offset = 0
    while offset < len(data):
        head = data[offset: offset + _JOURNAL_HEADER.size]
        if len(head) < _JOURNAL_HEADER.size:
            break
        magic, crc, length = _JOURNAL_HEADER.unpack(head)
        body = data[offset + _JOURNAL_HEADER.size: offset + _JOURNAL_HEADER.size + length]
        if magic != _JOURNAL_MAGIC or len(body) < length or zlib.crc32(body) != crc:
            break
        with np.load(io.BytesIO(body), allow_pickle=False) as arrays:
            header = json.loads(arrays["header"].tobytes().decode())
            for i, entry in enumerate(header):
                yield ZooRow(entry["key"], entry["group"], ModelDef.from_json(entry["model"]),
                             arrays[f"p{i}"], entry["metadata"])
        offset += _JOURNAL_HEADER.size + length
    if offset < len(data):
        logger.warning("%s: dropped %d bytes of an incomplete journal record (the writer was "
                       "killed while writing it)", path, len(data) - offset)
