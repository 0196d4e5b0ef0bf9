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
3. Print mean ± std of the test accuracy per method and speed-up, before and
   after fine-tuning, and the paired difference to the magnitude baseline.

Usage::

    python tools/bench_prune_meta.py --zoo /tmp/z/cnn-small.h5 [--group cnn-silu]
        [--modes edit,gate] [--speedups 2,3] [--holdout 5] [--epochs 150]
        [--sparsity-weight 0.01] [--finetune-epochs 10] [--json out.json]
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

from weightspace.data import load_digits_split
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="/tmp/z/cnn-small.h5")
    parser.add_argument("--group", default=None, help="zoo group (default: most trained runs)")
    parser.add_argument("--modes", default="edit,gate", help="meta-pruner modes to compare")
    parser.add_argument("--speedups", default="2,3")
    parser.add_argument("--holdout", type=int, default=5, help="held-out networks (>= 3)")
    parser.add_argument("--min-accuracy", type=float, default=0.8,
                        help="test accuracy a held-out network must have")
    parser.add_argument("--train-min-accuracy", type=float, default=0.5,
                        help="test accuracy a training network must have (-1: all)")
    parser.add_argument("--epochs", type=int, default=150, help="meta-training epochs")
    parser.add_argument("--batch-size", type=int, default=5, help="networks per meta step")
    parser.add_argument("--lr", type=float, default=3e-3, help="meta-training learning rate")
    parser.add_argument("--sparsity-weight", type=float, default=0.01)
    parser.add_argument("--sparsity-alpha", type=float, default=0.0,
                        help="DepGraph's importance-adaptive weighting of the group lasso")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--importance", default="l2")
    parser.add_argument("--scope", default="space")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--pre-finetune-epochs", type=int, default=0,
                        help="fine-tuning before pruning (the metanetwork's output; the "
                             "baseline's network gets the same)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-pruner", default=None,
                        help="save each trained pruner here (MODE replaced by its mode)")
    parser.add_argument("--json", default=None)
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
    spec = zoo.group(group).spec
    model = zoo.group(group).model_def.build().eval()
    train_rows, held_out_rows = _split(zoo, group, args.holdout, args.min_accuracy,
                                       None if args.train_min_accuracy < 0
                                       else args.train_min_accuracy, args.seed)
    networks = zoo.params(train_rows).float()
    held_out = zoo.params(held_out_rows).float()
    data = load_digits_split()
    speedups = _floats(args.speedups)
    modes = [m for m in args.modes.split(",") if m]
    logger.info("%s / %s: meta-training on %d networks, evaluating on %d held-out (rows %s)",
                args.zoo, group, len(networks), len(held_out), held_out_rows.tolist())

    pruners, training = {}, {}
    for mode in modes:
        pruner = MetaPruner(spec, hidden=args.hidden, num_layers=args.layers, seed=args.seed,
                            mode=mode)
        t0 = time.perf_counter()
        history = meta_train(pruner, networks, spec, model, data, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr,
                             sparsity_weight=args.sparsity_weight,
                             sparsity_alpha=args.sparsity_alpha, seed=args.seed,
                             progress=args.progress)
        with torch.no_grad():
            held_lasso = float((group_lasso(spec, pruner(held_out))
                                / group_lasso(spec, held_out)).mean())
        training[mode] = {"seconds": time.perf_counter() - t0, "first": history[0],
                          "last": history[-1], "held_out_group_lasso_ratio": held_lasso}
        logger.info("meta-%s: %.0f s, task loss %.3f -> %.3f, group lasso %.1f -> %.1f "
                    "(train), held-out output/input group lasso %.3f", mode,
                    training[mode]["seconds"], history[0]["task_loss"], history[-1]["task_loss"],
                    history[-1]["input_group_lasso"], history[-1]["group_lasso"], held_lasso)
        if args.save_pruner:
            save_meta_pruner(pruner, args.save_pruner.replace("MODE", mode),
                             training={"zoo": str(args.zoo), "group": group, **vars(args)})
        pruners[mode] = pruner

    methods = ["magnitude"] + [f"meta-{m}" for m in modes]
    results: dict[float, dict[str, list[dict]]] = {s: {m: [] for m in methods} for s in speedups}
    common = dict(finetune_epochs=args.finetune_epochs, lr=args.finetune_lr,
                  importance=args.importance, scope=args.scope, seed=args.seed,
                  pre_finetune_epochs=args.pre_finetune_epochs)
    for i, row in enumerate(held_out):
        state = spec.unflatten(row)
        for speedup in speedups:
            _, report = prune_to_speedup(model, spec, state, speedup, data, **common)
            report["accuracy_before"] = report["accuracy_metanet"] = float(
                zoo.column("test_accuracy", held_out_rows[i:i + 1])[0])
            results[speedup]["magnitude"].append(report)
            for mode in modes:
                _, report = meta_prune(pruners[mode], model, spec, state, speedup, data, **common)
                results[speedup][f"meta-{mode}"].append(report)

    header = (f"{'speed-up':>8}  {'method':<11} {'MACs':>7}  {'original':>15}  "
              f"{'after metanet':>15}  {'pruned':>15}  {'fine-tuned':>15}  "
              f"{'Δ fine-tuned vs magnitude':>26}")
    lines = [header, "-" * len(header)]
    for speedup in speedups:
        baseline = [r["accuracy_finetuned"] for r in results[speedup]["magnitude"]]
        for method in methods:
            reports = results[speedup][method]
            finetuned = [r["accuracy_finetuned"] for r in reports]
            diff = [a - b for a, b in zip(finetuned, baseline, strict=True)]
            delta = "-" if method == "magnitude" else (
                f"{statistics.mean(diff):+.4f} ± {statistics.stdev(diff):.4f}")
            lines.append(
                f"{speedup:>7.1f}x  {method:<11} {statistics.mean(r['speedup'] for r in reports):>6.2f}x"
                f"  {_summary([r['accuracy_before'] for r in reports]):>15}"
                f"  {_summary([r['accuracy_metanet'] for r in reports]):>15}"
                f"  {_summary([r['accuracy_pruned'] for r in reports]):>15}"
                f"  {_summary(finetuned):>15}  {delta:>26}")
    wall = time.perf_counter() - start
    print(f"zoo {args.zoo}, group {group}: {len(networks)} training networks, {len(held_out)} "
          f"held-out (test accuracy >= {args.min_accuracy}); meta: {args.epochs} epochs, "
          f"λ={args.sparsity_weight}, α={args.sparsity_alpha}, lr={args.lr}, GMN {args.hidden}x{args.layers}; "
          f"fine-tuning {args.pre_finetune_epochs} epochs before and {args.finetune_epochs} after "
          f"pruning at lr {args.finetune_lr}; "
          f"importance {args.importance}, scope {args.scope}")
    for mode, t in training.items():
        print(f"meta-{mode}: trained in {t['seconds']:.0f} s; output/input group lasso "
              f"{t['last']['group_lasso'] / t['last']['input_group_lasso']:.3f} (training "
              f"networks), {t['held_out_group_lasso_ratio']:.3f} (held-out)")
    print("\n".join(lines))
    print(f"(test accuracy on digits, mean ± std over {len(held_out)} held-out networks; Δ is "
          f"paired per network; wall time {wall:.0f} s on {platform.processor() or 'cpu'}, "
          f"{args.threads} thread(s))")
    out = {"args": vars(args), "group": group, "train_rows": train_rows.tolist(),
           "held_out_rows": held_out_rows.tolist(), "training": training,
           "results": {str(s): v for s, v in results.items()}, "wall_seconds": wall}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2, default=float)
    return out


if __name__ == "__main__":
    main()
