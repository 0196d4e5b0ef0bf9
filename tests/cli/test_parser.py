"""The parser: every verb's ``--help``, choices read from the registries, and
the parameter-to-flag table against the flags that exist."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from weightspace.cli import build_parser, main
from weightspace.cli._common import PARAMETER_FLAGS


def _verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """``(words, parser)`` of every verb, ``zoo build`` … included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _verbs(sub, (*prefix, name)) if any(
                    isinstance(a, argparse._SubParsersAction) for a in sub._actions) else [
                    ((*prefix, name), sub)]


VERBS = [words for words, _ in _verbs(build_parser())]


def _action(words: tuple[str, ...], flag: str) -> argparse.Action:
    parser = dict(_verbs(build_parser()))[words]
    return next(a for a in parser._actions if flag in a.option_strings or a.dest == flag)


def test_the_verbs_are_all_there():
    assert {" ".join(v) for v in VERBS} == {
        "inspect", "convert", "demo", "align", "merge", "interpolate", "prune", "train-pruner",
        "train", "zoo build", "zoo info", "zoo verify", "zoo merge", "zoo export", "zoo import"}


@pytest.mark.parametrize("words", VERBS, ids=" ".join)
def test_every_verb_help_exits_0(words, capsys):
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    assert f"usage: weightspace {' '.join(words)}" in capsys.readouterr().out


def test_help_as_a_process():
    out = subprocess.run([sys.executable, "-m", "weightspace", "zoo", "import", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "usage: weightspace zoo import" in out.stdout


def test_choices_come_from_the_registries():
    from weightspace.jobs.prune import PRUNE_METHODS
    from weightspace.merge import MERGE_METHODS
    from weightspace.merge.config import ALIGN_METHODS, NO_ALIGNMENT
    from weightspace.nn.registry import METANETWORKS
    from weightspace.prune.meta import MODES
    from weightspace.train import TASKS
    from weightspace.zoo.importers import IMPORT_FORMATS
    from weightspace.zoo.recipes import SIZES

    expected = {
        (("merge",), "--method"): list(MERGE_METHODS),
        (("merge",), "--align"): [*ALIGN_METHODS, NO_ALIGNMENT],
        (("align",), "--method"): list(ALIGN_METHODS),
        (("train",), "--model"): list(METANETWORKS),
        (("train",), "--task"): list(TASKS),
        (("prune",), "--method"): list(PRUNE_METHODS),
        (("train-pruner",), "--mode"): list(MODES),
        (("zoo", "import"), "format"): list(IMPORT_FORMATS),
        (("zoo", "build"), "--size"): list(SIZES),
        (("demo",), "--size"): list(SIZES),
    }
    for (words, flag), names in expected.items():
        assert list(_action(words, flag).choices) == names, (words, flag)


def test_every_flag_of_the_table_exists():
    spelled = set()
    for _, parser in _verbs(build_parser()):
        for action in parser._actions:
            spelled.update(action.option_strings)
            if not action.option_strings and action.metavar:
                spelled.add(action.metavar)
    assert set(PARAMETER_FLAGS.values()) - spelled == set()


def test_every_option_of_every_verb_has_help_text():
    parser = build_parser()
    missing = [f"{' '.join(words)} {action.option_strings[0]}"
               for words, verb in [((), parser), *_verbs(parser)]
               for action in verb._actions
               if action.option_strings and not (action.help or "").strip()]
    assert not missing, missing


def test_help_shows_each_default_once_and_no_none(capsys):
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default average)" in text and "(default weight)" in text
    assert "order of the matching sweeps (and dare's random drops) (default 0)" in text
    assert "(default None)" not in text and "(default False)" not in text
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # prune's flags are generated (their help names the default already)
    assert "(default None)" not in text and "(default " in text
    assert not re.search(r"\(default [^)]*\)\s*\(default", text)


def test_version_and_verbose_after_the_verb(capsys):
    from weightspace import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"weightspace {__version__}"
    parser = build_parser()
    assert parser.parse_args(["-v", "zoo", "info", "z.h5"]).verbose
    assert parser.parse_args(["zoo", "info", "z.h5", "-v"]).verbose
    assert not parser.parse_args(["zoo", "info", "z.h5"]).verbose
    assert parser.parse_args(["align", "a", "b", "--model", "mlp", "-o", "c", "-v"]).verbose
