"""The main job, end to end on built-in data (``weightspace demo``).

Builds a tiny zoo of small CNNs trained on scikit-learn's digits (the
``digits-cnn`` recipe: sampled hyperparameters, several checkpoints per run);
shows it and verifies its checksums; converts its rows to parameter graphs in
one batched gather; saves and reloads the graphs; and checks the two promises
everything else rests on: the graph round trip is exact, and a random
permutation of the hidden neurons leaves a network's predictions unchanged
while relabelling its graph.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightspace.classify import evaluate, train_classifier
from weightspace.data import load_digits_split
from weightspace.graph import load_graphs, save_graphs
from weightspace.models import build_model
from weightspace.spec import WeightSpaceSpec

log = logging.getLogger(__name__)


def run_demo(workdir: str | Path | None = None, recipe: str = "digits-cnn", size: str = "tiny",
             progress: bool = True) -> dict[str, Any]:
    """Run the main job; returns a report (the CLI prints it).

    1. build a ``tiny`` zoo from a recipe (networks trained on digits);
    2. describe it (:func:`~weightspace.zoo.zoo_info`) and verify its checksums;
    3. convert its largest group to one batched graph, save and reload it, and
       check the round trip graph -> parameters against the zoo rows;
    4. permute the hidden neurons of the best network: same predictions, and
       its graph is the original one with nodes relabelled;
    5. train two MLPs from different seeds, align them by weight matching,
       merge them, and write the loss/accuracy barrier plot (naive against
       aligned);
    6. build the ``tiny`` digits-INR zoo (one SIREN per digits image) and
       train a GMN (with probe features) and StatNN to classify the INRs
       (``configs/digits-inr-gmn.yaml`` / ``digits-inr-statnn.yaml``);
    7. prune the first MLP: remove neurons for a 2x reduction of
       multiply-accumulates, and zero 80 % of its weights, each fine-tuned
       briefly; accuracy, size and latency before and after.
    """
    from weightspace.zoo import Zoo, build_zoo, verify_zoo, zoo_info
    from weightspace.zoo.convert import convert_zoo

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="weightspace-demo-")
        workdir = tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        zoo_path = workdir / f"{recipe}-{size}.h5"
        build = build_zoo(recipe, zoo_path, size=size, progress=progress, overwrite=True)
        info = zoo_info(zoo_path)
        verified = verify_zoo(zoo_path)

        with Zoo(zoo_path) as zoo:
            group = max(zoo.groups.values(), key=lambda g: g.num_rows)
            spec: WeightSpaceSpec = group.spec
            t0 = time.perf_counter()
            batch, template, sources = convert_zoo(zoo_path, group=group.name, progress=progress)
            t_convert = time.perf_counter() - t0
            graph_path = save_graphs(workdir / "graphs.pt", batch, template, sources)
            loaded = load_graphs(graph_path)
            rows = zoo.select(group=group.name)
            exact = torch.equal(template.from_batch(loaded.batch), zoo.params(rows))

            # A random permutation changes the weights, not the function; the
            # permuted network's graph is the original with nodes relabelled.
            final = zoo.select(group=group.name, last_checkpoint=True)
            best = int(final[np.argmax(zoo.column("test_accuracy", final))])
            model = zoo.model(best)
            state = zoo.state_dict(best)
            data = load_digits_split(flat=group.model_def.family == "mlp")
            perm = spec.random_permutation(torch.Generator().manual_seed(0))
            permuted = spec.permute(state, perm)
            acc = evaluate(model, data.x_test, data.y_test, state)[1]
            acc_perm = evaluate(model, data.x_test, data.y_test, permuted)[1]
            moved = sum(int((state[k] != permuted[k]).sum()) for k in state)
            g = template.to_data(spec.flatten(state))
            gp = template.to_data(spec.flatten(permuted))
            relabelled = torch.equal(gp.x, g.x[template.node_permutation(perm)])
            recorded = float(zoo.column("test_accuracy", [best])[0])
            key = str(zoo.column("key", [best])[0])

        merging = _align_and_merge(workdir)
        metanetworks = _metanetworks(workdir, progress)
        pruning = _prune(workdir, merging["models"][0])

        return {
            "workdir": str(workdir) if tmp is None else None,
            "zoo": str(zoo_path) if tmp is None else None,
            "build": build.to_dict(),
            "info": info,
            "verified": verified.ok,
            "group": group.name,
            "spec": spec,
            "template": template,
            "batch": batch,
            "convert_seconds": t_convert,
            "graph_file": str(graph_path) if tmp is None else None,
            "round_trip_exact": exact,
            "permutation": {
                "checkpoint": key,
                "recorded_accuracy": recorded,
                "accuracy": acc,
                "accuracy_permuted": acc_perm,
                "values_moved": moved,
                "graph_relabelled": relabelled,
            },
            "merging": merging,
            "metanetworks": metanetworks,
            "pruning": pruning,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()


def configs_dir() -> Path:
    """The repository's ``configs/`` folder (training configurations)."""
    import weightspace

    return Path(weightspace.__file__).resolve().parents[1] / "configs"


def _metanetworks(workdir: Path, progress: bool) -> dict[str, Any]:
    """Tiny digits-INR zoo -> GMN and StatNN classifiers, their test scores."""
    from weightspace.train import load_config, train_metanetwork
    from weightspace.zoo import build_zoo

    zoo_path = workdir / "digits-inr-tiny.h5"
    build = build_zoo("digits-inr", zoo_path, size="tiny", progress=progress, overwrite=True)
    out: dict[str, Any] = {"zoo": str(zoo_path), "rows": build.rows_written, "models": {}}
    for name in ("gmn", "statnn"):
        config = load_config(configs_dir() / f"digits-inr-{name}.yaml", zoo=str(zoo_path),
                             out=str(workdir / f"digits-inr-{name}"), progress=progress)
        result = train_metanetwork(config)
        out["models"][name] = {"test": result.test, "parameters": result.num_parameters,
                               "graphs_per_second": result.graphs_per_second,
                               "seconds": result.wall_seconds, "rows": result.num_rows}
    return out


def _prune(workdir: Path, checkpoint: str, finetune_epochs: int = 3) -> dict[str, Any]:
    """One digits MLP pruned two ways (structured to a 2x MAC reduction, and
    80 % of its weights zeroed), both fine-tuned: the reports."""
    from weightspace.prune.pipeline import prune_checkpoint
    from weightspace.spec import trace

    model = build_model("mlp", hidden=[64, 64])
    spec = trace(model, (1, 64))
    return {
        "structured": prune_checkpoint(checkpoint, model, spec,
                                       workdir / "mlp-pruned-structured.safetensors",
                                       speedup=2.0, structured=True,
                                       finetune_epochs=finetune_epochs),
        "unstructured": prune_checkpoint(checkpoint, model, spec,
                                         workdir / "mlp-pruned-sparse.safetensors",
                                         sparsity=0.8, finetune_epochs=finetune_epochs),
    }


def _align_and_merge(workdir: Path, epochs: int = 8) -> dict[str, Any]:
    """Two digits MLPs from different seeds -> aligned, merged, barrier plot."""
    from weightspace.io import save_state_dict
    from weightspace.merge.pipeline import interpolate_checkpoints, merge_checkpoints
    from weightspace.spec import trace

    model_args = {"hidden": [64, 64]}
    data = load_digits_split(flat=True)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = train_classifier(build_model("mlp", **model_args), data, epochs=epochs, seed=seed)
        paths.append(save_state_dict(model.state_dict(), workdir / f"mlp-seed{seed}.safetensors"))
    spec = trace(model, (1, 64))
    merged = merge_checkpoints(paths, model, spec, workdir / "mlp-merged.safetensors",
                               data="digits")
    naive = merge_checkpoints(paths, model, spec, workdir / "mlp-merged-naive.safetensors",
                              align="none", data="digits")
    path = interpolate_checkpoints(paths[0], paths[1], model, spec, data="digits",
                                   plot=workdir / "barrier.png", json_path=workdir / "barrier.json")
    return {"models": [str(p) for p in paths], "scores": merged["scores"],
            "naive_merged": naive["scores"]["merged"],
            "barriers": path["barriers"], "plot": path["plot"]}
