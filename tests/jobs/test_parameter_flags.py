"""Library errors name parameters; the CLI maps each to its flag in one
table. Every parameter a job can name has a flag there (the table itself,
and the error line it drives, are tested in tests/cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import weightspace.jobs
from weightspace.cli._common import PARAMETER_FLAGS

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
