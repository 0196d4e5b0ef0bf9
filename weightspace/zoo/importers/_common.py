"""Helpers shared by the importers: safe loading, error policy, metadata cleaning."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightspace.zoo.errors import ZooError
from weightspace.zoo.rows import RESERVED_COLUMNS, MetadataValue

logger = logging.getLogger("weightspace.zoo.importers")

ON_ERROR_CHOICES = ("raise", "skip")

# Columns a row's metadata must not use: the writer's own per-row datasets.
_TAKEN = frozenset((*RESERVED_COLUMNS, "finite"))

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf|infinity)$",
                     re.IGNORECASE)
_INTEGER = re.compile(r"^[+-]?\d+$")


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR_CHOICES:
        raise ZooError(f"on_error must be 'raise' or 'skip', got {on_error!r}",
                       parameter="on_error")
    return on_error


def fail(on_error: str, error: ZooError) -> None:
    """Raise ``error`` (``on_error="raise"``) or log it as a warning and return."""
    if on_error == "raise":
        raise error
    logger.warning("skipped (on_error='skip'): %s", error)


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ZooError(f"{path}: no such directory; expected {what}")
    if not path.is_dir():
        raise ZooError(f"{path}: is a file, not a directory; expected {what}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ZooError(f"{path}: missing file; {what}")
    return path


def torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with errors as :class:`ZooError`
    naming ``path``. Never executes code stored in the file."""
    try:
        # weights_only=True: only tensors and plain containers are rebuilt;
        # anything else in the pickle is refused before it is created.
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ZooError(f"{path}: missing checkpoint file") from None
    except pickle.UnpicklingError as err:
        detail = str(err.__context__ or err).strip()
        found = re.search(r"GLOBAL (\S+)", detail)
        if found:
            raise ZooError(
                f"{path}: the checkpoint references the Python object {found.group(1)}; "
                f"weightspace only loads tensors and plain containers (torch.load with "
                f"weights_only=True) and never runs code from a file. Re-save it with plain "
                f"dicts, lists and numbers (an omegaconf config: OmegaConf.to_container)."
            ) from err
        raise ZooError(f"{path}: unreadable checkpoint, corrupt or truncated ({detail})") from err
    except Exception as err:  # torch raises RuntimeError, EOFError, ... on broken files
        message = str(err).strip().splitlines()[0] if str(err).strip() else "unexpected end"
        raise ZooError(f"{path}: unreadable checkpoint, corrupt or truncated "
                       f"({type(err).__name__}: {message})") from err


def column_name(name: str) -> str | None:
    """A metadata column name: '/' (not allowed in HDF5 names) becomes '.',
    the writer's own column names get a trailing '_'."""
    name = str(name).strip().replace("/", ".")
    if not name or name.startswith("Unnamed:"):
        return None
    return f"{name}_" if name in _TAKEN else name


def scalar(value: Any) -> MetadataValue | None:
    """A metadata value: numbers, strings and bools as they are, numpy and
    0-d tensor scalars unwrapped, lists and dicts as JSON text, ``None`` dropped."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return json.dumps(value.tolist())
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_plain(value), sort_keys=True)
    return str(value)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return obj.tolist()
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    return str(obj)


def flatten_config(config: Mapping[str, Any], prefix: str = "config.") -> dict[str, MetadataValue]:
    """Nested config -> ``{"config.a.b": value}`` columns (lists as JSON text)."""
    out: dict[str, MetadataValue] = {}

    def walk(obj: Mapping[str, Any], head: str) -> None:
        for key, value in obj.items():
            name = f"{head}{key}"
            if isinstance(value, Mapping):
                walk(value, f"{name}.")
                continue
            value = scalar(value)
            column = column_name(name)
            if value is not None and column is not None:
                out[column] = value

    walk(config, prefix)
    return out


def parse_text(value: str) -> MetadataValue | None:
    """A CSV cell: int, float, bool or str; empty / None -> missing."""
    text = value.strip()
    if text == "" or text in ("None", "null"):
        return None
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    if _INTEGER.match(text):
        return int(text)
    if _NUMBER.match(text):
        return float(text)
    return value


def is_number_text(value: str) -> bool:
    text = value.strip()
    return (text == "" or text in ("None", "null", "True", "False", "true", "false")
            or bool(_NUMBER.match(text)))


def short_hash(obj: Any, n: int = 10) -> str:
    text = json.dumps(_plain(obj), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def group_name(*parts: Any) -> str:
    """Join parts into a group name: no '/', only [A-Za-z0-9_.=-]."""
    text = "_".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text) or "group"


def posix_relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def checkpoint_number(name: str) -> int | None:
    """``checkpoint_000012`` / ``checkpoint_12`` -> 12."""
    found = re.fullmatch(r"checkpoint_0*(\d+)", name)
    return int(found.group(1)) if found else None


def tensors_of(obj: Any, path: Path, wrappers: Iterable[str] = ("state_dict", "model")
               ) -> dict[str, torch.Tensor]:
    """The ``str -> Tensor`` entries of a loaded checkpoint (a state dict, or
    one nested under a wrapper key); non-tensor entries are ignored."""
    if not isinstance(obj, Mapping):
        raise ZooError(f"{path}: expected a state dict (a dict of tensors), found a "
                       f"{type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:
        return tensors
    for key in wrappers:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return tensors_of(inner, path, ())
    raise ZooError(f"{path}: holds no tensors (top-level keys {sorted(map(str, obj))[:10]}); "
                   f"expected a state dict")


def sorted_paths(paths: Iterator[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: p.as_posix())
