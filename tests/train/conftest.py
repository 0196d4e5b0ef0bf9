"""Tiny zoos for the metanetwork-training tests, written directly with
:class:`~weightspace.zoo.ZooWriter` (random, untrained weights: milliseconds),
built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from weightspace.train import load_config
from weightspace.train.config import TrainConfig
from weightspace.zoo import ModelDef, ZooRow, ZooWriter

# the digits-inr SIREN, narrowed (2 -> 8 -> 1): graphs of a few dozen nodes
SIREN_DEF = ModelDef("siren", {"in_features": 2, "hidden": [8], "out_features": 1,
                               "w0": 30.0, "w0_initial": 30.0}, (1, 2))
MLP_DEF = ModelDef("mlp", {"in_features": 3, "hidden": [5], "out_features": 2}, (1, 3))

TINY_MODEL = {"hidden": 8, "num_layers": 1}
"""``model_args`` of a metanetwork small enough for a CPU test."""


def siren_row(i: int, *, scale: float = 1.0, label: int | None = None, split: str = "train",
              image_index: int | None = None, run_id: str | None = None) -> ZooRow:
    """Row ``i``: a SIREN whose weights depend only on ``i`` (times ``scale``)."""
    torch.manual_seed(10_000 + i)
    state = {k: v * scale for k, v in SIREN_DEF.build().state_dict().items()}
    rng = np.random.default_rng(i)
    return ZooRow(f"inr{i:04d}", "siren", SIREN_DEF, state, {
        "run_id": run_id if run_id is not None else f"run{i:04d}",
        "label": int(i % 3 if label is None else label),
        "split": split,
        "image_index": int(i if image_index is None else image_index),
        "test_accuracy": float(rng.uniform()),
    })


def mlp_row(i: int) -> ZooRow:
    torch.manual_seed(20_000 + i)
    return ZooRow(f"mlp{i:04d}", "mlp", MLP_DEF, MLP_DEF.build().state_dict(),
                  {"run_id": f"mlp{i:04d}", "label": i % 3, "split": "train", "image_index": i,
                   "test_accuracy": 0.5})


def write_zoo(path: Path, rows) -> Path:
    with ZooWriter(path) as writer:
        writer.extend(rows)
    return path


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train_zoos")


@pytest.fixture(scope="session")
def tiny_zoo(zoo_dir) -> Path:
    """40 SIRENs, label = i % 3, one run each: 32 / 4 / 4 rows by run."""
    return write_zoo(zoo_dir / "tiny.h5", (siren_row(i) for i in range(40)))


@pytest.fixture(scope="session")
def scale_zoo(zoo_dir) -> Path:
    """120 SIRENs whose label is their scale class: weights times 0.1 (label 0)
    or times 1.0 (label 1) — an easy function of the weights."""
    return write_zoo(zoo_dir / "scale.h5",
                     (siren_row(i, scale=(0.1, 1.0)[i % 2], label=i % 2) for i in range(120)))


@pytest.fixture(scope="session")
def mixed_zoo(zoo_dir) -> Path:
    """Two groups (SIRENs and MLPs)."""
    return write_zoo(zoo_dir / "mixed.h5",
                     [*(siren_row(i) for i in range(12)), *(mlp_row(i) for i in range(12))])


@pytest.fixture(scope="session")
def edit_zoo(zoo_dir) -> Path:
    """SIRENs with ``split`` / ``image_index`` of digits images
    (``load_digits_split(seed=0)``): 12 train images, 8 test images (one run
    each, so the test images divide into val and test by run)."""
    rows = [siren_row(i, split="train", image_index=3 * i) for i in range(12)]
    rows += [siren_row(100 + i, split="test", image_index=5 * i) for i in range(8)]
    return write_zoo(zoo_dir / "edit.h5", rows)


@pytest.fixture
def make_config(tmp_path) -> Callable[..., TrainConfig]:
    """``make_config(zoo, **values)``: a small, quiet CPU config writing to a
    fresh directory under ``tmp_path``."""
    counter = iter(range(1000))

    def make(zoo: Path, **values: Any) -> TrainConfig:
        settings: dict[str, Any] = dict(
            zoo=str(zoo), model="statnn", model_args=dict(TINY_MODEL), epochs=1, batch_size=8,
            eval_batch_size=64, warmup_steps=1, device="cpu", progress=False,
            out=str(tmp_path / f"run{next(counter)}"))
        settings.update(values)
        return load_config(**settings)

    return make
