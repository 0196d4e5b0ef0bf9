"""Whole-zoo operations behind the ``weightspace zoo`` verbs: info, verify,
merge and export."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from weightspace.io import atomic_write, save_state_dict
from weightspace.zoo import format as fmt
from weightspace.zoo.errors import ZooError
from weightspace.zoo.reader import IndexLike, Zoo
from weightspace.zoo.rows import ZooRow
from weightspace.zoo.writer import ZooWriter, journal_path, read_journal

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------ info
def _column_summary(values: np.ndarray, kind: str) -> dict[str, Any]:
    if kind in (fmt.KIND_STR, fmt.KIND_BOOL):
        distinct, counts = np.unique(values.astype(str), return_counts=True)
        top = np.argsort(-counts)[:5]
        return {"kind": kind, "distinct": int(len(distinct)),
                "most_common": {str(distinct[i]): int(counts[i]) for i in top}}
    numbers = values.astype(float)
    finite = numbers[np.isfinite(numbers)]
    out: dict[str, Any] = {"kind": kind, "missing": int(len(numbers) - len(finite))}
    if len(finite):
        out.update(min=float(finite.min()), max=float(finite.max()),
                   mean=float(finite.mean()), distinct=int(len(np.unique(finite))))
    return out


def zoo_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a zoo holds: groups, rows, columns with value ranges, size.

    Returns:
        A JSON-able dict (``weightspace zoo info --json`` prints it).
    """
    path = Path(path)
    with Zoo(path) as zoo:
        groups = []
        for group in zoo.groups.values():
            dataset = group.params_dataset
            groups.append({
                "name": group.name,
                "rows": group.num_rows,
                "parameters": group.spec.num_parameters,
                "dtype": str(dataset.dtype),
                "model": json.loads(group.model_def.to_json()),
                "chunk_rows": group.chunk_rows,
                "compression": dataset.compression,
                "non_finite_rows": int((~group.finite).sum()),
                "columns": {name: _column_summary(group.column(name), kind)
                            for name, kind in group.columns.items()},
            })
        info = {
            "path": str(path),
            "format": zoo.attrs.get("format"),
            "format_version": int(zoo.attrs.get("format_version", 0)),
            "size_bytes": path.stat().st_size,
            "rows": len(zoo),
            "attrs": {k: v for k, v in zoo.attrs.items()
                      if k not in ("format", "format_version")},
            "groups": groups,
        }
    journal = journal_path(path)
    if journal.exists():
        info["uncommitted_rows"] = sum(1 for _ in read_journal(journal))
    return json.loads(json.dumps(info, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def format_info(info: dict[str, Any]) -> str:
    """:func:`zoo_info` as text for people."""
    size = info["size_bytes"] / 2**20
    lines = [f"{info['path']}: {info['rows']} rows in {len(info['groups'])} group(s), "
             f"{size:.2f} MiB, format {info['format']} v{info['format_version']}"]
    if info.get("uncommitted_rows"):
        lines.append(f"  {info['uncommitted_rows']} row(s) wait in the journal (a build is "
                     f"running or was killed; re-run it to resume)")
    for group in info["groups"]:
        model = group["model"]
        lines.append(f"  group {group['name']}: {group['rows']} rows x {group['parameters']} "
                     f"{group['dtype']} parameters, model {model['family']} {model['args']}"
                     + (f", {group['non_finite_rows']} non-finite" if group["non_finite_rows"]
                        else ""))
        for name, column in group["columns"].items():
            if column["kind"] in (fmt.KIND_STR, fmt.KIND_BOOL):
                common = ", ".join(f"{k} ({v})" for k, v in column["most_common"].items())
                lines.append(f"    {name:<24} {column['kind']:<6} {column['distinct']} distinct: "
                             f"{common}")
            elif "min" in column:
                missing = f", {column['missing']} missing" if column["missing"] else ""
                lines.append(f"    {name:<24} {column['kind']:<6} {column['min']:.6g} .. "
                             f"{column['max']:.6g} (mean {column['mean']:.6g}){missing}")
            else:
                lines.append(f"    {name:<24} {column['kind']:<6} all missing")
    return "\n".join(lines)


# ---------------------------------------------------------------------- verify
@dataclass(frozen=True)
class BadRow:
    group: str
    row: int          # index within the group
    index: int        # global index
    key: str
    reason: str


@dataclass
class VerifyReport:
    path: str
    rows_checked: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad_rows and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "rows_checked": self.rows_checked,
                "bad_rows": [vars(b) for b in self.bad_rows], "problems": self.problems}


def verify_zoo(path: str | os.PathLike[str], progress: bool = False) -> VerifyReport:
    """Check every row against its checksum and every column's length.

    A chunk that cannot be decompressed marks all its rows bad. Structural
    problems (columns shorter than the group, duplicate keys) are listed in
    ``problems``. A file that does not open raises :class:`ZooError`.
    """
    report = VerifyReport(str(path))
    with Zoo(path, cache_bytes=0) as zoo:
        seen: dict[str, str] = {}
        total = len(zoo)
        bar = tqdm(total=total, unit="row", desc="verify", disable=not progress)
        for group in zoo.groups.values():
            handle = zoo._h5[group.name]
            for name in handle.get(fmt.META, {}):
                length = handle[fmt.META][name].shape[0]
                if length < group.num_rows:
                    report.problems.append(
                        f"group {group.name!r}: column {name!r} has {length} values for "
                        f"{group.num_rows} rows")
            for local, key in enumerate(group.keys):
                if key in seen:
                    report.problems.append(f"key {key!r} appears in group {seen[key]!r} and in "
                                           f"group {group.name!r} (row {local})")
                seen[key] = group.name
            step = group.chunk_rows
            for start in range(0, group.num_rows, step):
                stop = min(start + step, group.num_rows)
                try:
                    block = group.read_rows(start, stop)
                except OSError as err:
                    for local in range(start, stop):
                        report.bad_rows.append(BadRow(group.name, local, group.offset + local,
                                                      str(group.keys[local]),
                                                      f"unreadable chunk ({err})"))
                else:
                    sums = fmt.row_checksums(block)
                    for offset in np.flatnonzero(sums != group.checksums[start:stop]):
                        local = start + int(offset)
                        report.bad_rows.append(BadRow(group.name, local, group.offset + local,
                                                      str(group.keys[local]),
                                                      "checksum mismatch"))
                report.rows_checked += stop - start
                bar.update(stop - start)
        bar.close()
    return report


# ----------------------------------------------------------------------- rows
def iter_zoo_rows(zoo: Zoo, index: IndexLike = None, include_nonfinite: bool = True
                  ) -> Iterable[ZooRow]:
    """Stream a zoo's rows as :class:`ZooRow` records (bounded memory)."""
    for chunk in zoo.iter_chunks(index):
        group = zoo.group(chunk.group)
        columns = {name: group.column(name) for name in group.columns}
        for global_index, params in zip(chunk.indices, chunk.params, strict=True):
            local = int(global_index) - group.offset
            if not include_nonfinite and not group.finite[local]:
                continue
            metadata = {}
            for name, values in columns.items():
                value = values[local]
                metadata[name] = value.item() if isinstance(value, np.generic) else value
            yield ZooRow(str(group.keys[local]), group.name, group.model_def, params, metadata)


# ---------------------------------------------------------------------- merge
def merge_zoos(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str],
               overwrite: bool = False, progress: bool = False) -> int:
    """Join zoos (for example the shards of a build) into ``output``.

    Rows are copied group by group; a key found in several inputs is kept
    once when the rows are identical (same checksum) and is an error when they
    differ. Groups of the same name must hold the same architecture. All of
    this is checked before anything is written. File attributes that every
    input agrees on are kept (``shard`` is dropped).

    Returns:
        The number of rows written.
    """
    if not inputs:
        raise ZooError("zoo merge needs at least one input zoo")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ZooError(f"{output} exists; pass overwrite=True to replace it",
                       parameter="overwrite")
    for path in inputs:
        if Path(path).resolve() == output.resolve():
            raise ZooError(f"{output} is both an input and the output of the merge")
    zoos = [Zoo(path) for path in inputs]
    try:
        seen: dict[str, tuple[str, int]] = {}
        models: dict[str, tuple[str, str]] = {}
        take: list[np.ndarray] = []
        for zoo in zoos:
            keep = np.ones(len(zoo), dtype=bool)
            for group in zoo.groups.values():
                model = group.model_def.to_json()
                if group.name in models and models[group.name][0] != model:
                    raise ZooError(f"group {group.name!r} holds {model} in {zoo.path} but "
                                   f"{models[group.name][0]} in {models[group.name][1]}")
                models[group.name] = (model, str(zoo.path))
                for local, (key, checksum) in enumerate(zip(group.keys, group.checksums,
                                                            strict=True)):
                    if key in seen:
                        if seen[key] != (group.name, int(checksum)):
                            raise ZooError(f"key {key!r} is in {zoo.path} and an earlier "
                                           f"input with different weights; rename one")
                        keep[group.offset + local] = False
                    else:
                        seen[key] = (group.name, int(checksum))
            take.append(np.flatnonzero(keep))
        attrs = _common_attrs(zoos)
        specs = {name: zoo.group(name).spec for zoo in zoos for name in zoo.groups}
        written = 0
        total = sum(len(t) for t in take)
        with tqdm(total=total, unit="row", desc="merge", disable=not progress) as bar, \
                ZooWriter(output, overwrite=True, attrs=attrs, specs=specs, sync=False,
                          commit_rows=4096) as writer:
            for zoo, rows in zip(zoos, take, strict=True):
                batch: list[ZooRow] = []
                for row in iter_zoo_rows(zoo, rows):
                    batch.append(row)
                    if len(batch) >= 1024:
                        written += writer.extend(batch)
                        bar.update(len(batch))
                        batch = []
                written += writer.extend(batch) if batch else 0
                bar.update(len(batch))
        return written
    finally:
        for zoo in zoos:
            zoo.close()


def _common_attrs(zoos: Sequence[Zoo]) -> dict[str, Any]:
    skip = {"format", "format_version", "shard"}
    first = {k: v for k, v in zoos[0].attrs.items() if k not in skip}
    return {k: v for k, v in first.items()
            if all(z.attrs.get(k) == v for z in zoos[1:])}


# ---------------------------------------------------------------------- export
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def _file_name(key: str) -> str:
    name = _UNSAFE.sub("_", key.replace("/", "__")).strip("._")
    return name or "row"


def export_zoo(path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               index: IndexLike = None, suffix: str = ".safetensors",
               progress: bool = False) -> list[Path]:
    """Write rows as checkpoint files ``out_dir/<group>/<key>.safetensors``
    (or ``.pt``), each with its metadata and model definition, plus an
    ``index.json`` listing file, key, group and metadata of every row.

    Returns:
        The checkpoint paths written.
    """
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise ZooError(f"export writes .safetensors, .pt or .pth files, not {suffix!r}")
    out_dir = Path(out_dir)
    written: list[Path] = []
    entries = []
    keep_metadata = suffix == ".safetensors"
    if not keep_metadata:  # one warning for the export, not one per file
        logger.warning("%s files hold no metadata: key, group, model and metadata of every "
                       "row are in %s only", suffix, out_dir / "index.json")
    with Zoo(path) as zoo:
        indices = zoo._indices(index)
        names: set[Path] = set()
        for row in tqdm(iter_zoo_rows(zoo, indices), total=len(indices), unit="row",
                        desc="export", disable=not progress):
            spec = zoo.group(row.group).spec
            state = {k: v.clone() for k, v in spec.unflatten(torch.from_numpy(
                np.ascontiguousarray(row.params))).items()}
            target = out_dir / row.group / (_file_name(row.key) + suffix)
            if target in names:
                raise ZooError(f"keys map to the same file name {target.name}; export them in "
                               f"separate runs")
            names.add(target)
            metadata = {"weightspace.key": row.key, "weightspace.group": row.group,
                        "weightspace.model": row.model.to_json(),
                        "weightspace.metadata": json.dumps(dict(row.metadata),
                                                           default=_json_default)}
            save_state_dict(state, target, metadata=metadata if keep_metadata else None)
            written.append(target)
            entries.append({"file": str(target.relative_to(out_dir)), "key": row.key,
                            "group": row.group, "model": json.loads(row.model.to_json()),
                            "metadata": dict(row.metadata)})
    with atomic_write(out_dir / "index.json", "w") as handle:
        json.dump(entries, handle, indent=1, default=_json_default)
    return written
