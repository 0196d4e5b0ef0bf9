"""Constants and low-level helpers of the zoo's HDF5 layout (see
``docs/zoo-format.md``).

One HDF5 group per architecture::

    /                           attrs: format="weightspace.zoo", format_version=1
    /<group>/                   attrs: spec (JSON), model (JSON), num_parameters,
                                       num_rows, dtype, parameter_names,
                                       parameter_shapes, parameter_offsets
    /<group>/params             [N, P] float, chunked (rows), gzip + shuffle
    /<group>/key                [N] UTF-8 strings, unique in the file
    /<group>/checksum           [N] uint32, CRC-32 of each row's stored bytes
    /<group>/finite             [N] bool, False where a row holds NaN/Inf
    /<group>/meta/<column>      [N] int64 | float64 | bool | UTF-8 string

``num_rows`` is authoritative: datasets are never longer, and a reader never
looks past it.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import h5py
import numpy as np

from weightspace.zoo.errors import ZooError

FORMAT_NAME = "weightspace.zoo"
FORMAT_VERSION = 1

PARAMS = "params"
KEY = "key"
CHECKSUM = "checksum"
FINITE = "finite"
META = "meta"

STRING_DTYPE = h5py.string_dtype("utf-8")

# Column kinds: how a metadata column is stored and what "missing" is.
KIND_INT, KIND_FLOAT, KIND_BOOL, KIND_STR = "int", "float", "bool", "str"
KIND_DTYPES: dict[str, Any] = {
    KIND_INT: np.dtype("int64"),
    KIND_FLOAT: np.dtype("float64"),
    KIND_BOOL: np.dtype("bool"),
    KIND_STR: STRING_DTYPE,
}
MISSING: dict[str, Any] = {KIND_FLOAT: np.nan, KIND_STR: ""}

# A chunk of about this many bytes: small enough that a random row read
# decompresses little, large enough that gzip and h5py's per-call cost are
# amortised when streaming.
TARGET_CHUNK_BYTES = 256 * 1024
MAX_CHUNK_ROWS = 4096


# Per-row 1-D datasets (key, checksum, finite, metadata columns): compressed,
# so a group of a few rows does not pay for a whole empty chunk per column
# (a zoo of hundreds of small architectures has hundreds of groups).
COLUMN_STORAGE: dict[str, Any] = {"chunks": (1024,), "compression": "gzip",
                                  "compression_opts": 4}


def value_kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return KIND_BOOL
    if isinstance(value, (int, np.integer)):
        return KIND_INT
    if isinstance(value, (float, np.floating)):
        return KIND_FLOAT
    if isinstance(value, str):
        return KIND_STR
    raise ZooError(f"metadata values must be int, float, bool or str, got {type(value).__name__}")


def merge_kinds(old: str, new: str) -> str | None:
    """The kind a column must have to hold values of both kinds (None: impossible).

    bool < int < float widen into each other; a string column holds strings only.
    """
    if old == new:
        return old
    if KIND_STR in (old, new):
        return None
    order = (KIND_BOOL, KIND_INT, KIND_FLOAT)
    return order[max(order.index(old), order.index(new))]


def chunk_rows(num_parameters: int, itemsize: int) -> int:
    row_bytes = max(1, num_parameters * itemsize)
    return int(min(MAX_CHUNK_ROWS, max(1, TARGET_CHUNK_BYTES // row_bytes)))


def row_checksums(rows: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's little-endian bytes, as stored in the file.

    Shapes:
        rows: ``[N, P]``; output ``[N]`` uint32.
    """
    rows = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<"))
    return np.fromiter((zlib.crc32(r.tobytes()) for r in rows), dtype=np.uint32, count=len(rows))


def read_json_attr(obj: h5py.HLObject, name: str, where: str) -> Any:
    try:
        raw = obj.attrs[name]
    except KeyError:
        raise ZooError(f"{where}: attribute {name!r} is missing; not a weightspace zoo group, "
                       f"or written by an incompatible version") from None
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(raw)
    except ValueError as err:
        raise ZooError(f"{where}: attribute {name!r} is not valid JSON ({err})") from err


def check_file_format(handle: h5py.File, path: str) -> None:
    name = handle.attrs.get("format")
    if isinstance(name, bytes):
        name = name.decode()
    if name != FORMAT_NAME:
        raise ZooError(f"{path}: not a weightspace zoo (attribute 'format' is {name!r}, expected "
                       f"{FORMAT_NAME!r}); create zoos with `weightspace zoo build` or "
                       f"`weightspace zoo import`")
    version = int(handle.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise ZooError(f"{path}: zoo format version {version} is newer than this weightspace "
                       f"reads ({FORMAT_VERSION}); upgrade weightspace")
    if version < 1:
        raise ZooError(f"{path}: missing or invalid 'format_version' attribute ({version})")


def open_h5(path: str, mode: str = "r", **kwargs: Any) -> h5py.File:
    """``h5py.File`` with truncated/corrupt files turned into a :class:`ZooError`."""
    try:
        return h5py.File(path, mode, **kwargs)
    except FileNotFoundError:
        raise ZooError(f"{path}: no such zoo file") from None
    except OSError as err:
        raise ZooError(f"{path}: cannot be opened as HDF5 ({err}); the file is truncated or "
                       f"corrupt; rebuild it or restore a copy") from err
