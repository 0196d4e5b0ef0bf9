"""The ``weightspace`` command: ``weightspace VERB [options]``.

Thin: each verb parses its arguments, makes one library call and prints the
result (``--json`` where programs read it). The verbs live in one module per
group, each registering its parsers with one ``add_parsers(sub)``:

=====================  ====================================================
module                 verbs
=====================  ====================================================
:mod:`.inspect`        ``inspect``, ``convert``
:mod:`.demo`           ``demo``
:mod:`.align`          ``align``, ``merge``, ``interpolate``
:mod:`.prune`          ``prune``, ``train-pruner``
:mod:`.zoo`            ``zoo build|info|verify|merge|export|import``
:mod:`.train`          ``train``
=====================  ====================================================

What they share (model arguments, the model and its spec built once,
progress, JSON, the parameter-to-flag table and the one error path) is in
:mod:`weightspace.cli._common`. Bad input ends a verb with one line on stderr
and exit status :data:`EXIT_BAD_INPUT`; argparse's usage errors exit with 2.

Every parser shows each option's default in ``--help``
(:class:`~weightspace.cli._common.HelpFormatter`), and ``-v/--verbose`` works
before the verb and after it (``weightspace align ... -v``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from weightspace import __version__
from weightspace.cli import align, demo, inspect, prune, train, zoo
from weightspace.cli._common import (
    EXIT_BAD_INPUT,
    CLIError,
    HelpFormatter,
    add_verbose_flag,
    run_verb,
    verb_flags,
)

#: Verb groups in the order ``weightspace --help`` lists them.
_VERB_GROUPS = (inspect, demo, align, prune, zoo, train)


def build_parser() -> argparse.ArgumentParser:
    """The ``weightspace`` parser with every verb."""
    parser = argparse.ArgumentParser(
        prog="weightspace",
        description="Neural networks as data: weight-space specs, parameter graphs, symmetries.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"weightspace {__version__}",
                        help="print the version and exit")
    add_verbose_flag(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _VERB_GROUPS:
        group.add_parsers(sub)
    _set_verb_flags(parser)
    return parser


def _set_verb_flags(parser: argparse.ArgumentParser) -> None:
    """Give every verb (``zoo build`` … included) its own flags as
    ``args.verb_flags``, so an error line names only a flag the verb has;
    give every parser the defaults-showing help and every verb ``-v``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb in action.choices.values():
                # argparse does not pass formatter_class on to subparsers
                verb.formatter_class = HelpFormatter
                if any(isinstance(a, argparse._SubParsersAction) for a in verb._actions):
                    _set_verb_flags(verb)  # a verb group (zoo): its verbs have the flags
                else:
                    add_verbose_flag(verb)
                    verb.set_defaults(verb_flags=verb_flags(verb))


def _put_working_directory_on_path() -> None:
    """Let ``--model mypkg.nets:make_net`` (and recipes named by module) import
    user code from the current directory, as ``python -m weightspace`` does:
    the console script has its own ``bin/`` folder as ``sys.path[0]`` instead."""
    working_directory = os.getcwd()
    if not {"", working_directory} & {os.path.abspath(p) if p else p for p in sys.path}:
        sys.path.insert(0, working_directory)


def main(argv: list[str] | None = None) -> int:
    """Run ``weightspace`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    _put_working_directory_on_path()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return run_verb(args)


__all__ = ["EXIT_BAD_INPUT", "CLIError", "build_parser", "main"]
