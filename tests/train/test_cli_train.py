"""``weightspace train`` (and tools/train_metanet.py) as a user runs them."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from weightspace.cli import main
from weightspace.train import load_config

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model_args={hidden: 8, num_layers: 1}", "batch_size=8", "warmup_steps=1"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "weightspace", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_train_json_subprocess(tiny_zoo, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--zoo", str(tiny_zoo), "--model", "statnn", "--epochs", "1",
                   "--out", str(out), "--json", *SMALL, "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert "config" not in summary
    assert summary["model"] == "statnn" and summary["task"] == "classify"
    assert set(summary["test"]) == {"loss", "accuracy"} and 0 <= summary["test"]["accuracy"] <= 1
    assert summary["epochs_run"] == 1
    assert summary["test"] == pytest.approx(json.loads((out / "metrics.json").read_text())["test"])
    config = load_config(out / "config.yaml")
    assert config.model_args == {"hidden": 8, "num_layers": 1} and config.batch_size == 8
    assert config.progress is False  # --json: no progress bars


def test_train_text_output_in_process(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--zoo", str(tiny_zoo), "--model", "statnn", "--epochs", "1",
                 "--out", str(out), "--seed", "2", "-q", "--device", "cpu", *SMALL])
    assert code == 0
    printed = capsys.readouterr().out
    assert "statnn" in printed and "test:" in printed and "accuracy" in printed
    assert str(out) in printed
    assert load_config(out / "config.yaml").seed == 2


def test_config_file_options_and_overrides(tiny_zoo, tmp_path, capsys):
    """--config YAML, then the options, then KEY=VALUE overrides."""
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"zoo": str(tiny_zoo), "model": "gmn", "epochs": 3, "seed": 5,
                                    "device": "cpu", "out": str(tmp_path / "from-yaml"),
                                    "model_args": {"hidden": 8, "num_layers": 1}}))
    out = tmp_path / "run"
    code = main(["train", "--config", str(path), "--model", "statnn", "--out", str(out), "--json",
                 "epochs=1", "batch_size=8", "task=regress", "target=test_accuracy"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "statnn" and summary["seed"] == 5 and summary["epochs_run"] == 1
    assert {"kendall_tau", "r2"} <= set(summary["test"])
    assert not (tmp_path / "from-yaml").exists()


def test_resume_flag(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--zoo", str(tiny_zoo), "--model", "statnn", "--out", str(out), "--json",
            "--device", "cpu", *SMALL]
    assert main([*args, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs_run"] == 2


def test_an_earlier_run_is_not_replaced_without_resume(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--zoo", str(tiny_zoo), "--model", "statnn", "--out", str(out), "--json",
            "--device", "cpu", "--epochs", "1", *SMALL]
    assert main(args) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(out) in err and "--resume" in err and "--out" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    for word in ("--zoo", "--model", "--config", "--resume", "--json", "KEY=VALUE", "torchrun"):
        assert word in printed


def test_bad_override(tiny_zoo, tmp_path, capsys, monkeypatch):
    """tools/train_metanet.py (which is `weightspace train`): the exit code
    and the one-line error of an unknown setting."""
    monkeypatch.setattr(sys, "argv", ["train_metanet.py", "--zoo", str(tiny_zoo),
                                      "--out", str(tmp_path / "run"), "foo=1"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "tools" / "train_metanet.py"), run_name="__main__")
    assert info.value.code in (1, 2)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("weightspace train: error:") and "'foo'" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, word", [("epochs=0", "epochs"), ("task=segment", "task"),
                                            ("model=resnet", "resnet"), ("lr=fast", "lr")])
def test_bad_values_in_process(tiny_zoo, tmp_path, capsys, override, word):
    code = main(["train", "--zoo", str(tiny_zoo), "--out", str(tmp_path / "run"), "-q", override])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0] and err[0].startswith("weightspace train: error:")


def test_missing_zoo(tmp_path, capsys):
    code = main(["train", "--zoo", str(tmp_path / "absent.h5"), "--model", "statnn", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "-q"])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.h5" in err[0] and err[0].startswith("weightspace train: error:")


def test_no_zoo(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "-q"]) == 1
    assert "no zoo" in capsys.readouterr().err


def test_bad_task_choice(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--task", "segment"])
    assert info.value.code == 2
    assert "segment" in capsys.readouterr().err
