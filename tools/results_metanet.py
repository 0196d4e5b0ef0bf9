#!/usr/bin/env python
"""Reproduce the metanetwork results table: every model on every task, mean ±
std over seeds, with parameter counts, training throughput and wall time.

Tasks (zoo built with ``weightspace zoo build RECIPE -o FILE --size full``):

* ``inr-classify``: digits-inr, classify the digit (accuracy);
* ``generalisation``: digits-cnn, regress ``test_accuracy`` (Kendall τ, R²;
  split by training run);
* ``inr-edit``: digits-inr, output the INR of the dilated image (MSE of its
  image against the dilated image, on the [-1, 1] pixel scale). Printed
  with three references on the same test rows: the input INR unchanged, the
  mean edited training image for every input, and an INR refitted on the
  edited image by the zoo's recipe (the floor).

Usage::

    python tools/results_metanet.py --task inr-classify --zoo digits-inr-full.h5 \\
        [--models gmn,statnn,...] [--seeds 0,1,2] [--epochs 30] [--augment] \\
        [--set KEY=VALUE ...] [--json results.json] [--out runs/results]

Each row's command is printed with it; ``--augment`` adds the weight-space
augmentations the anchors recommend (hidden-neuron permutation for
non-equivariant models, SIREN bias shift and sign flip for INRs).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from weightspace.train import (
    edit_targets,
    load_config,
    refit_mse_floor,
    render,
    split_rows,
    train_metanetwork,
)
from weightspace.zoo import Zoo

TASKS = {
    "inr-classify": {"task": "classify", "target": "label", "split": "split", "score": "accuracy",
                     "metrics": ["accuracy"]},
    "generalisation": {"task": "regress", "target": "test_accuracy", "split": "run", "score": "kendall_tau",
                       "metrics": ["kendall_tau", "r2"]},
    "inr-edit": {"task": "edit", "target": "label", "split": "split", "score": "mse", "metrics": ["mse"]},
}

MODELS = {
    # name: (registry name, model_args, lr)
    "gmn": ("gmn", {"hidden": 32, "num_layers": 2, "probes": 64}, 3e-3),
    "gmn-noprobe": ("gmn", {"hidden": 48, "num_layers": 3}, 1e-3),
    "transformer": ("transformer", {"hidden": 32, "num_layers": 2, "probes": 64}, 3e-3),
    "transformer-noprobe": ("transformer", {"hidden": 32, "num_layers": 2}, 1e-3),
    "deepsets": ("deepsets", {}, 1e-3),
    "nfn-hnp": ("nfn-hnp", {}, 1e-3),
    "nfn-np": ("nfn-np", {}, 1e-3),
    "dwsnet": ("dwsnet", {}, 1e-3),
    "statnn": ("statnn", {}, 1e-3),
    "flat-mlp": ("flat-mlp", {}, 1e-3),
}

INVARIANT_ONLY = {"statnn", "deepsets"}


def augmentations(model: str, task: str) -> dict:
    out: dict = {}
    if model in ("flat-mlp",):
        out["permutation"] = {}
    if task in ("inr-classify", "inr-edit"):
        out["sign_flip"] = {"p": 0.5}
        out["siren_bias_shift"] = {}
    else:
        out["scaling"] = {}
    return out


def edit_references(zoo_path: str, seeds: list[int], overrides: list[str]) -> list[dict]:
    """MSE of the editing task's reference outputs, per seed's test rows."""
    zoo = Zoo(zoo_path)
    try:
        (group,) = zoo.groups.values()
        config = load_config(overrides=overrides, zoo=zoo_path, task="edit", split="split")
        edit = dict(config.edit or {})
        op, size = edit.get("op", "dilate"), int(edit.get("size", 3))
        targets = edit_targets(edit.get("data"), op, size)
        rows = np.arange(len(zoo))
        with torch.no_grad():
            images = render(group.model_def.build().double(), group.spec, zoo.params(rows).double(),
                            targets.coords.double())
        edited = targets.lookup(zoo.column("split", rows), zoo.column("image_index", rows)).double()
        identity, constant = [], []
        for seed in seeds:
            parts = split_rows(zoo, load_config(overrides=overrides, zoo=zoo_path, task="edit", split="split",
                                                seed=seed))
            test = parts["test"]
            identity.append(float(((images[test] - edited[test]) ** 2).mean()))
            mean_image = edited[parts["train"]].mean(0)
            constant.append(float(((mean_image - edited[test]) ** 2).mean()))
    finally:
        zoo.close()
    floor = refit_mse_floor(op, size, data=edit.get("data"))
    return [{"model": "input INR unchanged", "mse": (float(np.mean(identity)), float(np.std(identity)))},
            {"model": "mean edited training image", "mse": (float(np.mean(constant)), float(np.std(constant)))},
            {"model": "INR refitted on the edited image, 200 test images", "mse": (floor, 0.0)}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--models", default="gmn,transformer,nfn-hnp,nfn-np,dwsnet,statnn,flat-mlp,deepsets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    spec = TASKS[args.task]
    rows = []
    for name in args.models.split(","):
        if args.task == "inr-edit" and name in INVARIANT_ONLY:
            print(f"{name}: invariant only, no INR editing", flush=True)
            continue
        registry, model_args, lr = MODELS[name]
        runs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            values = dict(zoo=args.zoo, model=registry, model_args=dict(model_args), task=spec["task"],
                          target=spec["target"], split=spec["split"], epochs=args.epochs, lr=lr,
                          patience=args.patience, seed=seed, device=args.device, progress=False,
                          out=str(Path(args.out) / args.task / f"{name}{'-aug' if args.augment else ''}"
                                  / f"seed{seed}"))
            if args.augment:
                values["augment"] = augmentations(name, args.task)
            config = load_config(overrides=args.overrides, **values)
            result = train_metanetwork(config)
            runs.append(result)
            scores = ", ".join(f"{k} {result.test[k]:.4f}" for k in spec["metrics"])
            print(f"{name} seed {seed}: {scores} ({result.num_parameters:,} parameters, "
                  f"{result.graphs_per_second:.0f} graphs/s, {result.wall_seconds:.0f} s)", flush=True)
        command = " ".join(["python tools/results_metanet.py", "--task", args.task, "--zoo",
                            shlex.quote(args.zoo), "--models", name, "--seeds", args.seeds, "--epochs",
                            str(args.epochs), "--patience", str(args.patience)]
                           + (["--augment"] if args.augment else [])
                           + [f"--set {shlex.quote(o)}" for o in args.overrides])
        row = {"model": name, "augment": args.augment, "parameters": runs[0].num_parameters,
               "graphs_per_second": float(np.mean([r.graphs_per_second for r in runs])),
               "wall_seconds": float(np.mean([r.wall_seconds for r in runs])), "command": command}
        for metric in spec["metrics"]:
            values_ = [r.test[metric] for r in runs]
            row[metric] = (float(np.mean(values_)), float(np.std(values_)))
        rows.append(row)
    metrics = spec["metrics"]
    references = edit_references(args.zoo, [int(x) for x in args.seeds.split(",")], args.overrides) \
        if args.task == "inr-edit" else []
    print()
    print("| model | " + " | ".join(metrics) + " | parameters | train graphs/s | wall s / run |")
    print("|---|" + "---|" * (len(metrics) + 3))
    for row in rows:
        digits = 4 if "mse" in metrics else 3
        cells = [f"{row[m][0]:.{digits}f} ± {row[m][1]:.{digits}f}" if not math.isnan(row[m][0]) else "n/a"
                 for m in metrics]
        label = row["model"] + (" + aug" if row["augment"] else "")
        print(f"| {label} | " + " | ".join(cells)
              + f" | {row['parameters']:,} | {row['graphs_per_second']:.0f} | {row['wall_seconds']:.0f} |")
    for row in references:
        print(f"| {row['model']} (reference) | {row['mse'][0]:.4f} ± {row['mse'][1]:.4f} | - | - | - |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows + references, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
