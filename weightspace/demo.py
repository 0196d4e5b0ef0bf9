"""The main job, end to end on built-in data (``weightspace demo``).

Trains a few small CNNs on scikit-learn's digits from different seeds, saving
checkpoints along the way; traces the architecture into its weight-space spec;
converts every checkpoint to a parameter graph in one batched gather; saves
and reloads the graphs; and checks the two promises everything else rests on:
the graph round trip is exact, and a random permutation of the hidden neurons
leaves a network's predictions unchanged while relabelling its graph.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from weightspace.data import Split, load_digits_split
from weightspace.graph import convert_checkpoints, load_graphs, save_graphs
from weightspace.io import save_state_dict
from weightspace.models import build_model, default_input_shape
from weightspace.spec import WeightSpaceSpec, trace

log = logging.getLogger(__name__)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state_dict=None) -> float:
    model.eval()
    with torch.no_grad():
        out = model(x) if state_dict is None else functional_call(model, state_dict, (x,))
    return float((out.argmax(1) == y).float().mean())


def train_checkpoints(
    family: str,
    data: Split,
    out_dir: Path,
    seeds: int = 8,
    epochs: int = 4,
    model_args: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``seeds`` models of a built-in family, saving a checkpoint after
    every epoch as ``.safetensors``; returns one record per checkpoint."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(total=seeds * epochs, desc=f"training {family} on digits", unit="epoch",
               disable=not progress)
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = build_model(family, **(model_args or {}))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(seed)
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(data.y_train), generator=g)
            for start in range(0, len(order), 64):
                idx = order[start:start + 64]
                loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            path = out_dir / f"{family}_seed{seed}_epoch{epoch}.safetensors"
            save_state_dict(model.state_dict(), path)
            records.append({"path": str(path), "seed": seed, "epoch": epoch,
                            "test_accuracy": accuracy(model, data.x_test, data.y_test)})
            bar.update()
    bar.close()
    return records


def run_demo(workdir: str | Path | None = None, seeds: int = 8, epochs: int = 4,
             progress: bool = True) -> dict[str, Any]:
    """Run the main job; returns a report (the CLI prints it)."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="weightspace-demo-")
        workdir = tmp.name
    workdir = Path(workdir)
    try:
        data = load_digits_split()
        family = "cnn"
        t0 = time.perf_counter()
        records = train_checkpoints(family, data, workdir / "checkpoints", seeds, epochs,
                                    progress=progress)
        t_train = time.perf_counter() - t0

        model = build_model(family)
        spec: WeightSpaceSpec = trace(model, default_input_shape(family))

        t0 = time.perf_counter()
        batch, template, sources = convert_checkpoints(workdir / "checkpoints", spec, progress=progress)
        t_convert = time.perf_counter() - t0
        graph_path = save_graphs(workdir / "graphs.pt", batch, template, sources)
        loaded = load_graphs(graph_path)
        params = template.from_batch(loaded.batch)

        # exact round trip: every checkpoint file back from its graph
        from weightspace.io import load_state_dict

        exact = all(
            torch.equal(spec.flatten(load_state_dict(src)), params[i])
            for i, src in enumerate(loaded.sources)
        )
        # a random permutation changes the weights, not the function; the
        # permuted network's graph is the original graph with nodes relabelled
        final = max(records, key=lambda r: (r["epoch"], r["test_accuracy"]))
        state = load_state_dict(final["path"])
        perm = spec.random_permutation(torch.Generator().manual_seed(0))
        permuted = spec.permute(state, perm)
        acc = accuracy(model, data.x_test, data.y_test, state)
        acc_perm = accuracy(model, data.x_test, data.y_test, permuted)
        moved = sum(int((state[k] != permuted[k]).sum()) for k in state)
        g = template.to_data(spec.flatten(state))
        gp = template.to_data(spec.flatten(permuted))
        relabelled = torch.equal(gp.x, g.x[template.node_permutation(perm)])

        return {
            "workdir": str(workdir) if tmp is None else None,
            "family": family,
            "spec": spec,
            "template": template,
            "batch": batch,
            "checkpoints": records,
            "train_seconds": t_train,
            "convert_seconds": t_convert,
            "graph_file": str(graph_path) if tmp is None else None,
            "round_trip_exact": exact,
            "permutation": {
                "checkpoint": Path(final["path"]).name,
                "accuracy": acc,
                "accuracy_permuted": acc_perm,
                "values_moved": moved,
                "graph_relabelled": relabelled,
            },
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
