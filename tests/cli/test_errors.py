"""The one error path: a library error becomes one line naming the flag of the
parameter at fault (exit 1, no traceback); anything else is a bug and keeps
its traceback. Run as processes on real files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from weightspace.cli._common import (
    EXIT_BAD_INPUT,
    CLIError,
    error_line,
    model_and_spec,
    run_verb,
    verb_name,
)
from weightspace.errors import WeightspaceError
from weightspace.io import save_state_dict
from weightspace.models import build_model

HIDDEN = [16, 8]
MODEL = ["--model", "mlp", "--model-args", json.dumps({"hidden": HIDDEN})]

# Library errors name parameters; the jobs raise
# ``WeightspaceError(..., parameter="data")`` for bad data. This runs the CLI
# with the data loader of the jobs attributing its (real) error to ``data``,
# so the test holds whichever job module reads the data.
ATTRIBUTE_DATA_ERRORS = """
import sys
import weightspace.classify as classify
from weightspace.errors import WeightspaceError

real_load_split = classify.load_split

def load_split(data, *args, **kwargs):
    try:
        return real_load_split(data, *args, **kwargs)
    except WeightspaceError as err:
        raise WeightspaceError(str(err), parameter="data") from err

classify.load_split = load_split
from weightspace.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(*args: str, script: str | None = None, cwd: Path | None = None
         ) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", script, *args] if script else \
        [sys.executable, "-m", "weightspace", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    state = build_model("mlp", hidden=HIDDEN).state_dict()
    return save_state_dict(state, tmp_path_factory.mktemp("mlp") / "mlp.safetensors")


def test_a_parameter_error_names_the_flag_in_one_line(checkpoint, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 64), np.float32))  # no y_train, x_test, y_test
    output = tmp_path / "never.safetensors"
    out = _run("prune", str(checkpoint), *MODEL, "--sparsity", "0.5", "--data", str(bad),
               "-o", str(output), script=ATTRIBUTE_DATA_ERRORS)
    assert out.returncode == EXIT_BAD_INPUT, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"weightspace prune: error: argument --data: {bad}: missing "
                               f"arrays"), lines[0]
    assert not output.exists()


def test_an_error_without_a_parameter_is_its_message(tmp_path):
    out = _run("zoo", "info", str(tmp_path / "absent.h5"))
    assert out.returncode == EXIT_BAD_INPUT
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weightspace zoo info: error: ")
    assert "absent.h5" in lines[0] and "argument" not in lines[0]


def test_any_other_exception_keeps_its_traceback(tmp_path):
    """A ValueError that is not a WeightspaceError is a bug (here in the
    user's model code), not bad input: it is not swallowed into a line."""
    (tmp_path / "net.py").write_text(
        "def make():\n    raise ValueError('a bug in the model code')\n")
    out = _run("inspect", "--model", "net.py:make", "--input-shape", "1,4", cwd=tmp_path)
    assert out.returncode != 0
    assert "Traceback (most recent call last)" in out.stderr
    assert "ValueError: a bug in the model code" in out.stderr


def test_error_line_forms():
    assert error_line(WeightspaceError("needs data", parameter="data"), "align") == \
        "weightspace align: error: argument --data: needs data"
    assert error_line(WeightspaceError("GMN layers", parameter="num_layers"), "train-pruner") \
        == "weightspace train-pruner: error: argument --layers: GMN layers"
    # a parameter the table does not know: the message alone
    assert error_line(WeightspaceError("bad", parameter="no_such"), "zoo merge") == \
        "weightspace zoo merge: error: bad"
    assert error_line(CLIError("first\nsecond"), "merge") == "weightspace merge: error: first"
    assert error_line(FileNotFoundError(2, "No such file", "x.pt"), "convert").endswith(
        "No such file: 'x.pt'")
    assert issubclass(CLIError, WeightspaceError)


@pytest.mark.parametrize("argv, parameter, flag", [
    (["train-pruner", "zoo.h5", "-o", "p.safetensors"], "batch_size", "--batch-size"),
    (["align", "a.pt", "b.pt", "--model", "mlp", "-o", "c.pt"], "batch_size", None),
    (["zoo", "export", "z.h5", "-o", "out"], "rows", "--rows"),
    (["zoo", "build", "digits-mlp", "-o", "z.h5"], "rows", None),
    (["prune", "c.pt", "--model", "mlp", "-o", "d.pt"], "checkpoint", "CHECKPOINT"),
    (["train", "--zoo", "z.h5"], "num_layers", None),
])
def test_only_a_flag_the_verb_has_is_named(argv, parameter, flag, capsys):
    """A parameter of a call deep inside a verb (activation matching's
    batch_size under align) is not a flag the user gave."""
    from weightspace.cli import build_parser

    args = build_parser().parse_args(argv)

    def func(_):
        raise WeightspaceError("the message", parameter=parameter)

    args.func = func
    assert run_verb(args) == EXIT_BAD_INPUT
    where = f"argument {flag}: " if flag else ""
    assert capsys.readouterr().err == f"weightspace {verb_name(args)}: error: {where}the message\n"


def test_run_verb_catches_only_bad_input(capsys):
    def verb(error: BaseException):
        def func(args):
            raise error
        return argparse.Namespace(command="inspect", func=func)

    assert run_verb(verb(WeightspaceError("no", parameter="seed"))) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "weightspace inspect: error: argument --seed: no\n"
    assert run_verb(verb(IsADirectoryError(21, "Is a directory", "d"))) == EXIT_BAD_INPUT
    for bug in (ValueError("plain"), KeyError("k"), RuntimeError("r")):
        with pytest.raises(type(bug)):
            run_verb(verb(bug))


def test_model_and_spec_builds_and_traces_once(monkeypatch):
    import weightspace.models.resolve as resolve
    import weightspace.spec as spec_module

    calls = {"resolve": 0, "trace": 0}
    real_resolve, real_trace = resolve.resolve_model, spec_module.trace

    def counting_resolve(*args, **kwargs):
        calls["resolve"] += 1
        return real_resolve(*args, **kwargs)

    def counting_trace(*args, **kwargs):
        calls["trace"] += 1
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(resolve, "resolve_model", counting_resolve)
    monkeypatch.setattr(spec_module, "trace", counting_trace)
    args = argparse.Namespace(model="mlp", model_args=json.dumps({"hidden": HIDDEN}),
                              input_shape=None)
    built = model_and_spec(args)
    assert calls == {"resolve": 1, "trace": 1}
    assert built.spec.num_parameters == sum(p.numel() for p in built.module.state_dict().values())
    with pytest.raises(CLIError, match="--input-shape is required"):
        model_and_spec(argparse.Namespace(model="torch.nn:Identity", model_args=None,
                                          input_shape=None))
