"""What every verb of the ``weightspace`` command shares.

* the model arguments (``--model``, ``--model-args``, ``--input-shape``) and
  :func:`model_and_spec`, which builds the model and traces its spec *once*
  (a verb never traces twice);
* the progress rule (:func:`show_progress`: bars only on a terminal, never
  with ``--quiet`` or ``--json``) and JSON output (:func:`print_json`);
* :data:`PARAMETER_FLAGS`, the one table from library parameter names to
  flags, and :func:`run_verb`, the one place where an error becomes a line;
* :func:`add_options` / :func:`options_from_args`: flags generated from a
  frozen options dataclass, as mergekit does with ``MergeOptions``;
* :class:`HelpFormatter`, which shows every option's default in ``--help``,
  and :func:`add_verbose_flag` (``-v`` before or after the verb).

Errors
------
Library errors speak of parameters (``WeightspaceError(message,
parameter="data")``), never of flags; only the CLI knows its flags. A
:class:`~weightspace.errors.WeightspaceError` (bad input: the message says
what to fix) or an :class:`OSError` (a missing or unreadable file) ends the
verb with one line on stderr and exit status :data:`EXIT_BAD_INPUT`:

=========================================  ====================================
error                                      line on stderr
=========================================  ====================================
``parameter`` in :data:`PARAMETER_FLAGS`   ``weightspace VERB: error: argument
                                           FLAG: MESSAGE``
otherwise                                  ``weightspace VERB: error: MESSAGE``
=========================================  ====================================

``argument FLAG:`` is argparse's own form, so a flag the library refused
reads like a flag argparse refused (argparse's usage errors exit with 2).
``MESSAGE`` is the first line of the error's message. ``FLAG`` is only
named when the verb has it: a parameter of a library call deep inside the
verb (``batch_size`` of activation matching under ``align``) is not a flag
the user gave. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from weightspace.errors import WeightspaceError

if TYPE_CHECKING:
    from torch import nn

    from weightspace.spec import WeightSpaceSpec

#: Exit status of bad input (argparse's usage errors exit with 2).
EXIT_BAD_INPUT = 1


class CLIError(WeightspaceError):
    """Bad input that the command line itself finds (a missing flag, flags
    that do not go together); it takes the same path as every library error."""


#: The flag (or positional argument) of each library parameter the CLI
#: passes on. A library error names the parameter at fault
#: (``WeightspaceError.parameter``); :func:`error_line` shows this flag, and
#: :func:`add_options` names a generated flag by it. A parameter that two
#: verbs spell differently (``zoo``: ``--zoo`` of train, ``ZOO`` of
#: train-pruner) is left out: its message names the file anyway.
PARAMETER_FLAGS: dict[str, str] = {
    "align": "--align",
    "base": "--base",
    "batch_size": "--batch-size",
    "checkpoint": "CHECKPOINT",
    "config": "--config",
    "data": "--data",
    "density": "--density",
    "device": "--device",
    "epochs": "--epochs",
    "finetune_epochs": "--finetune-epochs",
    "group": "--group",
    "hidden": "--hidden",
    "importance": "--importance",
    "input_shape": "--input-shape",
    "json_path": "--json-out",
    "last_checkpoint": "--last-checkpoint",
    "latency_batch": "--latency-batch",
    "lr": "--lr",
    "metanet": "--metanet",
    "method": "--method",
    "min_accuracy": "--min-accuracy",
    "mode": "--mode",
    "model": "--model",
    "model_args": "--model-args",
    "num_layers": "--layers",
    "on_error": "--on-error",
    "out": "--out",
    "output": "--output",
    "overwrite": "--overwrite",
    "paths": "CHECKPOINT",
    "plot": "--plot",
    "repair": "--repair",
    "rows": "--rows",
    "scaling": "--scaling",
    "scope": "--scope",
    "seed": "--seed",
    "shard": "--shard",
    "size": "--size",
    "sparsity": "--sparsity",
    "sparsity_alpha": "--sparsity-alpha",
    "sparsity_ramp": "--sparsity-ramp",
    "sparsity_weight": "--sparsity-weight",
    "speedup": "--speedup",
    "steps": "--steps",
    "structured": "--structured",
    "suffix": "--format",
    "target": "--target",
    "task": "--task",
    "weights": "--weights",
    "workers": "--workers",
}


# ------------------------------------------------------------------ errors
def verb_name(args: argparse.Namespace) -> str:
    """``"merge"``, ``"zoo merge"`` …: the verb as typed."""
    return " ".join(filter(None, [getattr(args, "command", None),
                                  getattr(args, "zoo_command", None)]))


def verb_flags(parser: argparse.ArgumentParser) -> frozenset[str]:
    """The flags of one verb's parser and the names of its positional arguments."""
    names = set()
    for action in parser._actions:
        names.update(action.option_strings or [action.metavar or action.dest])
    return frozenset(names)


def error_line(err: BaseException, verb: str, flags: frozenset[str] | None = None) -> str:
    """The one line that reports ``err`` (see the module docstring).

    Args:
        err: the error; its ``parameter`` (a :class:`WeightspaceError`'s)
            picks the flag from :data:`PARAMETER_FLAGS`.
        verb: the verb as typed (``"zoo merge"``).
        flags: the verb's flags (:func:`verb_flags`). A parameter whose flag
            the verb does not have (``batch_size`` of activation matching
            under ``align``) is not a flag the user gave: the message stands
            alone.
    """
    text = str(err)
    message = text.splitlines()[0] if text.strip() else type(err).__name__
    flag = PARAMETER_FLAGS.get(getattr(err, "parameter", None) or "")
    if flags is not None and flag not in flags:
        flag = None
    where = f"argument {flag}: " if flag else ""
    return f"weightspace {verb}: error: {where}{message}"


def report_error(args: argparse.Namespace, message: str) -> int:
    """Print ``message`` as the verb's one error line; return :data:`EXIT_BAD_INPUT`."""
    print(error_line(CLIError(message), verb_name(args)), file=sys.stderr)
    return EXIT_BAD_INPUT


def run_verb(args: argparse.Namespace) -> int:
    """Run the parsed verb (``args.func``); bad input becomes one line on stderr.

    ``args.verb_flags`` (set by ``build_parser`` for every verb) limits the
    flags an error line may name to the verb's own.

    Returns:
        the verb's exit status, or :data:`EXIT_BAD_INPUT` after a
        :class:`WeightspaceError` or :class:`OSError`. Anything else raises.
    """
    try:
        return int(args.func(args) or 0)
    except (WeightspaceError, OSError) as err:
        line = error_line(err, verb_name(args), getattr(args, "verb_flags", None))
        print(line, file=sys.stderr)
        return EXIT_BAD_INPUT


# ------------------------------------------------------------------ model + spec
def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model``, ``--model-args`` and ``--input-shape`` (read by :func:`model_and_spec`)."""
    from weightspace.models.registry import BUILTIN_MODELS

    parser.add_argument("--model", required=required,
                        help=f"a built-in family ({', '.join(BUILTIN_MODELS)}), "
                             f"package.module:callable, or path/to/file.py:callable")
    parser.add_argument("--model-args", default=None, metavar="JSON",
                        help='keyword arguments for the model as a JSON object, e.g. '
                             '\'{"width": 2}\'')
    parser.add_argument("--input-shape", default=None, metavar="SHAPE",
                        help="example input shape with the batch axis first, e.g. 1,3,32,32 "
                             "(built-in families have a default)")


@dataclass(frozen=True)
class ModelAndSpec:
    """The model named by the model arguments and its traced spec.

    Args:
        module: the built model (freshly initialised; verbs load checkpoints
            into it).
        spec: ``trace(module, input_shape)``.
    """

    module: nn.Module
    spec: WeightSpaceSpec


def model_and_spec(args: argparse.Namespace) -> ModelAndSpec:
    """Build the model of ``--model``/``--model-args`` and trace it once.

    Raises:
        CLIError: user code without ``--input-shape``.
        WeightspaceError: an unknown family, bad JSON, a bad shape, a model
            that cannot be traced.
    """
    from weightspace.models.resolve import parse_input_shape, parse_model_args, resolve_model
    from weightspace.spec import trace

    module, default_shape = resolve_model(args.model, parse_model_args(args.model_args))
    if args.input_shape:
        shape = parse_input_shape(args.input_shape)
    elif default_shape is not None:
        shape = default_shape
    else:
        raise CLIError(f"--input-shape is required for --model {args.model!r} "
                       f"(e.g. --input-shape 1,3,32,32)")
    return ModelAndSpec(module, trace(module, shape))


# ------------------------------------------------------------------ output
def add_output_flags(parser: argparse.ArgumentParser, json_help: str,
                     quiet_help: str | None = None) -> None:
    """``--json`` and, for verbs with progress bars, ``-q/--quiet``."""
    parser.add_argument("--json", action="store_true", help=json_help)
    if quiet_help is not None:
        parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, and never with --quiet or --json."""
    return not getattr(args, "quiet", False) and not getattr(args, "json", False) \
        and sys.stderr.isatty()


def print_json(value: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Print ``value`` (a job's report is printed as its ``to_dict()``) as
    indented JSON on stdout (``default`` as in :func:`json.dumps`)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    print(json.dumps(value, indent=2, default=default))


# ------------------------------------------------------------------ help
class HelpFormatter(argparse.HelpFormatter):
    """``--help`` that ends an option's help with ``(default X)``.

    Unlike :class:`argparse.ArgumentDefaultsHelpFormatter` it says nothing of
    an option without a default (``None``, an off switch, an empty list), and
    nothing twice where the help already names its default (the flags
    :func:`add_options` generates, or a text such as "default: from the
    config").
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # identity, not ==: 0 and 0.0 are defaults to show; False (an off switch) is not
        nothing = default is None or default is False or default is argparse.SUPPRESS \
            or (isinstance(default, list | tuple) and not default)
        if not action.option_strings or nothing or "default" in text:
            return action.help
        return f"{text} (default %(default)s)"


def add_verbose_flag(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """``-v/--verbose`` on the top-level parser and on every verb.

    A verb's flag defaults to :data:`argparse.SUPPRESS`, so a verb without
    ``-v`` keeps the top level's value: ``weightspace -v align ...`` and
    ``weightspace align ... -v`` both log.
    """
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=False if top_level else argparse.SUPPRESS,
                        help="log progress messages")


# ------------------------------------------------------------------ options dataclasses
_SCALARS = (bool, float, int, str)


def _flag_type(annotation: Any, where: str) -> tuple[type, bool]:
    """``(scalar type, takes several values)`` of an options field's annotation.

    ``X | None`` is ``X``; a union's members that a command line cannot spell
    (a loaded object only Python callers pass) are left out, and ``int |
    float`` is ``float``; a path type is ``str``; ``tuple[X, ...]`` and
    ``list[X]`` take several values.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = []
        for member in typing.get_args(annotation):
            try:
                kinds.append(_flag_type(member, where))
            except TypeError:
                pass  # None, or an object only Python callers pass
        many = any(several for _, several in kinds)
        for kind in (float, int, bool, str):
            if any(k is kind for k, _ in kinds):
                return kind, many
    elif origin in (tuple, list, Sequence):
        inner = {a for a in typing.get_args(annotation) if a is not Ellipsis}
        if len(inner) == 1:
            kind, nested = _flag_type(inner.pop(), where)
            if not nested:
                return kind, True
    elif annotation in _SCALARS:
        return annotation, False
    elif os.PathLike in (annotation, origin) or (isinstance(annotation, type)
                                                 and issubclass(annotation, PurePath)):
        return str, False
    raise TypeError(f"{where}: add_options cannot make a flag of type {annotation!r}; use "
                    f"bool, int, float, str, a path, X | None or tuple[X, ...]")


def _flag_help(field: dataclasses.Field, default: Any) -> str | None:
    text = field.metadata.get("help")
    if text is None or default is None or isinstance(default, bool) or "default" in text:
        return text
    return f"{text} (default {default})"


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                options_class: type, *, choices: Mapping[str, Sequence[Any]] | None = None,
                exclude: Sequence[str] = ()) -> None:
    """Add one flag per field of the options dataclass ``options_class``.

    The flag is the field's entry in :data:`PARAMETER_FLAGS`, else
    ``--field-name``; its type and default are the field's, its help
    ``metadata["help"]``. A ``bool`` that defaults to False is a switch
    (``store_true``); one that defaults to True is ``--flag/--no-flag``. A
    field without a default is a required flag; ``tuple[X, ...]`` takes one
    or more values. :func:`options_from_args` builds the instance.

    Args:
        parser: the verb's parser (or an argument group of it).
        options_class: a dataclass (frozen, by the library's convention).
        choices: allowed values per field name, read from the library's
            registries (never copied here).
        exclude: fields the verb sets itself (not flags).
    """
    choices = dict(choices or {})
    hints = typing.get_type_hints(options_class)
    for field in dataclasses.fields(options_class):
        if not field.init or field.name in exclude:
            continue
        flag = PARAMETER_FLAGS.get(field.name, "")
        if not flag.startswith("-"):  # not in the table, or a positional argument elsewhere
            flag = "--" + field.name.replace("_", "-")
        kind, many = _flag_type(hints[field.name], f"{options_class.__name__}.{field.name}")
        if field.default is not dataclasses.MISSING:
            default, required = field.default, False
        elif field.default_factory is not dataclasses.MISSING:
            default, required = field.default_factory(), False
        else:
            default, required = None, True
        kwargs: dict[str, Any] = {"dest": field.name, "default": default,
                                  "help": _flag_help(field, default)}
        if kind is bool and not many:
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
            parser.add_argument(flag, **kwargs)
            continue
        kwargs.update(type=kind, required=required)
        if many:
            kwargs["nargs"] = "+"
        if field.name in choices:  # usage shows {a,b,c}
            kwargs["choices"] = list(choices.pop(field.name))
        else:  # usage shows LAYERS for --layers, not the field's NUM_LAYERS
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        parser.add_argument(flag, **kwargs)
    if choices:
        raise TypeError(f"choices for {sorted(choices)}, which are not flags of "
                        f"{options_class.__name__}")


def options_from_args(args: argparse.Namespace, options_class: type, **values: Any) -> Any:
    """The ``options_class`` instance of the flags :func:`add_options` added.

    Args:
        args: the parsed arguments.
        options_class: the dataclass given to :func:`add_options`.
        values: fields the verb sets itself (those it excluded).
    """
    hints = typing.get_type_hints(options_class)
    for field in dataclasses.fields(options_class):
        if field.init and field.name not in values and hasattr(args, field.name):
            value = getattr(args, field.name)
            if isinstance(value, list) and typing.get_origin(hints[field.name]) is not list:
                value = tuple(value)
            values[field.name] = value
    return options_class(**values)


__all__ = [
    "EXIT_BAD_INPUT",
    "PARAMETER_FLAGS",
    "CLIError",
    "HelpFormatter",
    "ModelAndSpec",
    "add_model_arguments",
    "add_options",
    "add_output_flags",
    "add_verbose_flag",
    "error_line",
    "model_and_spec",
    "options_from_args",
    "print_json",
    "report_error",
    "run_verb",
    "show_progress",
    "verb_flags",
    "verb_name",
]
