"""Reader of CNN Wild Park (Kofinas et al. 2024).

The zoo is a Ray Tune experiment (``mkofinas/neural-graphs``,
``experiments/cnn_generalization/dataset/train_cnn_park.py`` and
``cnn_trainer.py``): one folder per trained CNN, with a
``checkpoint_<iteration>/checkpoint.pt`` every few epochs holding
``{"model": state_dict, "optimizer": ..., "config": {n_layers, n_classes,
channels, kernel_size, stride, padding, residual, activation}, "iteration":
epoch, "last_result": {"test/acc": ..., "test/loss": ...}, ...}``. The
published splits (``generate_cnn_park_splits.py``) keep all checkpoints of a
run in one split. The networks are rebuilt as the ``cnn_park`` family.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from weightspace.models.cnn_park import ParkCNN
from weightspace.zoo.errors import ZooError
from weightspace.zoo.importers._common import (
    check_on_error,
    checkpoint_number,
    column_name,
    fail,
    flatten_config,
    group_name,
    posix_relative,
    require_dir,
    scalar,
    short_hash,
    torch_load,
)
from weightspace.zoo.rows import ModelDef, ZooRow

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_KEYS = ("channels", "kernel_size", "stride", "padding", "residual", "activation")
# last_result names -> column names
_RESULT_COLUMNS = {"acc": "accuracy", "loss": "loss"}


def read_cnn_wild_park(
    path: str | os.PathLike[str],
    *,
    splits: str | os.PathLike[str] | None = None,
    input_size: int | None = None,
    on_error: str = "raise",
    group_prefix: str | None = None,
) -> Iterator[ZooRow]:
    """Stream the ``checkpoint.pt`` files below ``path`` as :class:`ZooRow` s.

    Rows: key = the checkpoint folder relative to ``path``; group = one per
    distinct architecture (``config`` minus training settings); params = the
    state dict in ``cnn_park`` keys (the fixed channel maps of partial
    residuals included); metadata: ``config.*`` (lists as JSON text),
    ``test_accuracy`` / ``test_loss`` (and any other ``<split>/acc``,
    ``<split>/loss`` of ``last_result``), ``epoch`` (``iteration``),
    ``run_id`` (the run folder) and ``split`` when ``splits`` is given.

    Args:
        path: the zoo folder (searched recursively for ``checkpoint.pt``).
        splits: optional splits JSON ``{split: {"path": [...], ...}}`` (as
            ``cnn_park_splits.json``); its paths are matched by their trailing
            components.
        input_size: image side length for the model definition (default 32
            for 3 input channels, else 28).
        on_error: ``"raise"`` or ``"skip"`` (log a warning and go on) for an
            unreadable or malformed checkpoint.
        group_prefix: prefix of the group names.

    Raises:
        ZooError: no checkpoint below ``path``; and (``on_error="raise"``) a
            broken file, a missing ``model`` / ``config`` entry, a state dict
            whose keys or shapes do not fit its config; the message names
            the file.
    """
    check_on_error(on_error)
    root = require_dir(path, f"a CNN Wild Park folder with <run>/<checkpoint>/{CHECKPOINT_FILE} "
                             f"files")
    files = sorted(root.rglob(CHECKPOINT_FILE), key=lambda p: p.as_posix())
    if not files:
        raise ZooError(f"{root}: no {CHECKPOINT_FILE} below it; CNN Wild Park stores each "
                       f"checkpoint as <run>/<checkpoint_dir>/{CHECKPOINT_FILE} holding "
                       f'{{"model": state_dict, "config": {{...}}}}')
    split_of = _read_splits(Path(splits), root, files) if splits is not None else {}
    return _rows(root, files, split_of, input_size, on_error, group_prefix)


def _read_splits(path: Path, root: Path, files: list[Path]) -> dict[str, str]:
    if not path.is_file() and not path.is_absolute() and (root / path).is_file():
        path = root / path
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError as err:
        raise ZooError(f"{path}: cannot read the splits file ({err})") from err
    except ValueError as err:
        raise ZooError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ZooError(f'{path}: expected {{split: {{"path": [...]}}}}')
    relative = {posix_relative(f, root): f for f in files}
    out: dict[str, str] = {}
    for split, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), list):
            raise ZooError(f'{path}: split {split!r} has no "path" list')
        for p in entry["path"]:
            parts = Path(str(p)).parts
            for i in range(len(parts)):
                candidate = "/".join(parts[i:])
                if candidate in relative:
                    out[candidate] = str(split)
                    break
    return out


def _rows(root: Path, files: list[Path], split_of: dict[str, str], input_size: int | None,
          on_error: str, group_prefix: str | None) -> Iterator[ZooRow]:
    templates: dict[str, tuple[ModelDef, str, dict[str, torch.Tensor]]] = {}
    for file in files:
        folder = file.parent
        run = folder.parent if checkpoint_number(folder.name) is not None else folder
        key = posix_relative(folder, root)
        try:
            checkpoint = torch_load(file)
            config, state = _parts(checkpoint, file)
            args = _architecture(config, state, file)
            signature = json.dumps(args, sort_keys=True)
            if signature not in templates:
                templates[signature] = _template(args, input_size, group_prefix, file)
            model, group, template = templates[signature]
            params = _check_state(state, template, file)
        except ZooError as err:
            fail(on_error, err)
            continue
        metadata = flatten_config(config)
        metadata.update(_results(checkpoint))
        metadata["run_id"] = posix_relative(run, root)
        relative = posix_relative(file, root)
        if relative in split_of:
            metadata["split"] = split_of[relative]
        yield ZooRow(key=key, group=group, model=model, params=params, metadata=metadata)


def _parts(checkpoint: Any, file: Path) -> tuple[Mapping[str, Any], dict[str, torch.Tensor]]:
    if not isinstance(checkpoint, Mapping):
        raise ZooError(f"{file}: expected a dict with 'model' and 'config', found a "
                       f"{type(checkpoint).__name__}")
    for name in ("model", "config"):
        if not isinstance(checkpoint.get(name), Mapping):
            raise ZooError(f"{file}: missing {name!r} entry (top-level keys "
                           f"{sorted(map(str, checkpoint))}); a CNN Wild Park checkpoint holds "
                           f'{{"model": state_dict, "config": {{...}}}}')
    state = checkpoint["model"]
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ZooError(f"{file}: model entry {key!r} is a {type(value).__name__}, not a tensor")
    return checkpoint["config"], dict(state)


def _architecture(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], file: Path
                  ) -> dict[str, Any]:
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ZooError(f"{file}: config lacks {', '.join(missing)} (has {sorted(config)})")
    args: dict[str, Any] = {}
    try:
        args["channels"] = [int(c) for c in config["channels"]]
        for name in ("kernel_size", "stride", "padding", "residual"):
            args[name] = [int(v) for v in config[name]]
        args["activation"] = [str(a) for a in config["activation"]]
    except (TypeError, ValueError) as err:
        raise ZooError(f"{file}: config entries must be lists of per-layer values ({err})") from err
    n_layers = config.get("n_layers")
    if n_layers is not None and int(n_layers) != len(args["channels"]) - 1:
        raise ZooError(f"{file}: config n_layers = {n_layers} but channels "
                       f"{args['channels']} describe {len(args['channels']) - 1} layers")
    if config.get("n_classes") is not None:
        args["n_classes"] = int(config["n_classes"])
    elif isinstance(state.get("fc.bias"), torch.Tensor):
        args["n_classes"] = int(state["fc.bias"].shape[0])
    else:
        args["n_classes"] = 10
    return args


def _template(args: dict[str, Any], input_size: int | None, group_prefix: str | None,
              file: Path) -> tuple[ModelDef, str, dict[str, torch.Tensor]]:
    try:
        module = ParkCNN(**args)
    except (TypeError, ValueError) as err:
        raise ZooError(f"{file}: config describes no valid CNN Wild Park network ({err})") from err
    channels = args["channels"]
    size = input_size or (32 if channels[0] == 3 else 28)
    model = ModelDef("cnn_park", args, (1, channels[0], size, size))
    group = group_name(group_prefix, "cnnpark", f"L{len(channels) - 1}", short_hash(args))
    return model, group, {k: v.detach().clone() for k, v in module.state_dict().items()}


def _check_state(state: dict[str, torch.Tensor], template: dict[str, torch.Tensor],
                 file: Path) -> dict[str, torch.Tensor]:
    fixed = {k for k in template if k.startswith("res_maps.")}
    for key in state:
        if key not in template or key in fixed:
            expected = [k for k in template if k not in fixed]
            raise ZooError(f"{file}: unexpected key {key!r} in 'model'; its config describes "
                           f"a network with keys {expected}")
    out = {}
    for key, value in template.items():
        if key in fixed:
            out[key] = value
            continue
        if key not in state:
            raise ZooError(f"{file}: 'model' lacks {key!r} (shape {list(value.shape)}) that its "
                           f"config implies")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ZooError(f"{file}: 'model' entry {key!r} has shape {list(state[key].shape)}, "
                           f"its config implies {list(value.shape)}")
        out[key] = state[key]
    return out


def _results(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    result = checkpoint.get("last_result")
    if isinstance(result, Mapping):
        for name, value in result.items():
            if not isinstance(name, str) or "/" not in name:
                continue
            split, _, metric = name.partition("/")
            column = column_name(f"{split}_{_RESULT_COLUMNS.get(metric, metric)}")
            value = scalar(value)
            if column and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[column] = value
    epoch = checkpoint.get("iteration")
    if epoch is None and isinstance(result, Mapping):
        epoch = result.get("training_iteration")
    epoch = scalar(epoch)
    if isinstance(epoch, int):
        out["epoch"] = epoch
    return out
