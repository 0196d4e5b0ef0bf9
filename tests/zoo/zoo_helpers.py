"""Small zoos for the zoo tests: untrained MLPs and SIRENs with seeded weights
(no training, so they are made in milliseconds)."""

from __future__ import annotations

from pathlib import Path

import torch

from weightspace.zoo import ModelDef, ZooRow, ZooWriter

MLP_DEF = ModelDef("mlp", {"in_features": 4, "hidden": [6], "out_features": 3}, (1, 4))
SIREN_DEF = ModelDef("siren", {"hidden": [8, 8]}, (1, 2))


def mlp_row(i: int, run: int | None = None, epoch: int = 0) -> ZooRow:
    """Row ``i``: an MLP whose weights depend only on ``i``."""
    torch.manual_seed(1000 + i)
    model = MLP_DEF.build()
    run = i if run is None else run
    return ZooRow(f"run{run:03d}/epoch{epoch}", "mlp", MLP_DEF, model.state_dict(),
                  {"run_id": f"run{run:03d}", "epoch": epoch, "label": i % 3,
                   "test_accuracy": 0.1 * (i % 10), "optimizer": "adam" if i % 2 else "sgd"})


def siren_row(i: int) -> ZooRow:
    torch.manual_seed(5000 + i)
    model = SIREN_DEF.build()
    return ZooRow(f"inr{i:03d}/view0", "siren", SIREN_DEF, model.state_dict(),
                  {"run_id": f"inr{i:03d}", "label": i % 3, "psnr": 20.0 + i})


def make_zoo(path: Path, mlp: int = 12, siren: int = 6, **writer_kwargs) -> Path:
    with ZooWriter(path, **writer_kwargs) as writer:
        writer.extend(mlp_row(i) for i in range(mlp))
        writer.extend(siren_row(i) for i in range(siren))
    return path
