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
mergekit. The methods, their names, and the parameters each accepts (global
and per model, with their defaults) are read from the method's
:class:`~weightspace.merge.methods.MergeMethod` entry, so a method registered
in :data:`~weightspace.merge.MERGE_METHODS` is accepted here as it is.

Every problem raises :class:`MergeConfigError` whose message starts
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
from weightspace.merge.methods import MERGE_METHODS, MergeMethod, merge
from weightspace.registry import Entry, Registry

logger = logging.getLogger(__name__)

__all__ = [
    "ALIGN_METHODS",
    "NO_ALIGNMENT",
    "ArchitectureConfig",
    "MergeConfig",
    "MergeConfigError",
    "ModelEntry",
    "load_merge_config",
    "method_names",
]

ALIGN_METHODS: Registry[Entry] = Registry("alignment method", (
    Entry("weight", "weightspace.align.weight_matching:weight_matching",
          "permute each model's neurons to match the reference's weights (data-free)",
          reference="Ainsworth et al. 2023, Git Re-Basin, ICLR 2023"),
    Entry("activation", "weightspace.align.activation_matching:activation_matching",
          "permute each model's neurons to match the reference's activations on data",
          reference="Ainsworth et al. 2023, Git Re-Basin, ICLR 2023"),
), parameter="align")
"""How to bring the models into one frame before merging (``align`` of a
config, besides :data:`NO_ALIGNMENT`). The implementations are imported on
first use, so that reading a config does not import the alignment package."""

#: The ``align`` value that merges the models as they are.
NO_ALIGNMENT = "none"

#: mergekit's name of a global parameter -> the merge function's parameter.
PARAMETER_ALIASES = {"lambda": "scaling"}

DTYPES = ("float32", "float64", "float16", "bfloat16")

_TOP_LEVEL = ("merge_method", "models", "base_model", "parameters", "architecture", "align",
              "repair", "data", "dtype")


def method_names() -> dict[str, tuple[MergeMethod, dict[str, Any]]]:
    """Every ``merge_method`` value a config accepts: each registered method's
    name and its aliases (mergekit's ``linear``, ``dare_ties`` …) -> (method,
    the parameters the name fixes). Read from :data:`MERGE_METHODS` on every
    call, so that a method registered later is accepted."""
    out: dict[str, tuple[MergeMethod, dict[str, Any]]] = {}
    for entry in MERGE_METHODS.entries():
        out[entry.name] = (entry, {})
        for alias, fixed in entry.aliases.items():
            out[alias] = (entry, dict(fixed))
    return out


def _global_names(entry: MergeMethod) -> tuple[str, ...]:
    """The keys a config's ``parameters`` may hold for ``entry``."""
    names = [p.name for p in entry.global_parameters()]
    aliases = [alias for alias, target in PARAMETER_ALIASES.items() if target in names]
    return ("weight", *names, *aliases)


class MergeConfigError(WeightspaceError):
    """An invalid merge config; the message starts with the file and names the field."""


@dataclass(frozen=True)
class ModelEntry:
    """One model to merge.

    Attributes:
        model: its checkpoint (absolute path).
        weight: its weight (the global ``weight``, else 1).
        parameters: the per-model parameters it sets itself (``density`` …;
            see :meth:`MergeMethod.model_parameters`).
    """

    model: Path
    weight: float = 1.0
    parameters: Mapping[str, Any] = field(default_factory=dict)


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
        merge_method: a name of :data:`~weightspace.merge.MERGE_METHODS` (an
            alias such as mergekit's ``dare_ties`` is stored as its method).
        models: the models to merge (the base model excluded).
        base_model: the base of the task vectors (``None`` for ``average``).
        parameters: global method parameters under the merge function's
            names (``scaling`` for mergekit's ``lambda``) — only those given
            or fixed by the method's name.
        architecture: how to build the module, if given.
        align: a name of :data:`ALIGN_METHODS` or :data:`NO_ALIGNMENT`.
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
        ``weights``, the global parameters, and each per-model parameter as
        one value per model when any model sets its own (the others take the
        global value, else the function's default)."""
        entry = MERGE_METHODS.get(self.merge_method, parameter="merge_method")
        kwargs: dict[str, Any] = {"weights": list(self.weights)}
        kwargs.update({k: v for k, v in self.parameters.items() if k not in entry.per_model})
        for name in entry.per_model:
            if any(name in m.parameters for m in self.models):
                default = self.parameters.get(name, entry.parameter(name).default)
                kwargs[name] = [m.parameters.get(name, default) for m in self.models]
            elif name in self.parameters:
                kwargs[name] = self.parameters[name]
        return kwargs

    def merge(self, states: Sequence[Mapping[str, Tensor]],
              base: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Merge ``states`` (one per entry of :attr:`models`, in order) and
        ``base`` with this config's method and parameters; cast to
        :attr:`dtype` when set."""
        if len(states) != len(self.models):
            raise WeightspaceError(f"{self.path}: the config lists {len(self.models)} models "
                                   f"but {len(states)} state dicts were given",
                                   parameter="states")
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
            "models": [{"model": str(m.model),
                        "parameters": {"weight": m.weight, **m.parameters}}
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

    def parameter(self, entry: MergeMethod, name: str, value: Any, field_name: str) -> Any:
        """``value`` of the method's parameter ``name``, validated by the method."""
        if isinstance(value, (list, tuple)):
            raise self.error(field_name, "per-layer lists (mergekit gradients) are not "
                                         "supported; give one value")
        try:
            return entry.check(name, value)
        except WeightspaceError as err:
            raise self.error(field_name, str(err)) from None

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
    resolved against the YAML file's folder and must exist. The accepted
    methods and their parameters are read from
    :data:`~weightspace.merge.MERGE_METHODS`.

    Raises:
        MergeConfigError: unreadable file, invalid YAML, or an invalid field;
            the message starts with the file and names the field.
    """
    path = Path(path)
    reader = _Reader(path)
    raw = _read_mapping(reader)
    name, entry, fixed = _method(reader, raw)
    global_params = reader.mapping(raw.get("parameters") or {}, "parameters")
    if "models" not in raw:
        raise reader.error("models", "is required: a list of {model: PATH, parameters: {...}}")
    reader.known_keys(global_params, _global_names(entry), "parameters",
                      f" for merge_method {name}")
    entries = _models(reader, raw["models"], entry, name, global_params)
    base_model, entries = _base_model(reader, raw, entry, name, entries)
    parameters = _global_parameters(reader, global_params, entry, name, fixed)
    _check_weights(reader, entries, entry, name, parameters)
    align, repair, data = _align_repair_data(reader, raw, entry, len(entries))
    dtype = raw.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise reader.error("dtype", f"must be one of {', '.join(DTYPES)}, got {_describe(dtype)}")
    architecture = None
    needs_trace = align != NO_ALIGNMENT or repair
    if raw.get("architecture") is not None:
        architecture = _architecture(reader, raw["architecture"], needs_trace)
    elif needs_trace or data is not None:
        uses = [u for u, on in (("align", align != NO_ALIGNMENT), ("repair", repair),
                                ("data", data is not None)) if on]
        raise reader.error("architecture", f"is required by {', '.join(uses)} (the checkpoints "
                                           f"are state dicts; the module must be built)")
    config = MergeConfig(path=path, merge_method=entry.name, models=tuple(entries),
                         base_model=base_model, parameters=parameters,
                         architecture=architecture, align=align, repair=repair, data=data,
                         dtype=dtype)
    logger.debug("loaded merge config %s: %s of %d models", path, entry.name, len(entries))
    return config


def _read_mapping(reader: _Reader) -> dict:
    """The YAML file's top-level mapping, with only known fields."""
    path = reader.path
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
    return raw


def _method(reader: _Reader, raw: Mapping) -> tuple[str, MergeMethod, dict[str, Any]]:
    """``(the name as written, the method, the parameters the name fixes)``."""
    names = method_names()
    if "merge_method" not in raw:
        raise reader.error("merge_method", f"is required; one of {', '.join(MERGE_METHODS)}")
    name = reader.string(raw["merge_method"], "merge_method")
    if name not in names:
        raise reader.error("merge_method", f"unknown method {name!r}; expected one of "
                                           f"{', '.join(names)}")
    entry, fixed = names[name]
    return name, entry, fixed


def _models(reader: _Reader, items: Any, entry: MergeMethod, name: str,
            global_params: Mapping) -> list[ModelEntry]:
    """The ``models`` list: paths that exist and the parameters each sets."""
    if not isinstance(items, list) or not items:
        raise reader.error("models", f"must be a non-empty list, got {_describe(items)}")
    default_weight = (reader.number(global_params["weight"], "parameters.weight")
                      if "weight" in global_params else 1.0)
    entries: list[ModelEntry] = []
    for i, item in enumerate(items):
        where = f"models[{i}]"
        if isinstance(item, str):
            item = {"model": item}
        item = reader.mapping(item, where)
        reader.known_keys(item, ("model", "parameters"), where)
        if "model" not in item:
            raise reader.error(f"{where}.model", "is required (the checkpoint path)")
        model_path = reader.file(item["model"], f"{where}.model")
        params = reader.mapping(item.get("parameters") or {}, f"{where}.parameters")
        reader.known_keys(params, entry.model_parameters(), f"{where}.parameters",
                          f" for merge_method {name}")
        weight = (reader.number(params["weight"], f"{where}.parameters.weight")
                  if "weight" in params else default_weight)
        own = {key: reader.parameter(entry, key, value, f"{where}.parameters.{key}")
               for key, value in params.items() if key != "weight"}
        entries.append(ModelEntry(model_path, weight, own))
    return entries


def _base_model(reader: _Reader, raw: Mapping, entry: MergeMethod, name: str,
                entries: list[ModelEntry]) -> tuple[Path | None, list[ModelEntry]]:
    """The base model (required exactly by methods on task vectors) and the
    models without it (mergekit lists the base among the models)."""
    base_model = None
    if raw.get("base_model") is not None:
        if not entry.needs_base:
            with_base = [e.name for e in MERGE_METHODS.entries() if e.needs_base]
            raise reader.error("base_model", f"merge_method {name} does not use a base model; "
                                             f"use {', '.join(with_base)} for task vectors")
        base_model = reader.file(raw["base_model"], "base_model")
    elif entry.needs_base:
        raise reader.error("base_model", f"is required by merge_method {name} (task vectors "
                                         f"are differences to the base model)")
    if base_model is not None:
        kept = [e for e in entries if e.model != base_model]
        if len(kept) < len(entries):
            logger.debug("%s: the base model is also listed in models; skipped as a model",
                         reader.path)
        entries = kept
    if not entries:
        raise reader.error("models", "lists no model besides the base model")
    return base_model, entries


def _global_parameters(reader: _Reader, given: Mapping, entry: MergeMethod, name: str,
                       fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The global parameters under the function's names (``lambda`` ->
    ``scaling``), validated, plus those the method's name fixes."""
    for alias, target in PARAMETER_ALIASES.items():
        if alias in given and target in given:
            raise reader.error(f"parameters.{alias}", f"give either {target} or {alias} (the "
                                                      f"same thing), not both")
    parameters: dict[str, Any] = {}
    for key, value in given.items():
        if key == "weight":
            continue  # the models' default weight, read with the models
        target = PARAMETER_ALIASES.get(key, key)
        value = reader.parameter(entry, target, value, f"parameters.{key}")
        if target in fixed and fixed[target] != value:
            raise reader.error(f"parameters.{key}", f"contradicts merge_method {name}")
        parameters[target] = value
    parameters.update(fixed)
    return parameters


def _check_weights(reader: _Reader, entries: Sequence[ModelEntry], entry: MergeMethod,
                   name: str, parameters: Mapping[str, Any]) -> None:
    if entry.needs_positive_weights(parameters):
        for i, model in enumerate(entries):
            if model.weight <= 0:
                raise reader.error(f"models[{i}].parameters.weight",
                                   f"must be positive for merge_method {name}, got "
                                   f"{model.weight}")
    if entry.normalises_weights and abs(sum(e.weight for e in entries)) < 1e-12:
        raise reader.error("models", f"the weights sum to zero; {name} divides by their total")


def _align_repair_data(reader: _Reader, raw: Mapping, entry: MergeMethod,
                       num_models: int) -> tuple[str, bool, str | Path | None]:
    align = raw.get("align", NO_ALIGNMENT)
    if align is None or align is False:
        align = NO_ALIGNMENT
    choices = (*ALIGN_METHODS.names(), NO_ALIGNMENT)
    if align not in choices:
        raise reader.error("align", f"must be one of {', '.join(choices)}, got "
                                    f"{_describe(align)}")
    repair = reader.boolean(raw["repair"], "repair") if "repair" in raw else False
    if repair and (entry.name != "average" or num_models != 2):
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
    return align, repair, data


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
