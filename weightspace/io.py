"""Safe reading and atomic writing of checkpoints.

Safety guarantee: loading a checkpoint with this module never executes code
stored in the file. Model zoos are downloaded from strangers, and a ``.pt``
file is a pickle, which can name any Python callable to run when it is
unpickled. Therefore:

- ``.safetensors`` files are read with :mod:`safetensors`, a format that holds
  only a JSON header and raw tensor bytes.
- Pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are read with
  ``torch.load(..., weights_only=True)`` and nothing else, ever: its restricted
  unpickler only rebuilds tensors and plain containers (dict, list, str,
  numbers ...). A file that references any other Python object is refused with
  a :class:`CheckpointError` before that object is created.

Writes are atomic (:func:`atomic_write` for an open file,
:func:`atomic_output_path` for writers that want a file name, such as
safetensors or h5py): a file is written to a temporary name next to its
destination, synced to disk and then renamed over the destination, so an
interrupted save never leaves a truncated checkpoint that a later run would
try to read. What a crash leaves behind:

==============================  ================================================
crash (kill, power loss) ...    the destination then holds
==============================  ================================================
before the rename               its old content (or nothing, if it did not
                                exist); a hidden ``.NAME.<8 hex digits>.tmp``
                                sibling may be left over, safe to delete and
                                ignored by :func:`expand_checkpoint_paths`
after the rename                the complete new content: it was ``fsync``-ed
                                before the rename, and the directory is
                                ``fsync``-ed after it so the rename itself
                                survives a power loss (best effort on platforms
                                that cannot sync a directory, such as Windows)
==============================  ================================================

Never a mix of the two: the rename (:func:`os.replace` within one directory,
so within one file system) is atomic.
"""

from __future__ import annotations

import glob
import logging
import os
import pickle
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import safetensors
import safetensors.torch
import torch

from weightspace.errors import WeightspaceError

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
"""File suffixes :func:`load_state_dict` reads (compared case-insensitively)."""

SAVE_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth")
"""File suffixes :func:`save_state_dict` writes."""

# Training scripts often save the state dict inside a larger checkpoint dict
# (optimizer state, epoch ...); these are the keys it is usually found under,
# tried in this order.
_WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "weights")

# safetensors stores tensors sorted by dtype and name, not in insertion order.
# The original order matters (it is the order of the layers), so
# save_state_dict records it under this metadata key and load_state_dict
# restores it.
_KEY_ORDER_METADATA = "weightspace.key_order"

_GLOB_CHARACTERS = frozenset("*?[")

_FIX_HINT = (
    "Re-save the weights alone with `torch.save(model.state_dict(), path)`, "
    "or as .safetensors with `safetensors.torch.save_file(model.state_dict(), path)`."
)


class CheckpointError(WeightspaceError):
    """A checkpoint file cannot be read or written safely.

    The message starts with the file path and says what would fix it.
    """


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _check_suffix(path: Path, supported: Sequence[str], action: str) -> None:
    if _suffix(path) not in supported:
        raise CheckpointError(
            f"{path}: cannot {action} files with suffix {path.suffix or '(none)'!r}. "
            f"Supported suffixes: {', '.join(supported)}."
        )


# --------------------------------------------------------------------------- loading


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict (parameter name -> tensor) from a checkpoint file,
    without executing any code stored in it.

    ``.safetensors`` files are read with :func:`safetensors.torch.load_file`;
    ``.pt``, ``.pth``, ``.bin`` and ``.ckpt`` with
    ``torch.load(weights_only=True)``. All tensors are loaded on the CPU.

    A state dict nested under ``"state_dict"``, ``"model_state_dict"``,
    ``"model"`` or ``"weights"`` (a training checkpoint) is unwrapped, and a
    ``"module."`` prefix left by ``DataParallel``/``DistributedDataParallel``
    is stripped when every key has it.

    Args:
        path: checkpoint file.

    Returns:
        A plain ``dict`` in the order the tensors were saved.

    Raises:
        CheckpointError: the file is missing, has an unsupported suffix, is
            corrupt, contains Python objects other than tensors, or does not
            hold a flat dict of tensors. The message starts with the path.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found.")
    if path.is_dir():
        raise CheckpointError(
            f"{path}: is a directory, not a checkpoint file. "
            f"Use expand_checkpoint_paths() to list the checkpoints inside it."
        )
    _check_suffix(path, SUPPORTED_SUFFIXES, "load")

    if _suffix(path) == ".safetensors":
        obj: Any = _load_safetensors(path)
    else:
        obj = _load_pickle(path)

    state_dict = _extract_state_dict(obj, path)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        logger.info("%s: stripping the 'module.' prefix (DataParallel/DDP) from all keys", path)
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = safetensors.torch.load_file(path, device="cpu")
        with safetensors.safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:
        raise CheckpointError(
            f"{path}: unreadable .safetensors file, it is corrupt or truncated ({err}). "
            f"Re-download or re-save it."
        ) from err
    return _restore_key_order(tensors, metadata.get(_KEY_ORDER_METADATA))


def _restore_key_order(
    tensors: dict[str, torch.Tensor], recorded: str | None
) -> dict[str, torch.Tensor]:
    """Put ``tensors`` back in the order recorded by :func:`save_state_dict`."""
    if recorded is None:
        return tensors
    order = recorded.split("\n") if recorded else []
    # Only trust the record if it names exactly the stored tensors (the file
    # may have been edited by another tool since).
    if sorted(order) != sorted(tensors):
        return tensors
    return {key: tensors[key] for key in order}


def _load_pickle(path: Path) -> Any:
    try:
        # weights_only=True is the whole safety guarantee of this module:
        # never call torch.load without it.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch wraps every error of its restricted unpickler in one
        # UnpicklingError; the inner one (its __context__) says what it was.
        detail = str(err.__context__ or err)
        if "Unsupported operand" in detail or "truncated" in detail:
            raise CheckpointError(
                f"{path}: unreadable checkpoint, it is not a valid PyTorch file or it is "
                f"corrupt ({detail.strip()})."
            ) from err
        found = re.search(r"GLOBAL (\S+)", detail)
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: the file contains Python objects other than tensors{what}. "
            f"weightspace refuses to execute code from checkpoints, so it only loads "
            f"tensors and plain containers. {_FIX_HINT}"
        ) from err
    except Exception as err:
        raise CheckpointError(
            f"{path}: unreadable checkpoint, it is corrupt or truncated "
            f"({type(err).__name__}: {str(err).strip() or 'unexpected end of file'}). "
            f"Re-download or re-save it."
        ) from err


def _describe_keys(keys: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(repr(key) for key in keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items()
    )


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Return the flat ``str -> Tensor`` dict held by a loaded checkpoint."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a dict of tensors (a state dict), found an object of type "
            f"{type(obj).__name__}. {_FIX_HINT}"
        )
    if not obj:
        raise CheckpointError(f"{path}: the checkpoint holds an empty dict, no tensors.")
    if _is_tensor_dict(obj):
        return dict(obj)

    for wrapper_key in _WRAPPER_KEYS:
        inner = obj.get(wrapper_key)
        if isinstance(inner, Mapping) and inner:
            logger.info("%s: using the state dict stored under key %r", path, wrapper_key)
            _check_values(inner, path, prefix=f"{wrapper_key}.")
            return dict(inner)

    keys = list(obj)
    if any(isinstance(value, torch.Tensor) for value in obj.values()):
        # A state dict with a stray entry: name the offending key(s).
        _check_values(obj, path, prefix="")
    raise CheckpointError(
        f"{path}: expected a dict of tensors (a state dict), found a dict of type "
        f"{type(obj).__name__} with top-level keys {_describe_keys(keys)} and no state dict "
        f"under any of {', '.join(map(repr, _WRAPPER_KEYS))}. {_FIX_HINT}"
    )


def _check_values(
    mapping: Mapping[Any, Any], path: Path, prefix: str, hint: str = _FIX_HINT
) -> None:
    """Raise a CheckpointError naming the first non-str key or non-tensor value."""
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"{path}: state dict key {prefix}{key!r} is of type {type(key).__name__}; "
                f"keys must be strings (parameter names). {hint}"
            )
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {prefix}{key!r} is of type {type(value).__name__}, not a "
                f"tensor; a state dict must map parameter names to tensors. {hint}"
            )


# --------------------------------------------------------------------------- writing


def _temporary_sibling(target: Path) -> Path:
    """Create and return an empty, uniquely named file next to ``target``.

    The leading dot and ``.tmp`` suffix keep it out of directory listings and
    out of :func:`expand_checkpoint_paths` while it is being written.
    """
    while True:
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666 filtered by the umask: the final file gets the same
            # permissions as one created by open(path, "w").
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate


def _fsync_file(path: Path) -> None:
    """Put ``path``'s content on disk before it is renamed into place (a
    rename can reach the disk before the data it points to)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; best effort (not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success the
    temporary file is synced to disk and renamed to ``path``.

    For writers that need a file name rather than an open file
    (:func:`safetensors.torch.save_file`, ``h5py.File``, a copy made with
    :func:`shutil.copyfile` and then modified). The temporary file exists,
    empty, when the body starts (writers may replace it); it sits in the same
    directory as ``path``, so the final rename is atomic. Missing parent
    directories are created.

    On a crash, ``path`` holds its old content or the complete new one, never
    a part (see the table in the module docstring). If the ``with`` body
    raises, the temporary file is removed and ``path`` is left untouched.

    Example::

        with atomic_output_path("zoo.h5") as temporary:
            with h5py.File(temporary, "w") as handle:
                handle["x"] = values

    Args:
        path: destination file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(target)
    # Writers given a path may recreate the file with their own permissions
    # (safetensors writes 0o600); restore the usual umask-based ones.
    permissions = temporary.stat().st_mode & 0o777
    try:
        yield temporary
        os.chmod(temporary, permissions)
        _fsync_file(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it is replaced all at once or not at all.

    The content goes to a temporary file in the same directory (so the final
    ``os.replace`` is an atomic rename on one file system); on leaving the
    ``with`` block the file is flushed, ``fsync``-ed and renamed to ``path``
    (:func:`atomic_output_path` does the renaming). If the block raises, the
    temporary file is removed and an existing file at ``path`` keeps its old
    content; after a crash ``path`` holds its old or its complete new content.

    Example::

        with atomic_write("summary.json", "w") as handle:
            json.dump(summary, handle)

    Args:
        path: destination file.
        mode: a mode of :func:`open` starting with ``"w"`` (``"wb"``, ``"w"`` ...).
    """
    if not mode.startswith("w"):
        # Appending or reading would need the old content in the temporary
        # file; atomic_write only replaces whole files.
        raise WeightspaceError(
            f"atomic_write needs a 'w' mode such as 'wb' or 'w', got mode={mode!r}.",
            parameter="mode")
    with atomic_output_path(path) as temporary, open(temporary, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def _prepare_for_safetensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous, storage-disjoint copies where needed: safetensors refuses
    non-contiguous tensors and tensors that share memory (tied weights)."""
    prepared: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for key, tensor in state_dict.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages and tensor.numel() > 0:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        else:
            seen_storages.add(storage)
            tensor = tensor.contiguous()
        prepared[key] = tensor
    return prepared


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a state dict atomically as ``.safetensors``, ``.pt`` or ``.pth``.

    ``.safetensors`` is preferred: it can be loaded without any code execution
    risk by every tool. Non-contiguous tensors are made contiguous and tensors
    sharing storage (tied weights) are copied, since safetensors stores each
    tensor separately. The key order is recorded in the metadata so
    :func:`load_state_dict` returns the keys in the order given here.

    Args:
        state_dict: parameter name -> tensor.
        path: destination; its suffix picks the format.
        metadata: string key/value pairs stored in the ``.safetensors`` header
            (read back with :func:`load_metadata`); ignored for ``.pt``.

    Returns:
        The destination path.

    Raises:
        CheckpointError: unsupported suffix, a non-string key or a non-tensor
            value, or non-string metadata; raised before anything is written.
    """
    path = Path(path)
    _check_suffix(path, SAVE_SUFFIXES, "save")
    _check_values(state_dict, path, prefix="", hint="Pass model.state_dict() or a dict of tensors.")
    if metadata is not None:
        bad = [
            key
            for key, value in metadata.items()
            if not (isinstance(key, str) and isinstance(value, str))
        ]
        if bad:
            raise CheckpointError(
                f"{path}: metadata must map str to str; entries {_describe_keys(bad)} are not. "
                f"Convert values with str() or json.dumps()."
            )

    if _suffix(path) == ".safetensors":
        tensors = _prepare_for_safetensors(state_dict)
        header = dict(metadata or {})
        header[_KEY_ORDER_METADATA] = "\n".join(tensors)
        with atomic_output_path(path) as temporary:
            safetensors.torch.save_file(tensors, temporary, metadata=header)
    else:
        if metadata:
            logger.warning("%s: metadata is only stored in .safetensors files; ignoring it", path)
        with atomic_write(path, "wb") as handle:
            torch.save(dict(state_dict), handle)
    logger.debug("%s: saved %d tensors", path, len(state_dict))
    return path


def load_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the metadata stored by :func:`save_state_dict` in a
    ``.safetensors`` header (``{}`` for other formats or none stored)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found.")
    if _suffix(path) != ".safetensors":
        return {}
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as err:
        raise CheckpointError(
            f"{path}: unreadable .safetensors file, it is corrupt or truncated ({err})."
        ) from err
    metadata.pop(_KEY_ORDER_METADATA, None)
    return metadata


# --------------------------------------------------------------------------- listing


def _has_glob_characters(pattern: str) -> bool:
    return any(character in _GLOB_CHARACTERS for character in pattern)


def _is_checkpoint(path: Path) -> bool:
    return path.is_file() and _suffix(path) in SUPPORTED_SUFFIXES


def expand_checkpoint_paths(patterns: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Turn files, directories and glob patterns into a list of checkpoint files.

    - an existing file is taken as is (its suffix is checked when loading);
    - a directory gives every file with a suffix in :data:`SUPPORTED_SUFFIXES`
      below it, recursively, sorted;
    - a pattern with ``*``, ``?`` or ``[`` is expanded with
      ``glob(pattern, recursive=True)`` (so ``**`` works), sorted, keeping
      checkpoint files only.

    Paths found more than once are kept at their first position.

    Raises:
        CheckpointError: a path that does not exist, a pattern that matches no
            checkpoint, or a directory without checkpoints; the message names it.
    """
    if isinstance(patterns, str | os.PathLike):
        # A lone string would otherwise be iterated character by character.
        patterns = [patterns]
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        text = os.fspath(pattern)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            # Sorted as strings, like the glob branch, so the order does not
            # depend on the Python version's Path ordering.
            matches = sorted((p for p in path.rglob("*") if _is_checkpoint(p)), key=os.fspath)
            if not matches:
                raise CheckpointError(
                    f"{path}: directory contains no checkpoint files "
                    f"(looked for {', '.join(SUPPORTED_SUFFIXES)}, recursively)."
                )
            found.extend(matches)
        elif _has_glob_characters(text):
            matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            matches = [p for p in matches if _is_checkpoint(p)]
            if not matches:
                raise CheckpointError(
                    f"{text}: pattern matches no checkpoint files "
                    f"(with suffix {', '.join(SUPPORTED_SUFFIXES)})."
                )
            found.extend(matches)
        else:
            raise CheckpointError(f"{path}: no such file or directory.")

    unique: list[Path] = []
    seen: set[Path] = set()
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique
