"""Training configuration: one dataclass, read from YAML, overridden from the
command line with ``key=value`` (``model.hidden=64``, ``epochs=20``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from weightspace.errors import WeightspaceError
from weightspace.train.tasks import TASKS


@dataclass
class TrainConfig:
    """Everything one metanetwork training run needs.

    Args:
        zoo: path of the HDF5 zoo.
        task: a name of :data:`~weightspace.train.tasks.TASKS`:
            ``"classify"`` (cross-entropy, accuracy), ``"regress"`` (MSE;
            Kendall τ and R²) or ``"edit"`` (the metanetwork outputs an INR;
            MSE of its image against the edited image, e.g. dilated).
        target: the zoo column to predict (``classify``/``regress``).
        model: a name of :data:`weightspace.nn.METANETWORKS`.
        model_args: keyword arguments of the model (``hidden``, ``num_layers`` …).
        epochs: at most this many passes over the training rows.
        batch_size: graphs per optimisation step (per process under DDP).
        lr / weight_decay: AdamW; the learning rate follows a cosine schedule
            with ``warmup_steps`` of linear warm-up.
        grad_clip: clip the gradient norm (``0``: off).
        seed: seeds the model, the split and the augmentations.
        split: ``"run"`` (:func:`~weightspace.zoo.split_by_run` with
            ``split_fractions``) or a column name whose values ``train`` /
            ``val`` / ``test`` name the parts (e.g. ``split`` of
            ``digits-inr``: its ``test`` images are divided into val and test
            by run).
        max_train_rows: use only the first N training rows (``0``: all).
        augment: weight-space augmentations by name (of
            :data:`~weightspace.zoo.augmentations.AUGMENTATIONS`) with their arguments,
            e.g. ``{"permutation": {}, "siren_bias_shift": {"p": 0.5}}``.
        mixup: weight-space mixup ``{"alpha": 0.2, "p": 1.0, "align": true}``
            or ``None``.
        patience: stop after this many epochs without a better validation
            score (``0``: never stop early).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …
        out: output directory (``config.yaml``, ``log.csv``, ``metrics.json``,
            ``checkpoint.pt``, ``best.pt``).
        resume: continue from ``out/checkpoint.pt`` when it exists.
        edit: the editing task's settings: ``{"op": "dilate", "size": 3}``.
        progress: show tqdm progress bars.
        eval_batch_size: graphs per evaluation batch.
    """

    zoo: str = ""
    task: str = "classify"
    target: str = "label"
    model: str = "gmn"
    model_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    split: str = "run"
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    max_train_rows: int = 0
    augment: dict[str, dict[str, Any]] = field(default_factory=dict)
    mixup: dict[str, Any] | None = None
    patience: int = 0
    device: str = "auto"
    out: str = "runs/metanet"
    resume: bool = False
    edit: dict[str, Any] = field(default_factory=lambda: {"op": "dilate", "size": 3})
    progress: bool = True
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        # YAML reads 1e-3 (no dot) as a string; numbers from any source are coerced
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and not isinstance(value, bool):
                try:
                    setattr(self, f.name, int(value) if f.type == "int" else float(value))
                except (TypeError, ValueError):
                    raise WeightspaceError(f"{f.name} must be a number, got {value!r}",
                                           parameter=f.name) from None
        self.validate()

    def validate(self) -> None:
        TASKS.get(self.task)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise WeightspaceError(f"{name} must be at least 1, got {getattr(self, name)}",
                                       parameter=name)
        if self.lr <= 0:
            raise WeightspaceError(f"lr must be positive, got {self.lr}", parameter="lr")
        if not isinstance(self.model_args, Mapping):
            raise WeightspaceError(f"model_args must be a mapping, got {self.model_args!r}",
                                   parameter="model_args")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


_DEFAULTS = TrainConfig()


def _parse_value(text: str) -> Any:
    """``key=value`` values are YAML scalars/flow collections: ``3``, ``1e-3``,
    ``true``, ``[32, 32]``, ``{p: 0.5}``, ``null``."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` / ``a.b=value`` overrides to a nested dict (in place)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise WeightspaceError(f"override {item!r} is not key=value (e.g. epochs=10, "
                                   f"model_args.hidden=64)", parameter="overrides")
        path = key.strip().split(".")
        if path[0] not in names:
            raise WeightspaceError(f"unknown setting {path[0]!r} in override {item!r}; known: "
                                   f"{sorted(names)}", parameter="overrides")
        target = values
        for part in path[:-1]:
            nested = target.get(part)
            if nested is None:
                nested = target[part] = {}
            if not isinstance(nested, dict):
                raise WeightspaceError(f"override {item!r}: {part!r} is not a mapping",
                                       parameter="overrides")
            target = nested
        target[path[-1]] = _parse_value(text)
    return values


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (),
                **values: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (optional), keyword values and
    ``key=value`` overrides, in that order of precedence (last wins)."""
    # start from the defaults so that a dotted override (split_fractions.train=0.7)
    # changes one entry of a default mapping instead of replacing the mapping
    data: dict[str, Any] = {f.name: getattr(_DEFAULTS, f.name) for f in dataclasses.fields(TrainConfig)}
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise WeightspaceError(f"cannot read config {path}: {exc.strerror or exc}",
                                   parameter="path") from exc
        except yaml.YAMLError as exc:
            raise WeightspaceError(f"{path} is not valid YAML: {exc}", parameter="path") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise WeightspaceError(f"{path} must hold a mapping of settings, got "
                                   f"{type(loaded).__name__}", parameter="path")
        data.update(loaded or {})
    data.update(values)
    apply_overrides(data, overrides)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {path}" if path is not None else ""
        raise WeightspaceError(f"unknown setting {unknown[0]!r}{where}; known: {sorted(names)}",
                               parameter=unknown[0])
    return TrainConfig(**data)


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    from weightspace.io import atomic_write

    with atomic_write(path, "w") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)


__all__ = ["TASKS", "TrainConfig", "apply_overrides", "load_config", "save_config"]
