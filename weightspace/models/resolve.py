"""Resolve a model name (the CLI's ``--model``) to a module: a built-in family or user code.

``MODEL`` is a built-in family's short name (``mlp``, ``cnn`` …), an importable
``package.module:callable``, or a file ``path/to/file.py:callable``. The
callable (a class or a factory) is called with the keyword arguments of
``--model-args``. This imports *your own* model code; checkpoints are loaded
separately and never run code (:mod:`weightspace.io`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.registry import BUILTIN_MODELS, build_model, default_input_shape


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``model_args`` JSON (the CLI's ``--model-args``) -> keyword arguments (``None``/empty -> ``{}``)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise WeightspaceError(
            f"model_args is not valid JSON ({err.msg} at column {err.colno}): {text}",
            parameter="model_args") from err
    if not isinstance(value, dict):
        raise WeightspaceError(
            f"model_args must be a JSON object such as '{{\"width\": 2}}', got {text}",
            parameter="model_args")
    return value


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``."""
    try:
        shape = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise WeightspaceError(
            f"input_shape must be comma-separated integers such as 1,3,32,32, got {text!r}",
            parameter="input_shape") from None
    if not shape or any(s <= 0 for s in shape):
        raise WeightspaceError(
            f"input_shape must be positive integers with a batch axis first, got {text!r}",
            parameter="input_shape")
    return shape


def _load_callable(target: str) -> Any:
    location, _, attribute = target.rpartition(":")
    if not location or not attribute:
        raise WeightspaceError(
            f"model {target!r} is neither a built-in family ({', '.join(BUILTIN_MODELS)}) nor "
            f"MODULE:CALLABLE / FILE.py:CALLABLE", parameter="model")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise WeightspaceError(f"model file {location!r} does not exist", parameter="model")
        name = f"weightspace_user_model_{abs(hash(path.resolve()))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as err:
            raise WeightspaceError(f"model: cannot import module {location!r}: {err}",
                                   parameter="model") from err
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise WeightspaceError(f"model: {location!r} has no attribute {attribute!r}",
                                   parameter="model")
        obj = getattr(obj, part)
    if not callable(obj):
        raise WeightspaceError(f"model: {target!r} is not callable", parameter="model")
    return obj


def resolve_model(
    target: str, model_args: dict[str, Any] | None = None
) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Build the module named by ``target``.

    Returns:
        ``(module, default_input_shape)``; the shape is ``None`` for user code
        (give an input shape).
    """
    kwargs = dict(model_args or {})
    if target in BUILTIN_MODELS:
        return build_model(target, **kwargs), default_input_shape(target, **kwargs)
    factory = _load_callable(target)
    try:
        module = factory(**kwargs)
    except TypeError as err:
        raise WeightspaceError(f"model {target!r} rejected model_args {kwargs}: {err}",
                               parameter="model_args") from err
    if not isinstance(module, nn.Module):
        raise WeightspaceError(f"model {target!r} returned a {type(module).__name__}, not an "
                               f"nn.Module", parameter="model")
    return module, None
