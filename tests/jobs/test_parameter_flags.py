"""Library errors name parameters; the CLI maps each to its flag in one
table. Every parameter a job can name has a flag there."""

from __future__ import annotations

import ast
from pathlib import Path

import weightspace.jobs
from weightspace.cli import PARAMETER_FLAGS, build_parser, error_line
from weightspace.errors import WeightspaceError

JOBS = Path(weightspace.jobs.__file__).parent


def _named_parameters() -> set[str]:
    """Every ``parameter="..."`` literal in the job modules."""
    names = set()
    for path in JOBS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "parameter" \
                    and isinstance(node.value, ast.Constant):
                names.add(node.value.value)
    return names


def test_every_parameter_a_job_names_has_a_flag():
    named = _named_parameters()
    assert {"data", "sparsity", "metanet", "group"} <= named
    assert named <= set(PARAMETER_FLAGS), sorted(named - set(PARAMETER_FLAGS))


def test_every_flag_of_the_table_exists():
    parser = build_parser()
    options, metavars = set(), set()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            options.update(action.option_strings)
            if not action.option_strings and action.metavar:
                metavars.add(action.metavar)
            stack.extend(getattr(action, "choices", None).values()
                         if isinstance(getattr(action, "choices", None), dict) else ())
    for parameter, flag in PARAMETER_FLAGS.items():
        assert flag in options or flag in metavars, (parameter, flag)


def test_error_line_shows_the_flag():
    err = WeightspaceError("align='activation' needs data\nsecond line", parameter="data")
    assert error_line(err) == "argument --data: align='activation' needs data"
    assert error_line(WeightspaceError("no parameter")) == "no parameter"
    assert error_line(WeightspaceError("unknown one", parameter="colour")) == "unknown one"
