"""Reader of the Model Zoos data set (Schürholt et al. 2022), raw form.

Each zoo is a Ray Tune experiment (``ModelZoos/ModelZooDataset``,
``code/zoo_generators/train_zoo_*.py`` with the trainable of
``code/model_definitions/def_NN_experiment.py``): one trial folder per
model, holding ``result.json`` (Ray's JSON logger: one JSON object per line,
one line per epoch, with ``training_iteration``, ``train_acc``,
``train_loss``, ``test_acc``, ``test_loss`` and the trial's ``config``), and
per epoch a ``checkpoint_<epoch>/checkpoints`` file, the model's state dict
(``torch.save(model.state_dict())``). The config's ``model::type`` (``CNN``,
``CNN2``, ``CNN3``), ``model::channels_in`` and ``model::nlin`` fix the
architecture (``code/model_definitions/def_net.py``), rebuilt as the
``modelzoo_cnn`` family.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from weightspace.models.model_zoos import ZOO_NONLINEARITIES, ZOO_VARIANTS, ModelZooCNN
from weightspace.zoo.errors import ZooError
from weightspace.zoo.importers._common import (
    check_on_error,
    checkpoint_number,
    fail,
    flatten_config,
    group_name,
    posix_relative,
    require_dir,
    scalar,
    tensors_of,
    torch_load,
)
from weightspace.zoo.rows import ModelDef, ZooRow

RESULT_FILE = "result.json"
PARAMS_FILE = "params.json"
STATE_FILE = "checkpoints"
_KEY = re.compile(r"^module_list\.(\d+)\.(weight|bias)$")
# result.json name -> column name
_RESULTS = {"test_acc": "test_accuracy", "train_acc": "train_accuracy",
            "test_loss": "test_loss", "train_loss": "train_loss"}
# The trainable reports -999 for the (skipped) training pass of epoch 0.
_NOT_COMPUTED = -999


def read_model_zoos(
    path: str | os.PathLike[str],
    *,
    epochs: Iterable[int] | None = None,
    on_error: str = "raise",
    group_prefix: str | None = None,
) -> Iterator[ZooRow]:
    """Stream the checkpoints of Model Zoos trial folders below ``path``.

    Rows: key ``"<trial folder>/checkpoint_<epoch>"``; group = one per
    architecture (``model::type``, ``model::nlin``, ``model::channels_in``);
    params = the state dict in ``modelzoo_cnn`` keys (a ``model::dropout = 0``
    checkpoint's keys are renumbered in layer order); metadata: ``epoch``
    (``training_iteration``), ``test_accuracy`` / ``train_accuracy`` /
    ``test_loss`` / ``train_loss`` (from ``test_acc`` ...; the -999 that the
    trainable reports for the untrained epoch 0 is left out), ``run_id``
    (the trial folder), ``trial_id`` and ``config.*`` (every config entry,
    e.g. ``config.model::nlin``, ``config.seed``).

    Args:
        path: a zoo folder (searched recursively for trial folders: folders
            with ``checkpoint_<n>/checkpoints`` files).
        epochs: keep only these epochs.
        on_error: ``"raise"`` or ``"skip"`` (log a warning and go on) for a
            trial without ``result.json``, an unreadable checkpoint, one with
            unexpected keys, or an epoch ``result.json`` does not report.
        group_prefix: prefix of the group names.

    Raises:
        ZooError: no trial folder below ``path``; the per-checkpoint problems
            above with ``on_error="raise"``; the message names the file.
    """
    check_on_error(on_error)
    root = require_dir(path, "a Model Zoos folder of Ray Tune trial folders")
    trials = _find_trials(root)
    if not trials:
        raise ZooError(f"{root}: no trial folder below it; Model Zoos stores each model as a "
                       f"Ray Tune trial folder with {RESULT_FILE} and "
                       f"checkpoint_<epoch>/{STATE_FILE} files")
    keep = None if epochs is None else {int(e) for e in epochs}
    return _rows(root, trials, keep, on_error, group_prefix)


def _find_trials(root: Path) -> list[tuple[Path, list[tuple[int, Path]]]]:
    trials = []
    for folder, dirnames, _ in os.walk(root):
        numbered = [(checkpoint_number(d), d) for d in dirnames]
        checkpoints = sorted((n, Path(folder) / d) for n, d in numbered if n is not None)
        if checkpoints:
            # do not descend into the checkpoint folders (a zoo has millions)
            dirnames[:] = [d for n, d in numbered if n is None]
            checkpoints = [(n, d) for n, d in checkpoints if (d / STATE_FILE).is_file()]
            if checkpoints:
                trials.append((Path(folder), checkpoints))
        dirnames.sort()
    trials.sort(key=lambda t: t[0].as_posix())
    return trials


def _read_results(trial: Path) -> tuple[dict[int, Mapping[str, Any]], Mapping[str, Any]]:
    path = trial / RESULT_FILE
    if not path.is_file():
        raise ZooError(f"{path}: missing file; a Model Zoos trial folder holds {RESULT_FILE} "
                       f"(one JSON object per epoch with training_iteration, test_acc, "
                       f"train_acc and config)")
    by_epoch: dict[int, Mapping[str, Any]] = {}
    config: Mapping[str, Any] | None = None
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise ZooError(f"{path} line {number}: not valid JSON ({err})") from err
            if not isinstance(record, dict) or "training_iteration" not in record:
                raise ZooError(f"{path} line {number}: no training_iteration")
            by_epoch[int(record["training_iteration"])] = record
            if config is None and isinstance(record.get("config"), dict):
                config = record["config"]
    if config is None and (trial / PARAMS_FILE).is_file():
        with open(trial / PARAMS_FILE) as handle:
            config = json.load(handle)
    if not isinstance(config, Mapping):
        raise ZooError(f"{path}: no config (neither in {RESULT_FILE} nor in {PARAMS_FILE})")
    return by_epoch, config


def _model(config: Mapping[str, Any], where: Path, group_prefix: str | None
           ) -> tuple[ModelDef, str]:
    for name in ("model::type", "model::channels_in", "model::nlin"):
        if name not in config:
            raise ZooError(f"{where}: config lacks {name!r}")
    variant, nlin = str(config["model::type"]), str(config["model::nlin"])
    if variant not in ZOO_VARIANTS:
        raise ZooError(f"{where}: model::type {variant!r} is not supported (supported: "
                       f"{', '.join(ZOO_VARIANTS)})")
    if nlin not in ZOO_NONLINEARITIES:
        raise ZooError(f"{where}: model::nlin {nlin!r} is not supported (supported: "
                       f"{', '.join(ZOO_NONLINEARITIES)})")
    channels = int(config["model::channels_in"])
    size = ZOO_VARIANTS[variant][0]
    args = {"variant": variant, "channels_in": channels, "nlin": nlin}
    model = ModelDef("modelzoo_cnn", args, (1, channels, size, size))
    return model, group_name(group_prefix, "modelzoo", variant, nlin, f"c{channels}")


def _rows(root: Path, trials, keep: set[int] | None, on_error: str,
          group_prefix: str | None) -> Iterator[ZooRow]:
    templates: dict[str, dict[str, torch.Tensor]] = {}
    for trial, checkpoints in trials:
        try:
            by_epoch, config = _read_results(trial)
            model, group = _model(config, trial / RESULT_FILE, group_prefix)
        except ZooError as err:
            fail(on_error, err)
            continue
        model_json = model.to_json()
        if model_json not in templates:
            module = ModelZooCNN(**model.args)
            templates[model_json] = {k: v.detach() for k, v in module.state_dict().items()}
        template = templates[model_json]
        run_id = posix_relative(trial, root)
        config_columns = flatten_config(config)
        for epoch, folder in checkpoints:
            if keep is not None and epoch not in keep:
                continue
            file = folder / STATE_FILE
            try:
                result = by_epoch.get(epoch)
                if result is None:
                    raise ZooError(f"{file}: {trial / RESULT_FILE} has no line with "
                                   f"training_iteration = {epoch}")
                state = _rekey(tensors_of(torch_load(file), file), template, file)
            except ZooError as err:
                fail(on_error, err)
                continue
            metadata: dict[str, Any] = dict(config_columns)
            metadata["epoch"] = epoch
            for name, column in _RESULTS.items():
                value = scalar(result.get(name))
                if isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and value != _NOT_COMPUTED:
                    metadata[column] = value
            if isinstance(result.get("trial_id"), str):
                metadata["trial_id"] = result["trial_id"]
            metadata["run_id"] = run_id
            yield ZooRow(key=f"{run_id}/{folder.name}", group=group, model=model, params=state,
                         metadata=metadata)


def _rekey(state: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor],
           file: Path) -> dict[str, torch.Tensor]:
    """Map a checkpoint's ``module_list.<i>`` keys onto the template's, layer
    by layer (the indices differ when the original had no Dropout modules)."""
    theirs: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        found = _KEY.match(key)
        if found is None:
            raise ZooError(f"{file}: unexpected key {key!r}; a Model Zoos CNN checkpoint has "
                           f"only module_list.<i>.weight/bias entries")
        theirs.setdefault(int(found.group(1)), {})[found.group(2)] = value
    ours: dict[int, list[str]] = {}
    for key in template:
        found = _KEY.match(key)
        ours.setdefault(int(found.group(1)), []).append(key)
    their_layers, our_layers = sorted(theirs), sorted(ours)
    if len(their_layers) != len(our_layers):
        raise ZooError(f"{file}: {len(their_layers)} parametrised layers (module_list indices "
                       f"{their_layers}) but the config's architecture has {len(our_layers)}")
    out = {}
    for i, j in zip(their_layers, our_layers, strict=True):
        for key in ours[j]:
            kind = key.rsplit(".", 1)[1]
            if kind not in theirs[i]:
                raise ZooError(f"{file}: module_list.{i} has no {kind}")
            value = theirs[i][kind]
            if tuple(value.shape) != tuple(template[key].shape):
                raise ZooError(f"{file}: module_list.{i}.{kind} has shape {list(value.shape)}, "
                               f"the config's architecture expects {list(template[key].shape)}")
            out[key] = value
        extra = set(theirs[i]) - {k.rsplit(".", 1)[1] for k in ours[j]}
        if extra:
            raise ZooError(f"{file}: unexpected key module_list.{i}.{extra.pop()}")
    return out
