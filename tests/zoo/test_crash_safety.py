"""A writer killed at random moments leaves a zoo that opens, verifies and
holds exactly the rows committed so far; re-running resumes to the same zoo
as an uninterrupted run, without duplicates."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from tests.zoo.zoo_helpers import mlp_row
from weightspace.zoo import Zoo
from weightspace.zoo.ops import verify_zoo
from weightspace.zoo.writer import journal_path, read_journal

ROWS = 60

WRITER = textwrap.dedent(f"""
    import sys
    from tests.zoo.zoo_helpers import mlp_row
    from weightspace.zoo import ZooWriter
    with ZooWriter(sys.argv[1], commit_rows=3, commit_seconds=0.0) as writer:
        print("ready", flush=True)
        for i in range({ROWS}):
            if not writer.has(mlp_row(i).key):
                writer.extend([mlp_row(i)])
""")


def _start(path: Path) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                               env=env, cwd=root)
    assert process.stdout.readline().strip() == b"ready"
    return process


def _check_rows(path: Path) -> set[str]:
    """Every committed row is intact and equal to what was written for its key."""
    keys: set[str] = set()
    if path.exists():
        assert verify_zoo(path).ok
        with Zoo(path) as zoo:
            for index, key in enumerate(zoo.column("key")):
                i = int(key[3:6])
                expected = mlp_row(i).params
                got = zoo.state_dict(index)
                assert all(torch.equal(got[k], expected[k]) for k in expected), key
            keys = set(zoo.column("key").tolist())
            assert len(keys) == len(zoo)
    if journal_path(path).exists():
        for row in read_journal(journal_path(path)):
            assert int(row.key[3:6]) < ROWS
    return keys


def test_killed_writer_resumes_without_loss_or_duplicates(tmp_path):
    path = tmp_path / "zoo.h5"
    rng = random.Random(0)
    committed: list[int] = []
    for _ in range(3):
        process = _start(path)
        time.sleep(rng.uniform(0.05, 0.4))
        process.send_signal(signal.SIGKILL)
        process.wait()
        keys = _check_rows(path)
        assert len(keys) >= (committed[-1] if committed else 0)  # nothing committed is lost
        committed.append(len(keys))
        for stray in tmp_path.glob(".zoo.h5.*.tmp"):
            stray.unlink()  # a copy being committed when killed; never read
    process = _start(path)
    assert process.wait(timeout=120) == 0
    keys = _check_rows(path)
    assert keys == {mlp_row(i).key for i in range(ROWS)}
    assert not journal_path(path).exists()
    with Zoo(path) as zoo:
        assert len(zoo) == ROWS


def test_torn_journal_record_is_dropped_and_whole_ones_replayed(tmp_path):
    from weightspace.zoo import ZooWriter

    path = tmp_path / "zoo.h5"
    writer = ZooWriter(path, commit_rows=1000)
    writer.extend([mlp_row(0), mlp_row(1)])
    writer.extend([mlp_row(2)])
    # Simulate a kill: the writer never commits; its last record is torn.
    journal = journal_path(path).read_bytes()
    journal_path(path).write_bytes(journal + journal[: len(journal) // 3])
    assert not path.exists()
    with ZooWriter(path) as resumed:
        assert resumed.num_rows == 3
    with Zoo(path) as zoo:
        assert zoo.column("key").tolist() == ["run000/epoch0", "run001/epoch0", "run002/epoch0"]
        np.testing.assert_array_equal(zoo.params(2).numpy(),
                                      torch.cat([v.flatten() for v in
                                                 mlp_row(2).params.values()]).numpy())
