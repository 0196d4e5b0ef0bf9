"""The installed ``weightspace`` console script imports user model code from
the current directory, as ``python -m weightspace`` does.

A console script runs with its own ``bin/`` folder as ``sys.path[0]``, not the
current directory; ``weightspace inspect --model mypkg.nets:make_net`` from
the folder holding ``mypkg/`` once failed there with "No module named
'mypkg'". The test runs the very script pip writes for
``weightspace = weightspace.cli:main`` from another folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What pip writes to ``bin/weightspace`` for the console-script entry point.
CONSOLE_SCRIPT = textwrap.dedent("""\
    import sys
    from weightspace.cli import main
    if __name__ == '__main__':
        sys.argv[0] = sys.argv[0].removesuffix('.exe')
        sys.exit(main())
""")

USER_PACKAGE = textwrap.dedent("""\
    from torch import nn

    def make_net():
        return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
""")


@pytest.fixture()
def project(tmp_path):
    """A user's folder holding ``mypkg/nets.py``."""
    package = tmp_path / "project" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_PACKAGE)
    return package.parent


def _environment() -> dict[str, str]:
    # Only the package under test on the path: not the user's folder.
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("launch", ["console-script", "python-m"])
def test_model_from_the_current_directory(launch, project, tmp_path):
    if launch == "console-script":
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "weightspace").write_text(CONSOLE_SCRIPT)
        command = [sys.executable, str(bin_dir / "weightspace")]
    else:
        command = [sys.executable, "-m", "weightspace"]
    done = subprocess.run([*command, "inspect", "--model", "mypkg.nets:make_net",
                           "--input-shape", "1,3", "--json"], cwd=project,
                          env=_environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["num_parameters"] == 3 * 5 + 5 + 5 * 2 + 2
