"""Devices, and DistributedDataParallel training with two CPU processes
(gloo) started by torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightspace.train import resolve_device, setup_distributed, teardown_distributed
from weightspace.train.distributed import Distributed

ROOT = Path(__file__).resolve().parents[2]


def test_resolve_device_auto():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_resolve_device_cuda_without_cuda(name):
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(name)


def test_resolve_device_bad_name():
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu7")


def test_single_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    d = setup_distributed("cpu")
    try:
        assert (d.rank, d.world_size, d.local_rank) == (0, 1, 0)
        assert not d.enabled and d.is_main and d.device == torch.device("cpu")
        assert d.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
        d.barrier()  # no process group: nothing to wait for
        assert not torch.distributed.is_initialized()
    finally:
        teardown_distributed()


def test_distributed_flags():
    other = Distributed(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    assert other.enabled and not other.is_main


def test_torchrun_two_cpu_processes(tiny_zoo, tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "tools" / "train_metanet.py"), "--zoo", str(tiny_zoo), "--model", "statnn",
               "--epochs", "1", "--out", str(out), "--json", "-q",
               "model_args={hidden: 8, num_layers: 1}", "batch_size=4", "warmup_steps=1"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # only rank 0 prints and writes
    summary = json.loads(proc.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["test"] == pytest.approx(metrics["test"])
    assert set(metrics["test"]) == {"loss", "accuracy"}
    assert metrics["epochs_run"] == 1 and metrics["graphs_per_second"] > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.yaml", "log.csv", "checkpoint.pt", "best.pt", "metrics.json"])
    with open(out / "log.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 1

    # 32 training rows dealt to 2 processes of 16: 4 batches of 4 each; the
    # checkpoint counts the graphs of both processes (all-reduced)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["train_graphs"] == 32
    assert metrics["num_rows"]["train"] == 32
