"""Merge configs: YAML in the spirit of mergekit, plus what weight-space merging needs.

A config names the models to merge, the method and its parameters the way
mergekit (``mergekit-yaml CONFIG OUT``) does, and adds the architecture (our
checkpoints are plain state dicts, so the module must be built to align,
repair or evaluate them), the alignment, REPAIR and the data::

    merge_method: ties            # average | task-arith | ties | dare
                                  # (mergekit's linear, task_arithmetic,
                                  #  dare_linear, dare_ties are accepted too)
    base_model: base.pt           # task-arith, ties, dare
    models:
      - model: finetuned_a.pt     # paths are relative to this file's folder
        parameters: {weight: 1.0, density: 0.3}
      - model: finetuned_b.pt
        parameters: {weight: 0.5}
    parameters: {density: 0.2, lambda: 1.0}   # global defaults
    architecture:
      model: mlp                  # built-in family, package.module:callable
                                  # or file.py:callable (relative path)
      model_args: {hidden: [64, 64]}
      input_shape: [1, 64]        # default for built-in families
    align: none                   # weight | activation | none
    repair: false                 # REPAIR the interpolated model (2 models)
    data: digits                  # or data.npz (x_train, y_train, x_test, y_test)
    dtype: float32                # optional: dtype of the merged tensors

A model listed in ``models`` that is also the ``base_model`` is skipped, as in
mergekit. Every problem raises :class:`MergeConfigError` whose message starts
with the file and names the field (``models[1].parameters.weight`` …).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from weightspace.errors import WeightspaceError
from weightspace.merge.methods import MERGE_METHODS, merge

logger = logging.getLogger(__name__)

__all__ = [
    "ALIGN_METHODS",
    "ArchitectureConfig",
    "MergeConfig",
    "MergeConfigError",
    "ModelEntry",
    "load_merge_config",
]

#: ``merge_method`` values: ours and mergekit's names -> (method, fixed parameters).
METHOD_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "average": ("average", {}),
    "linear": ("average", {}),
    "task-arith": ("task-arith", {}),
    "task_arithmetic": ("task-arith", {}),
    "ties": ("ties", {}),
    "dare": ("dare", {}),
    "dare_linear": ("dare", {"ties": False}),
    "dare_ties": ("dare", {"ties": True}),
}

#: ``align`` values.
ALIGN_METHODS = ("weight", "activation", "none")

DTYPES = ("float32", "float64", "float16", "bfloat16")

_TOP_LEVEL = ("merge_method", "models", "base_model", "parameters", "architecture", "align",
              "repair", "data", "dtype")
_GLOBAL_PARAMETERS = {
    "average": ("weight",),
    "task-arith": ("weight", "scaling", "lambda"),
    "ties": ("weight", "density", "scaling", "lambda"),
    "dare": ("weight", "density", "scaling", "lambda", "seed", "rescale", "ties"),
}
_MODEL_PARAMETERS = {
    "average": ("weight",),
    "task-arith": ("weight",),
    "ties": ("weight", "density"),
    "dare": ("weight", "density"),
}


class MergeConfigError(WeightspaceError):
    """An invalid merge config; the message starts with the file and names the field."""


@dataclass(frozen=True)
class ModelEntry:
    """One model to merge: its checkpoint (absolute path) and per-model parameters."""

    model: Path
    weight: float = 1.0
    density: float | None = None


@dataclass(frozen=True)
class ArchitectureConfig:
    """How to build the module the checkpoints belong to.

    ``model`` is a built-in family name, ``package.module:callable`` or
    ``/absolute/path/file.py:callable`` (resolved against the config's
    folder); ``input_shape`` includes the batch axis (``None`` for user code
    without one).
    """

    model: str
    model_args: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None

    def build(self) -> tuple[nn.Module, tuple[int, ...] | None]:
        """``(module, input_shape)`` (see :func:`weightspace.models.resolve.resolve_model`)."""
        from weightspace.models.resolve import resolve_model

        module, default_shape = resolve_model(self.model, dict(self.model_args))
        return module, self.input_shape or default_shape


@dataclass(frozen=True)
class MergeConfig:
    """A validated merge config (build it with :func:`load_merge_config`).

    Attributes:
        path: the YAML file.
        merge_method: a key of :data:`~weightspace.merge.MERGE_METHODS`.
        models: the models to merge (the base model excluded).
        base_model: the base of the task vectors (``None`` for ``average``).
        parameters: global method parameters, normalised: ``scaling``
            (mergekit's ``lambda``), ``density``, ``seed``, ``rescale``,
            ``ties`` — only those given (or implied by the method name).
        architecture: how to build the module, if given.
        align: ``"weight"``, ``"activation"`` or ``"none"``.
        repair: apply REPAIR to the interpolated model.
        data: ``"digits"`` or the absolute path of an ``.npz``; ``None`` if
            not given.
        dtype: dtype name of the merged tensors, or ``None`` (keep).
    """

    path: Path
    merge_method: str
    models: tuple[ModelEntry, ...]
    base_model: Path | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    architecture: ArchitectureConfig | None = None
    align: str = "none"
    repair: bool = False
    data: str | Path | None = None
    dtype: str | None = None

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(m.weight for m in self.models)

    def method_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the merge function (besides states and base):
        ``weights``, ``scaling``, ``density`` (one per model when any model
        sets its own), ``seed``, ``rescale``, ``ties``."""
        kwargs: dict[str, Any] = {"weights": list(self.weights)}
        kwargs.update({k: v for k, v in self.parameters.items() if k != "density"})
        if self.merge_method in ("ties", "dare"):
            if any(m.density is not None for m in self.models):
                default = self.parameters.get("density", 0.2 if self.merge_method == "ties"
                                              else 0.5)
                kwargs["density"] = [default if m.density is None else m.density
                                     for m in self.models]
            elif "density" in self.parameters:
                kwargs["density"] = self.parameters["density"]
        return kwargs

    def merge(self, states: Sequence[Mapping[str, Tensor]],
              base: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Merge ``states`` (one per entry of :attr:`models`, in order) and
        ``base`` with this config's method and parameters; cast to
        :attr:`dtype` when set."""
        if len(states) != len(self.models):
            raise ValueError(f"{self.path}: the config lists {len(self.models)} models but "
                             f"{len(states)} state dicts were given")
        out = merge(self.merge_method, states, base=base, **self.method_kwargs())
        if self.dtype is not None:
            dtype = getattr(torch, self.dtype)
            out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
        return out

    def as_dict(self) -> dict[str, Any]:
        """The config as plain YAML-able data with absolute paths (to save a
        copy beside the merged model, as mergekit does)."""
        out: dict[str, Any] = {
            "merge_method": self.merge_method,
            "models": [{"model": str(m.model), "parameters": {
                "weight": m.weight, **({} if m.density is None else {"density": m.density})}}
                for m in self.models],
        }
        if self.base_model is not None:
            out["base_model"] = str(self.base_model)
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        if self.architecture is not None:
            arch: dict[str, Any] = {"model": self.architecture.model,
                                    "model_args": dict(self.architecture.model_args)}
            if self.architecture.input_shape is not None:
                arch["input_shape"] = list(self.architecture.input_shape)
            out["architecture"] = arch
        out["align"] = self.align
        out["repair"] = self.repair
        if self.data is not None:
            out["data"] = str(self.data)
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out


# ------------------------------------------------------------------------- parsing
class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = path.resolve().parent

    def error(self, field_name: str, problem: str) -> MergeConfigError:
        return MergeConfigError(f"{self.path}: field {field_name!r}: {problem}")

    def mapping(self, value: Any, field_name: str) -> dict:
        if not isinstance(value, Mapping):
            raise self.error(field_name, f"must be a mapping, got {_describe(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(field_name, f"keys must be strings, got {key!r}")
        return dict(value)

    def known_keys(self, value: Mapping, allowed: Sequence[str], field_name: str | None,
                   why: str = "") -> None:
        for key in value:
            if key not in allowed:
                name = key if field_name is None else f"{field_name}.{key}"
                raise self.error(name, f"unknown field{why}; expected one of "
                                       f"{', '.join(allowed)}")

    def string(self, value: Any, field_name: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(field_name, f"must be a non-empty string, got {_describe(value)}")
        return value.strip()

    def number(self, value: Any, field_name: str) -> float:
        if isinstance(value, (list, tuple)):
            raise self.error(field_name, "per-layer lists (mergekit gradients) are not "
                                         "supported; give one number")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise self.error(field_name, f"must be a finite number, got {_describe(value)}")
        return float(value)

    def density(self, value: Any, field_name: str) -> float:
        d = self.number(value, field_name)
        if not 0.0 < d <= 1.0:
            raise self.error(field_name, f"must be in (0, 1] (the fraction of task-vector "
                                         f"entries kept), got {d}")
        return d

    def boolean(self, value: Any, field_name: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(field_name, f"must be true or false, got {_describe(value)}")
        return value

    def file(self, value: Any, field_name: str) -> Path:
        text = self.string(value, field_name)
        path = Path(os.path.expanduser(text))
        if not path.is_absolute():
            path = self.folder / path
        path = Path(os.path.normpath(path))
        if not path.exists():
            raise self.error(field_name, f"{text!r} does not exist (looked for {path}; relative "
                                         f"paths are relative to the config's folder)")
        return path


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


def load_merge_config(path: str | os.PathLike[str]) -> MergeConfig:
    """Read and validate a merge config (YAML; see the module docstring).

    Paths (models, base model, ``.npz`` data, ``file.py:callable``) are
    resolved against the YAML file's folder and must exist.

    Raises:
        MergeConfigError: unreadable file, invalid YAML, or an invalid field;
            the message starts with the file and names the field.
    """
    path = Path(path)
    reader = _Reader(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MergeConfigError(f"{path}: cannot read the merge config ({err})") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MergeConfigError(f"{path}: not valid YAML{where}: "
                               f"{getattr(err, 'problem', None) or err}") from err
    if not isinstance(raw, Mapping):
        raise MergeConfigError(f"{path}: a merge config must be a YAML mapping with "
                               f"merge_method and models, got {_describe(raw)}")
    raw = reader.mapping(raw, "<top level>")
    reader.known_keys(raw, _TOP_LEVEL, None,
                      " (mergekit fields such as slices, tokenizer_source are not supported)")

    # --- method
    if "merge_method" not in raw:
        raise reader.error("merge_method", f"is required; one of {', '.join(MERGE_METHODS)}")
    name = reader.string(raw["merge_method"], "merge_method")
    if name not in METHOD_NAMES:
        raise reader.error("merge_method", f"unknown method {name!r}; expected one of "
                                           f"{', '.join(METHOD_NAMES)}")
    method, implied = METHOD_NAMES[name]

    # --- models
    if "models" not in raw:
        raise reader.error("models", "is required: a list of {model: PATH, parameters: {...}}")
    if not isinstance(raw["models"], list) or not raw["models"]:
        raise reader.error("models", f"must be a non-empty list, got {_describe(raw['models'])}")
    global_params = reader.mapping(raw.get("parameters") or {}, "parameters")
    reader.known_keys(global_params, _GLOBAL_PARAMETERS[method], "parameters",
                      f" for merge_method {name}")
    default_weight = (reader.number(global_params["weight"], "parameters.weight")
                      if "weight" in global_params else 1.0)
    entries: list[ModelEntry] = []
    for i, item in enumerate(raw["models"]):
        where = f"models[{i}]"
        if isinstance(item, str):
            item = {"model": item}
        item = reader.mapping(item, where)
        reader.known_keys(item, ("model", "parameters"), where)
        if "model" not in item:
            raise reader.error(f"{where}.model", "is required (the checkpoint path)")
        model_path = reader.file(item["model"], f"{where}.model")
        params = reader.mapping(item.get("parameters") or {}, f"{where}.parameters")
        reader.known_keys(params, _MODEL_PARAMETERS[method], f"{where}.parameters",
                          f" for merge_method {name}")
        weight = (reader.number(params["weight"], f"{where}.parameters.weight")
                  if "weight" in params else default_weight)
        density = (reader.density(params["density"], f"{where}.parameters.density")
                   if "density" in params else None)
        entries.append(ModelEntry(model_path, weight, density))

    # --- base model
    base_model = None
    if raw.get("base_model") is not None:
        if method == "average":
            raise reader.error("base_model", f"merge_method {name} does not use a base model; "
                                             f"use task-arith, ties or dare for task vectors")
        base_model = reader.file(raw["base_model"], "base_model")
    elif method != "average":
        raise reader.error("base_model", f"is required by merge_method {name} (task vectors "
                                         f"are differences to the base model)")
    if base_model is not None:
        kept = [e for e in entries if e.model != base_model]
        if len(kept) < len(entries):
            logger.debug("%s: the base model is also listed in models; skipped as a model", path)
        entries = kept
    if not entries:
        raise reader.error("models", "lists no model besides the base model")

    # --- global parameters
    parameters: dict[str, Any] = {}
    if "scaling" in global_params and "lambda" in global_params:
        raise reader.error("parameters.lambda", "give either scaling or lambda (the same "
                                                "thing), not both")
    for key in ("scaling", "lambda"):
        if key in global_params:
            parameters["scaling"] = reader.number(global_params[key], f"parameters.{key}")
    if "density" in global_params:
        parameters["density"] = reader.density(global_params["density"], "parameters.density")
    if "seed" in global_params:
        seed = global_params["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise reader.error("parameters.seed", f"must be an integer, got {_describe(seed)}")
        parameters["seed"] = seed
    if "rescale" in global_params:
        parameters["rescale"] = reader.boolean(global_params["rescale"], "parameters.rescale")
    if "ties" in global_params:
        value = reader.boolean(global_params["ties"], "parameters.ties")
        if "ties" in implied and implied["ties"] != value:
            raise reader.error("parameters.ties", f"contradicts merge_method {name}")
        parameters["ties"] = value
    parameters.update(implied)
    needs_positive = method == "ties" or (method == "dare" and parameters.get("ties", False))
    for i, entry in enumerate(entries):
        if needs_positive and entry.weight <= 0:
            raise reader.error(f"models[{i}].parameters.weight",
                               f"must be positive for merge_method {name}, got {entry.weight}")
    if method == "average" and abs(sum(e.weight for e in entries)) < 1e-12:
        raise reader.error("models", "the weights sum to zero; average needs a non-zero total")

    # --- align, repair, data, dtype
    align = raw.get("align", "none")
    if align is None or align is False:
        align = "none"
    if align not in ALIGN_METHODS:
        raise reader.error("align", f"must be one of {', '.join(ALIGN_METHODS)}, got "
                                    f"{_describe(align)}")
    repair = reader.boolean(raw["repair"], "repair") if "repair" in raw else False
    if repair and (method != "average" or len(entries) != 2):
        raise reader.error("repair", "REPAIR corrects an interpolation of two models: it needs "
                                     "merge_method average with exactly two models")
    data: str | Path | None = None
    if raw.get("data") is not None:
        text = reader.string(raw["data"], "data")
        if text == "digits":
            data = "digits"
        else:
            data = reader.file(text, "data")
            if data.suffix.lower() != ".npz" or not data.is_file():
                raise reader.error("data", f"must be 'digits' or an .npz file with x_train, "
                                           f"y_train, x_test, y_test; got {text!r}")
    if data is None and (repair or align == "activation"):
        raise reader.error("data", "is required by " + ("repair: true" if repair
                                                         else "align: activation"))
    dtype = raw.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise reader.error("dtype", f"must be one of {', '.join(DTYPES)}, got {_describe(dtype)}")

    # --- architecture
    architecture = None
    needs_trace = align != "none" or repair
    if raw.get("architecture") is not None:
        architecture = _architecture(reader, raw["architecture"], needs_trace)
    elif needs_trace or data is not None:
        uses = [u for u, on in (("align", align != "none"), ("repair", repair),
                                ("data", data is not None)) if on]
        raise reader.error("architecture", f"is required by {', '.join(uses)} (the checkpoints "
                                           f"are state dicts; the module must be built)")

    config = MergeConfig(path=path, merge_method=method, models=tuple(entries),
                         base_model=base_model, parameters=parameters,
                         architecture=architecture, align=align, repair=repair, data=data,
                         dtype=dtype)
    logger.debug("loaded merge config %s: %s of %d models", path, method, len(entries))
    return config


def _architecture(reader: _Reader, value: Any, needs_shape: bool) -> ArchitectureConfig:
    from weightspace.models.registry import BUILTIN_MODELS, default_input_shape, get_family

    arch = reader.mapping(value, "architecture")
    reader.known_keys(arch, ("model", "model_args", "input_shape"), "architecture")
    if "model" not in arch:
        raise reader.error("architecture.model", f"is required: a built-in family "
                                                 f"({', '.join(BUILTIN_MODELS)}), "
                                                 f"package.module:callable or file.py:callable")
    model = reader.string(arch["model"], "architecture.model")
    model_args = reader.mapping(arch.get("model_args") or {}, "architecture.model_args")
    input_shape = None
    if arch.get("input_shape") is not None:
        shape = arch["input_shape"]
        if (not isinstance(shape, list) or not shape
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)):
            raise reader.error("architecture.input_shape", f"must be a list of positive integers "
                                                           f"with the batch axis first, e.g. "
                                                           f"[1, 64]; got {_describe(shape)}")
        input_shape = tuple(shape)
    if model in BUILTIN_MODELS:
        try:
            get_family(model).resolve_arguments(model_args)
            default = default_input_shape(model, **model_args)
        except (ValueError, TypeError, KeyError) as err:
            raise reader.error("architecture.model_args", str(err)) from err
        input_shape = input_shape or tuple(default)
    elif ":" in model:
        location, _, attribute = model.rpartition(":")
        if not location or not attribute:
            raise reader.error("architecture.model", f"{model!r} is not MODULE:CALLABLE or "
                                                     f"FILE.py:CALLABLE")
        if location.endswith(".py"):
            model = f"{reader.file(location, 'architecture.model')}:{attribute}"
        if input_shape is None and needs_shape:
            raise reader.error("architecture.input_shape", "is required for a model that is not "
                                                           "a built-in family (tracing needs an "
                                                           "example input shape)")
    else:
        raise reader.error("architecture.model", f"{model!r} is neither a built-in family "
                                                 f"({', '.join(BUILTIN_MODELS)}) nor "
                                                 f"MODULE:CALLABLE / FILE.py:CALLABLE")
    return ArchitectureConfig(model=model, model_args=model_args, input_shape=input_shape)
