"""Library errors name parameters; the CLI maps each to its flag in one
table. Every parameter a job can name has a flag there."""

from __future__ import annotations

import ast
from pathlib import Path

import weightspace.jobs
from weightspace.cli import PARAMETER_FLAGS, build_parser, error_line, verb_flags
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
    verbs = ["align", "merge", "interpolate", "prune", "train-pruner", "train"]
    flags = set().union(*(verb_flags(parser, [verb]) for verb in verbs))
    for parameter, flag in PARAMETER_FLAGS.items():
        assert flag in flags, (parameter, flag)


def test_verb_flags():
    parser = build_parser()
    assert {"--sparsity", "--speedup", "--structured", "checkpoint"} <= \
        verb_flags(parser, ["prune"])
    assert "CHECKPOINT" in verb_flags(parser, ["merge"])
    assert "--shard" in verb_flags(parser, ["zoo", "build"])
    assert "--sparsity" not in verb_flags(parser, ["align"])


def test_error_line_shows_the_flag():
    err = WeightspaceError("align='activation' needs data\nsecond line", parameter="data")
    assert error_line(err) == "argument --data: align='activation' needs data"
    assert error_line(WeightspaceError("no parameter")) == "no parameter"
    assert error_line(WeightspaceError("unknown one", parameter="colour")) == "unknown one"
    # a verb without the flag shows the message alone
    assert error_line(err, {"--sparsity"}) == "align='activation' needs data"
    assert error_line(err, {"--data"}) == "argument --data: align='activation' needs data"
