"""Meta-pruning (Liu et al., "Meta-Pruning via Graph Metanetworks", 2025)
against plain structured magnitude pruning, on a digits-cnn zoo.

1. Take the trained networks (last checkpoint of every run) of one zoo group
   (one architecture), hold out ``--holdout`` good ones (test accuracy >=
   ``--min-accuracy``, chosen by a seeded shuffle of runs) and meta-train a
   :class:`~weightspace.prune.meta.MetaPruner` on the others
   (:func:`~weightspace.prune.meta.meta_train`: cross-entropy of the output
   networks on digits training images + λ · group lasso).
2. On each held-out network and each speed-up (ratio of MACs):

   * ``magnitude``: group-L2 importance of the original network, structured
     pruning to the speed-up, fine-tuning;
   * ``meta-<mode>``: the network through the pruner, the same pruning and
     the same fine-tuning (:func:`~weightspace.prune.meta.meta_prune`).

   Both use the same importance, scope, fine-tuning epochs, learning rate and
   data order.
3. Repeat for each of ``--seeds`` (its own held-out networks, pruner
   initialisation and data order) and print, per method and speed-up, the
   test accuracy before and after fine-tuning as mean ± std over seeds of
   the per-seed means, and the paired difference to the magnitude baseline;
   optionally plot accuracy against speed-up.

Usage::

    python tools/bench_prune_meta.py --zoo digits-cnn-full.h5 [--group cnn-tanh]
        [--modes edit,gate] [--speedups 1.5,2,3,4] [--holdout 8] [--epochs 60]
        [--sparsity-weight 0.01] [--finetune-epochs 10] [--seeds 0,1,2]
        [--json out.json] [--plot meta.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time

import numpy as np
import torch

from weightspace.classify import load_split
from weightspace.prune.meta import (
    MetaPruner,
    group_lasso,
    meta_prune,
    meta_train,
    prune_to_speedup,
    save_meta_pruner,
)
from weightspace.zoo import open_zoo, split_by_run

logger = logging.getLogger("bench_prune_meta")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _pick_group(zoo) -> str:
    """The group with the most trained networks."""
    counts = {name: len(zoo.select(group=name, last_checkpoint=True)) for name in zoo.groups}
    return max(counts, key=counts.get)


def _split(zoo, group: str, holdout: int, min_accuracy: float, train_min_accuracy: float | None,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): runs are shuffled with ``seed``; the
    held-out networks are the first ``holdout`` runs whose network reaches
    ``min_accuracy``; every other run trains the pruner."""
    trained = zoo.select(group=group, last_checkpoint=True)
    if "split" in zoo.columns:  # a zoo with its own split: hold out from its test part
        split = zoo.column("split", trained).astype(str)
        train_part, test_part = trained[split == "train"], trained[split != "train"]
    else:
        parts = split_by_run(zoo, trained, {"all": 1.0}, seed=seed)
        train_part = test_part = parts["all"]
    order = np.random.default_rng(seed).permutation(len(test_part))
    accuracy = zoo.column("test_accuracy", test_part)
    good = [int(test_part[i]) for i in order if accuracy[i] >= min_accuracy]
    if len(good) < holdout:
        raise SystemExit(f"only {len(good)} networks of {group} reach test accuracy "
                         f"{min_accuracy}; lower --min-accuracy or --holdout")
    held_out = np.array(sorted(good[:holdout]))
    train = np.setdiff1d(train_part, held_out)
    if train_min_accuracy is not None:
        train = train[zoo.column("test_accuracy", train) >= train_min_accuracy]
    return train, held_out


def _summary(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def run_seed(args, zoo, group: str, seed: int) -> dict:
    """Meta-train the pruners of one seed (its own held-out networks) and
    prune every held-out network with every method at every speed-up."""
    spec = zoo.group(group).spec
    model = zoo.group(group).model_def.build().eval()
    train_rows, held_out_rows = _split(zoo, group, args.holdout, args.min_accuracy,
                                       None if args.train_min_accuracy < 0
                                       else args.train_min_accuracy, seed)
    networks = zoo.params(train_rows).float()
    held_out = zoo.params(held_out_rows).float()
    data = load_split("digits", (1, *spec.input_shape))
    speedups = _floats(args.speedups)
    modes = [m for m in args.modes.split(",") if m]
    logger.info("seed %d, %s / %s: meta-training on %d networks, evaluating on %d held-out "
                "(rows %s)", seed, args.zoo, group, len(networks), len(held_out),
                held_out_rows.tolist())

    pruners, training = {}, {}
    for mode in modes:
        pruner = MetaPruner(spec, hidden=args.hidden, num_layers=args.layers, seed=seed,
                            mode=mode)
        t0 = time.perf_counter()
        history = meta_train(pruner, networks, spec, model, data, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr,
                             sparsity_weight=args.sparsity_weight,
                             sparsity_alpha=args.sparsity_alpha,
                             sparsity_ramp=args.sparsity_ramp, seed=seed,
                             progress=args.progress)
        with torch.no_grad():
            held_lasso = float((group_lasso(spec, pruner(held_out))
                                / group_lasso(spec, held_out)).mean())
        training[mode] = {"seconds": time.perf_counter() - t0, "first": history[0],
                          "last": history[-1], "held_out_group_lasso_ratio": held_lasso}
        logger.info("seed %d meta-%s: %.0f s, task loss %.3f -> %.3f, group lasso %.1f -> %.1f "
                    "(train), held-out output/input group lasso %.3f", seed, mode,
                    training[mode]["seconds"], history[0]["task_loss"],
                    history[-1]["task_loss"], history[-1]["input_group_lasso"],
                    history[-1]["group_lasso"], held_lasso)
        if args.save_pruner:
            save_meta_pruner(pruner, args.save_pruner.replace("MODE", mode)
                             .replace("SEED", str(seed)),
                             training={"zoo": str(args.zoo), "group": group, "seed": seed,
                                       **vars(args)})
        pruners[mode] = pruner

    methods = ["magnitude"] + [f"meta-{m}" for m in modes]
    results: dict[str, dict[str, list[dict]]] = {str(s): {m: [] for m in methods}
                                                 for s in speedups}
    common = dict(finetune_epochs=args.finetune_epochs, lr=args.finetune_lr,
                  importance=args.importance, scope=args.scope, seed=seed,
                  pre_finetune_epochs=args.pre_finetune_epochs)
    accuracy = zoo.column("test_accuracy", held_out_rows)
    for i, row in enumerate(held_out):
        state = spec.unflatten(row)
        for speedup in speedups:
            _, report = prune_to_speedup(model, spec, state, speedup, data, **common)
            report["accuracy_before"] = report["accuracy_metanet"] = float(accuracy[i])
            results[str(speedup)]["magnitude"].append(report)
            for mode in modes:
                _, report = meta_prune(pruners[mode], model, spec, state, speedup, data,
                                       **common)
                results[str(speedup)][f"meta-{mode}"].append(report)
    return {"seed": seed, "train_rows": train_rows.tolist(),
            "held_out_rows": held_out_rows.tolist(), "training": training, "results": results}


def _per_seed_means(runs: list[dict], speedup: str, method: str, key: str) -> list[float]:
    return [statistics.mean(r[key] for r in run["results"][speedup][method]) for run in runs]


def table(runs: list[dict], speedups: list[str], methods: list[str]) -> str:
    header = ("| speed-up (MACs) | method | original | after metanet | pruned | fine-tuned "
              "| Δ fine-tuned vs magnitude |")
    lines = [header, "|---" * 7 + "|"]
    for speedup in speedups:
        base = _per_seed_means(runs, speedup, "magnitude", "accuracy_finetuned")
        achieved = statistics.mean(r["speedup"] for run in runs
                                   for r in run["results"][speedup]["magnitude"])
        for method in methods:
            cells = [_summary(_per_seed_means(runs, speedup, method, key))
                     for key in ("accuracy_before", "accuracy_metanet", "accuracy_pruned",
                                 "accuracy_finetuned")]
            tuned = _per_seed_means(runs, speedup, method, "accuracy_finetuned")
            diff = [a - b for a, b in zip(tuned, base, strict=True)]
            delta = "-" if method == "magnitude" else (
                f"{statistics.mean(diff):+.4f}" + (f" ± {statistics.stdev(diff):.4f}"
                                                   if len(diff) > 1 else ""))
            lines.append(f"| {float(speedup):g}× ({achieved:.2f}×) | {method} | "
                         + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


def plot(runs: list[dict], speedups: list[str], methods: list[str], path: str,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = [float(s) for s in speedups]
    for ax, key, label in ((axes[0], "accuracy_pruned", "pruned, before fine-tuning"),
                           (axes[1], "accuracy_finetuned", "after fine-tuning")):
        for method in methods:
            values = [_per_seed_means(runs, s, method, key) for s in speedups]
            means = [statistics.mean(v) for v in values]
            stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=method)
        ax.set_xlabel("reduction of multiply-accumulates (×)")
        ax.set_ylabel("test accuracy")
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", required=True, help="a zoo of trained classifiers (.h5)")
    parser.add_argument("--group", default=None, help="zoo group (default: most trained runs)")
    parser.add_argument("--modes", default="edit,gate", help="meta-pruner modes to compare")
    parser.add_argument("--speedups", default="2,3")
    parser.add_argument("--holdout", type=int, default=5, help="held-out networks per seed (>= 3)")
    parser.add_argument("--min-accuracy", type=float, default=0.8,
                        help="test accuracy a held-out network must have")
    parser.add_argument("--train-min-accuracy", type=float, default=0.5,
                        help="test accuracy a training network must have (-1: all)")
    parser.add_argument("--epochs", type=int, default=60, help="meta-training epochs")
    parser.add_argument("--batch-size", type=int, default=5, help="networks per meta step")
    parser.add_argument("--lr", type=float, default=3e-3, help="meta-training learning rate")
    parser.add_argument("--sparsity-weight", type=float, default=0.01)
    parser.add_argument("--sparsity-alpha", type=float, default=0.0,
                        help="DepGraph's importance-adaptive weighting of the group lasso")
    parser.add_argument("--sparsity-ramp", type=float, default=0.0,
                        help="fraction of meta-training over which λ grows from 0")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--importance", default="l2")
    parser.add_argument("--scope", default="space")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--pre-finetune-epochs", type=int, default=0,
                        help="fine-tuning before pruning (the metanetwork's output; the "
                             "baseline's network gets the same)")
    parser.add_argument("--seeds", default="0", help="each seed: its own held-out networks, "
                                                     "pruner initialisation and data order")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-pruner", default=None,
                        help="save each trained pruner here (MODE and SEED replaced)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="write accuracy against speed-up here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    if args.holdout < 3:
        parser.error("--holdout must be at least 3")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    zoo = open_zoo(args.zoo)
    group = args.group or _pick_group(zoo)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs = [run_seed(args, zoo, group, seed) for seed in seeds]
    speedups = [str(s) for s in _floats(args.speedups)]
    methods = ["magnitude"] + [f"meta-{m}" for m in args.modes.split(",") if m]
    wall = time.perf_counter() - start

    print(f"zoo {args.zoo}, group {group}: per seed {len(runs[0]['train_rows'])} training "
          f"networks and {args.holdout} held-out (test accuracy >= {args.min_accuracy}); "
          f"meta: {args.epochs} epochs, λ={args.sparsity_weight}, α={args.sparsity_alpha}, ramp {args.sparsity_ramp}, "
          f"lr={args.lr}, GMN {args.hidden}x{args.layers}; fine-tuning "
          f"{args.pre_finetune_epochs} epochs before and {args.finetune_epochs} after pruning "
          f"at lr {args.finetune_lr}; importance {args.importance}, scope {args.scope}")
    for mode in (m for m in args.modes.split(",") if m):
        seconds = statistics.mean(r["training"][mode]["seconds"] for r in runs)
        ratio = [r["training"][mode]["held_out_group_lasso_ratio"] for r in runs]
        print(f"meta-{mode}: trained in {seconds:.0f} s per seed; held-out output/input group "
              f"lasso {_summary(ratio)}")
    print(table(runs, speedups, methods))
    print(f"(test accuracy on digits: per seed the mean over its {args.holdout} held-out "
          f"networks, then mean ± std over seeds {seeds}; Δ is paired per seed; wall time "
          f"{wall:.0f} s on {platform.processor() or 'cpu'}, {args.threads} thread(s))")
    out = {"args": vars(args), "group": group, "runs": runs, "wall_seconds": wall}
    if args.plot:
        plot(runs, speedups, methods, args.plot,
             f"{args.zoo.rsplit('/', 1)[-1]} / {group}: magnitude vs meta-pruning, "
             f"{len(seeds)} seeds × {args.holdout} held-out networks")
        print(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2, default=float)
    return out


if __name__ == "__main__":
    main()
