"""Reader of the INR data sets of DWSNets / NFN / Neural Graphs.

One ``.pth`` state dict per INR (one per image), and a JSON of splits
``{"train": {"path": [...], "label": [...]}, "val": ..., "test": ...}``
(DWSNets ``experiments/mnist/generate_data_splits.py`` writes absolute paths
of the machine that made it; Neural Graphs' ``fmnist_splits.json`` paths
relative to the data set folder). The INR is DWSNets' ``nn/inr.py`` ``INR``:
``seq.<i>.weight/bias`` (``Siren`` layers ``sin(30 (W x + b))``, the last one
a ``Linear``) and ``forward = seq(x) + 0.5``; Sitzmann et al.'s reference
SIREN (``net.<i>.linear.weight/bias`` and a final ``net.<n>.weight/bias``,
no offset) is read too. Both are rebuilt as the ``inr_siren`` family.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from weightspace.zoo.errors import ZooError
from weightspace.zoo.importers._common import (
    check_on_error,
    fail,
    group_name,
    posix_relative,
    require_dir,
    short_hash,
    tensors_of,
    torch_load,
)
from weightspace.zoo.rows import ModelDef, ZooRow

_DWSNETS = re.compile(r"^seq\.(\d+)\.(weight|bias)$")
_SIREN_HIDDEN = re.compile(r"^net\.(\d+)\.linear\.(weight|bias)$")
_SIREN_LAST = re.compile(r"^net\.(\d+)\.(weight|bias)$")
# Non-parameter entries some INR files carry (Fashion-MNIST INRs store their label).
_IGNORED = frozenset({"label"})

_EXPECTED_KEYS = ("seq.<i>.weight/bias (DWSNets INR) or net.<i>.linear.weight/bias with a final "
                  "net.<n>.weight/bias (SIREN reference code)")


def read_inr_folder(
    path: str | os.PathLike[str],
    *,
    splits: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    w0: float = 30.0,
    w0_initial: float = 30.0,
    output_offset: float | None = None,
    on_error: str = "raise",
    group_prefix: str | None = None,
) -> Iterator[ZooRow]:
    """Stream the INRs listed in a splits JSON as :class:`ZooRow` s.

    Rows: key = the file's path relative to ``root`` (``"mnist-inrs/
    mnist_png_train_2_23/checkpoints/model_final.pth"``); group = one per
    architecture (layer widths); params = the state dict in ``inr_siren``
    keys; metadata: ``label``, ``split``, ``path`` (= the key) and ``run_id``
    (= the key: every INR is its own run).

    Args:
        path: the data set folder, or the splits JSON itself.
        splits: the splits JSON (absolute, or relative to ``path``); by
            default the only ``*.json`` in ``path`` whose content is a split
            table.
        root: folder the JSON's relative paths start from (default: ``path``,
            or the JSON's folder). An absolute path that does not exist (the
            JSON was made on another machine) is looked up by its trailing
            components under ``root``.
        w0, w0_initial: SIREN frequencies (30 and 30 in DWSNets and NFN).
        output_offset: constant added to the output; default 0.5 for
            DWSNets' ``seq`` INRs, 0 for ``net`` (reference SIREN) files.
        on_error: ``"raise"`` or ``"skip"`` (log a warning and go on) for a
            missing, unreadable or malformed ``.pth`` file.
        group_prefix: prefix of the group names.

    Raises:
        ZooError: no splits JSON, a malformed one, and (with
            ``on_error="raise"``) a missing or broken INR file or one with
            unexpected keys; the message names the file.
    """
    check_on_error(on_error)
    given = Path(path)
    if given.is_file():
        splits_path = given
        base = Path(root) if root is not None else given.parent
    else:
        folder = require_dir(given, "an INR data set folder with a splits JSON")
        base = Path(root) if root is not None else folder
        splits_path = _find_splits(folder, splits)
    table = _read_splits(splits_path)
    settings = {"w0": float(w0), "w0_initial": float(w0_initial), "offset": output_offset,
                "prefix": group_prefix}
    return _rows(table, splits_path, base, settings, on_error)


def _find_splits(folder: Path, splits: str | os.PathLike[str] | None) -> Path:
    expected = ('the INR format expects a JSON of splits {"train": {"path": [...], "label": '
                '[...]}, ...} next to the INRs (pass splits=...)')
    if splits is not None:
        candidate = Path(splits)
        if not candidate.is_absolute() and not candidate.exists():
            candidate = folder / candidate
        if not candidate.is_file():
            raise ZooError(f"{candidate}: missing splits file; {expected}")
        return candidate
    found = [p for p in sorted(folder.glob("*.json")) if _looks_like_splits(p)]
    if not found:
        raise ZooError(f"{folder}: no splits JSON found; {expected}")
    if len(found) > 1:
        raise ZooError(f"{folder}: several splits JSON files ({', '.join(p.name for p in found)});"
                       f" choose one with splits=...")
    return found[0]


def _looks_like_splits(path: Path) -> bool:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and "path" in v for v in data.values())


def _read_splits(path: Path) -> dict[str, tuple[list[Any], list[Any]]]:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except ValueError as err:
        raise ZooError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or not data:
        raise ZooError(f'{path}: expected a JSON object {{split: {{"path": [...], "label": '
                       f'[...]}}}}, got {type(data).__name__}')
    table = {}
    for split, entry in data.items():
        if not isinstance(entry, dict) or "path" not in entry or "label" not in entry:
            raise ZooError(f'{path}: split {split!r} must be an object with "path" and "label" '
                           f'lists')
        paths, labels = entry["path"], entry["label"]
        if not isinstance(paths, list) or not isinstance(labels, list):
            raise ZooError(f'{path}: split {split!r}: "path" and "label" must be lists')
        if len(paths) != len(labels):
            raise ZooError(f"{path}: split {split!r} has {len(paths)} paths but {len(labels)} "
                           f"labels")
        table[str(split)] = (paths, labels)
    return table


def _resolve(entry: str, base: Path) -> Path | None:
    """The file ``entry`` names: itself if it exists, else ``base`` joined with
    ``entry`` or with its trailing components (the JSON came from elsewhere)."""
    candidate = Path(entry)
    if candidate.is_absolute() and candidate.is_file():
        return candidate
    parts = [p for p in candidate.parts if p not in ("/", "\\") and not p.endswith(":\\")]
    for i in range(len(parts)):
        joined = base.joinpath(*parts[i:])
        if joined.is_file():
            return joined
    return None


def _label(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _rows(table, splits_path: Path, base: Path, settings: dict, on_error: str
          ) -> Iterator[ZooRow]:
    seen: dict[str, str] = {}
    for split, (paths, labels) in table.items():
        for i, (entry, label) in enumerate(zip(paths, labels, strict=True)):
            where = f"{splits_path} split {split!r} entry {i}"
            file = _resolve(str(entry), base)
            if file is None:
                fail(on_error, ZooError(f"{where}: INR file {entry!r} not found (looked under "
                                        f"{base})"))
                continue
            key = posix_relative(file, base)
            if key in seen:
                raise ZooError(f"{where}: {key!r} is listed again (first in split "
                               f"{seen[key]!r}); each INR must appear once")
            seen[key] = split
            try:
                model, group, state = _convert(file, settings)
            except ZooError as err:
                fail(on_error, err)
                continue
            metadata = {"label": _label(label), "split": split, "path": key, "run_id": key}
            yield ZooRow(key=key, group=group, model=model, params=state, metadata=metadata)


def _convert(file: Path, settings: dict) -> tuple[ModelDef, str, dict[str, torch.Tensor]]:
    obj = torch_load(file)
    tensors = tensors_of(obj, file)
    layers, style = _layers(tensors, file)
    widths = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
    offset = settings["offset"]
    if offset is None:
        offset = 0.5 if style == "dwsnets" else 0.0
    args = {"in_features": widths[0], "hidden": widths[1:-1], "out_features": widths[-1],
            "w0": settings["w0"], "w0_initial": settings["w0_initial"],
            "output_offset": float(offset)}
    model = ModelDef("inr_siren", args, (1, widths[0]))
    parts = [settings["prefix"], "siren", "-".join(map(str, widths))]
    if (args["w0"], args["w0_initial"], args["output_offset"]) != (30.0, 30.0, 0.5):
        parts.append(short_hash(args, 6))
    state = {}
    for i, (weight, bias) in enumerate(layers):
        state[f"net.{2 * i}.weight"] = weight
        state[f"net.{2 * i}.bias"] = bias
    return model, group_name(*parts), state


def _layers(tensors: Mapping[str, torch.Tensor], file: Path
            ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    found: dict[int, dict[str, torch.Tensor]] = {}
    style = None
    last_key: int | None = None
    for key, value in tensors.items():
        if key in _IGNORED and value.numel() == 1:
            continue
        match, kind = _DWSNETS.match(key), "dwsnets"
        if match is None:
            match, kind = _SIREN_HIDDEN.match(key), "siren"
        if match is None and _SIREN_LAST.match(key):
            match, kind = _SIREN_LAST.match(key), "siren"
            index = int(match.group(1))
            if last_key is not None and last_key != index:
                raise ZooError(f"{file}: unexpected key {key!r}; expected {_EXPECTED_KEYS}")
            last_key = index
        if match is None:
            raise ZooError(f"{file}: unexpected key {key!r}; expected {_EXPECTED_KEYS}")
        if style not in (None, kind):
            raise ZooError(f"{file}: mixes DWSNets (seq.*) and SIREN (net.*) keys ({key!r})")
        style = kind
        slot = found.setdefault(int(match.group(1)), {})
        if match.group(2) in slot:
            raise ZooError(f"{file}: key {key!r} duplicates layer {match.group(1)}")
        slot[match.group(2)] = value
    if not found:
        raise ZooError(f"{file}: no INR parameters; expected {_EXPECTED_KEYS}")
    indices = sorted(found)
    if indices != list(range(len(indices))):
        raise ZooError(f"{file}: layer indices {indices} are not 0..{len(indices) - 1}")
    if style == "siren" and last_key != indices[-1]:
        raise ZooError(f"{file}: the last SIREN layer must be net.{indices[-1]}.weight/bias "
                       f"(an outermost linear layer)")
    if len(indices) < 2:
        raise ZooError(f"{file}: an INR needs at least one sine layer and an output layer, "
                       f"found {len(indices)} layer(s)")
    layers = []
    width = None
    for i in indices:
        slot = found[i]
        if "weight" not in slot or "bias" not in slot:
            missing = "weight" if "weight" not in slot else "bias"
            raise ZooError(f"{file}: layer {i} has no {missing}")
        weight, bias = slot["weight"], slot["bias"]
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ZooError(f"{file}: layer {i} has weight {list(weight.shape)} and bias "
                           f"{list(bias.shape)}; expected [out, in] and [out]")
        if width is not None and weight.shape[1] != width:
            raise ZooError(f"{file}: layer {i} takes {weight.shape[1]} inputs but layer {i - 1} "
                           f"has {width} outputs")
        width = weight.shape[0]
        layers.append((weight, bias))
    return layers, style
