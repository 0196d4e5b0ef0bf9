"""Accuracy against sparsity and speed-up for every pruning method on digits
models (the pruning table and plots of docs/benchmarks.md).

For each architecture and seed a dense model is trained on scikit-learn's
digits; then, from that one dense model:

* unstructured: global magnitude, per-layer magnitude, per-weight Taylor and
  random masks at each sparsity, each fine-tuned ``--finetune-epochs`` with
  the mask applied; and iterative magnitude pruning with rewinding to the
  initialisation (lottery tickets, 20 % per round; every round retrains for
  the full ``--epochs``, a larger budget, reported as such) with its random
  re-initialisation control;
* structured: neurons removed by L1 / L2 group norm, BatchNorm γ (models
  with BatchNorm), first-order Taylor and random scores, to each target
  reduction of multiply-accumulates, fine-tuned the same way; the measured
  CPU latency of the pruned model is recorded too.

Usage::

    python tools/results_prune.py --archs mlp,vgg --seeds 0,1,2 \\
        --json results-prune.json --plot-dir docs/img

Prints one markdown table per architecture (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from weightspace.classify import evaluate, load_split, train_classifier
from weightspace.jobs import PruneOptions, prune_model
from weightspace.models import build_model
from weightspace.prune import count_macs, measure_latency
from weightspace.prune.lottery import iterative_magnitude_pruning
from weightspace.spec import trace

ARCHS = {
    # name: (family, model arguments, input shape, BatchNorm?)
    "mlp": ("mlp", {"hidden": [256, 256]}, (1, 64), False),
    "cnn": ("cnn", {"channels": [32, 32, 32]}, (1, 1, 8, 8), False),
    "vgg": ("vgg", {"width": 2}, (1, 1, 8, 8), True),
}
UNSTRUCTURED = {"magnitude (global)": ("magnitude", "global"),
                "magnitude (per layer)": ("magnitude", "layer"),
                "taylor": ("taylor", "global"), "random": ("random", "global")}
STRUCTURED = {"L1 norm": ("magnitude", "l1"), "L2 norm": ("magnitude", "l2"),
              "BN γ": ("magnitude", "bn"), "taylor": ("taylor", "l2"),
              "random": ("random", "l2")}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def run_arch(name: str, seed: int, args) -> list[dict]:
    family, model_args, shape, has_bn = ARCHS[name]
    data = load_split("digits", shape)
    torch.manual_seed(seed)
    init = build_model(family, **model_args)
    spec = trace(init, shape)
    dense = build_model(family, **model_args)
    dense.load_state_dict(init.state_dict())
    train_classifier(dense, data, epochs=args.epochs, seed=seed)
    example = torch.randn(args.latency_batch, *shape[1:])
    dense_latency = measure_latency(dense, example)
    dense_acc = evaluate(dense, data.x_test, data.y_test)[1]
    rows = [{"arch": name, "seed": seed, "kind": "dense", "method": "dense", "level": 0.0,
             "accuracy": dense_acc, "latency_ms": dense_latency, "macs": count_macs(spec)}]

    for sparsity in _floats(args.sparsities):
        for label, (method, scope) in UNSTRUCTURED.items():
            options = PruneOptions(sparsity=sparsity, method=method, scope=scope,
                                   finetune_epochs=args.finetune_epochs, seed=seed)
            out = prune_model(dense, spec, data, options)
            rows.append({"arch": name, "seed": seed, "kind": "unstructured", "method": label,
                         "level": sparsity,
                         "accuracy": evaluate(out.model, data.x_test, data.y_test)[1]})
    for speedup in _floats(args.speedups):
        for label, (method, importance) in STRUCTURED.items():
            if importance == "bn" and not has_bn:
                continue
            options = PruneOptions(speedup=speedup, structured=True, method=method,
                                   importance=importance, finetune_epochs=args.finetune_epochs,
                                   seed=seed)
            out = prune_model(dense, spec, data, options)
            rows.append({"arch": name, "seed": seed, "kind": "structured", "method": label,
                         "level": speedup, "sparsity": out.sparsity,
                         "macs": count_macs(out.spec),
                         "mac_reduction": count_macs(spec) / count_macs(out.spec),
                         "latency_speedup": dense_latency / measure_latency(out.model, example),
                         "accuracy": evaluate(out.model, data.x_test, data.y_test)[1]})
    if args.imp_rounds:
        # IMP starts from the same initialisation as the dense model
        lottery = iterative_magnitude_pruning(
            init, data, spec, rounds=args.imp_rounds, rate=0.2, rewind_epoch=0,
            epochs=args.epochs, seed=seed, random_reinit_control=True)
        for r in lottery.rounds[1:]:
            rows.append({"arch": name, "seed": seed, "kind": "unstructured",
                         "method": "IMP (lottery ticket)", "level": r.sparsity,
                         "accuracy": r.test_accuracy})
            rows.append({"arch": name, "seed": seed, "kind": "unstructured",
                         "method": "IMP mask, random re-init", "level": r.sparsity,
                         "accuracy": r.control_accuracy})
    return rows


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _group(rows: list[dict], arch: str, kind: str) -> dict[str, dict[float, list[dict]]]:
    out: dict[str, dict[float, list[dict]]] = {}
    for r in rows:
        if r["arch"] == arch and r["kind"] == kind:
            level = round(r["level"], 3)
            out.setdefault(r["method"], {}).setdefault(level, []).append(r)
    return out


def tables(rows: list[dict]) -> str:
    lines = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        dense = [r["accuracy"] for r in rows if r["arch"] == arch and r["kind"] == "dense"]
        lines.append(f"\n### {arch}: dense test accuracy {_summary(dense)}\n")
        un = _group(rows, arch, "unstructured")
        # one-shot methods at the asked sparsities; IMP at the sparsities its rounds reach
        for title, methods in (("unstructured", [m for m in un if not m.startswith("IMP")]),
                               ("lottery tickets", [m for m in un if m.startswith("IMP")])):
            if not methods:
                continue
            levels = sorted({lvl for m in methods for lvl in un[m]})
            lines.append(f"| {title} | " + " | ".join(f"{lvl:.0%} zero" for lvl in levels)
                         + " |")
            lines.append("|---" * (len(levels) + 1) + "|")
            for method in methods:
                by_level = un[method]
                cells = [_summary([r["accuracy"] for r in by_level[lvl]]) if lvl in by_level
                         else "" for lvl in levels]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
        st = _group(rows, arch, "structured")
        levels = sorted({lvl for m in st.values() for lvl in m})
        lines.append("")
        lines.append("| structured | " + " | ".join(f"{lvl:g}× fewer MACs" for lvl in levels)
                     + " |")
        lines.append("|---" * (len(levels) + 1) + "|")
        for method, by_level in st.items():
            cells = [_summary([r["accuracy"] for r in by_level[lvl]]) if lvl in by_level
                     else "" for lvl in levels]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        l2 = st.get("L2 norm", {})
        if l2:
            per_level = ", ".join(
                f"{lvl:g}× → {statistics.median(r['latency_speedup'] for r in l2[lvl]):.2f}×"
                for lvl in levels if lvl in l2)
            lines.append(f"\nMeasured CPU latency speed-up of the L2-pruned models "
                         f"(median over seeds): {per_level}")
    return "\n".join(lines)


def plots(rows: list[dict], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    for kind, xlabel in (("unstructured", "fraction of weights zero"),
                         ("structured", "reduction of multiply-accumulates (×)")):
        fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 4), squeeze=False)
        for ax, arch in zip(axes[0], archs, strict=True):
            dense = statistics.mean(r["accuracy"] for r in rows
                                    if r["arch"] == arch and r["kind"] == "dense")
            ax.axhline(dense, color="black", linestyle=":", label="dense")
            for method, by_level in _group(rows, arch, kind).items():
                levels = sorted(by_level)
                means = [statistics.mean(r["accuracy"] for r in by_level[lvl]) for lvl in levels]
                stds = [statistics.stdev([r["accuracy"] for r in by_level[lvl]])
                        if len(by_level[lvl]) > 1 else 0.0 for lvl in levels]
                ax.errorbar(levels, means, yerr=stds, marker="o", capsize=3, label=method)
            ax.set_title(f"{arch}: {kind} pruning")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"prune-{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="mlp,vgg", help=f"of {', '.join(ARCHS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    parser.add_argument("--speedups", default="1.5,2,3,4")
    parser.add_argument("--imp-rounds", type=int, default=13,
                        help="IMP rounds at 20 %% each (13 → 94.5 %% zero; 0 skips IMP)")
    parser.add_argument("--latency-batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write every row to this file")
    parser.add_argument("--from-json", default=None,
                        help="only print the tables (and plots) of a --json file")
    parser.add_argument("--plot-dir", default=None, help="write prune-*.png here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.from_json:  # tables and plots of an earlier run, nothing retrained
        rows = json.loads(Path(args.from_json).read_text())
        print(tables(rows))
        for path in plots(rows, Path(args.plot_dir)) if args.plot_dir else []:
            print(f"wrote {path}")
        return
    rows = []
    for arch in args.archs.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.perf_counter()
            rows += run_arch(arch, seed, args)
            print(f"# {arch} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(tables(rows))
    print(f"\nwall time {time.perf_counter() - start:.0f} s "
          f"({torch.get_num_threads()} torch threads)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    if args.plot_dir:
        for path in plots(rows, Path(args.plot_dir)):
            print(f"wrote {path}")
    assert all(math.isfinite(r["accuracy"]) for r in rows)


if __name__ == "__main__":
    main()
