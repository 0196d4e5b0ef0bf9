"""Results: barriers between independently trained digits models, naive and
aligned, and MergeMany of several models against the models and their
ensemble.

For each architecture, ``2 * pairs`` models are trained from different seeds
on scikit-learn's digits; for each pair the loss and accuracy barriers along
the 25-point linear path are measured:

* naive (no alignment);
* weight matching;
* activation matching (when ``weightspace.align.activation_matching`` exists);
* weight matching + REPAIR (layers without BatchNorm) / BN reset (BatchNorm
  models are always BN-reset at interior points, as a BN model's running
  statistics are meaningless after interpolation).

Reported as mean ± std over the pairs. Then MergeMany of ``--merge-many``
models of the first architecture against the individual models, their
logit ensemble and the naive average. Plots of pair 0 go to ``--plot-dir``.

Usage::

    python tools/bench_merge.py [--archs mlp3x512,cnn,resnet20x1,resnet20x4,resnet20x1-ln] [--pairs 3]
                                [--steps 25] [--merge-many 8] [--plot-dir docs/img] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from weightspace.align import merge_many, reset_batchnorm, weight_matching
from weightspace.align.batchnorm import batchnorm_modules
from weightspace.classify import evaluate, load_split, train_classifier
from weightspace.merge import average, barrier, interpolation_path, plot_barrier
from weightspace.models import build_model
from weightspace.spec import trace

ARCHS = {
    "mlp3x512": ("mlp", {"hidden": [512, 512, 512]}, (1, 64), 10, 1e-3),
    "cnn": ("cnn", {"channels": [32, 32, 32]}, (1, 1, 8, 8), 15, 3e-3),
    "resnet20x1": ("resnet20", {"width": 1, "norm": "batch"}, (1, 1, 8, 8), 8, 3e-3),
    "resnet20x4": ("resnet20", {"width": 4, "norm": "batch"}, (1, 1, 8, 8), 8, 3e-3),
    "resnet20x1-ln": ("resnet20", {"width": 1, "norm": "layer"}, (1, 1, 8, 8), 8, 3e-3),
}


def train_models(name: str, count: int, data) -> tuple[list[dict], torch.nn.Module]:
    family, args, _, epochs, lr = ARCHS[name]
    states = []
    for seed in range(count):
        torch.manual_seed(1000 + seed)
        model = train_classifier(build_model(family, **args), data, epochs=epochs, lr=lr,
                                 seed=seed)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return states, model


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def bench_arch(name: str, pairs: int, steps: int, plot_dir: Path | None) -> dict:
    family, args, shape, _, _ = ARCHS[name]
    data = load_split("digits", shape)
    start = time.perf_counter()
    states, model = train_models(name, 2 * pairs, data)
    train_seconds = time.perf_counter() - start
    spec = trace(model, shape)
    bn = data.x_train if bool(batchnorm_modules(model)) else None
    try:
        from weightspace.align.activation_matching import activation_matching
    except ImportError:
        activation_matching = None
    curves_by_method: dict[str, list] = {}
    endpoints = [evaluate(model, data.x_test, data.y_test, s)[1] for s in states]
    for pair in range(pairs):
        a, b = states[2 * pair], states[2 * pair + 1]
        common = dict(inputs=data.x_test, targets=data.y_test, steps=steps,
                      batchnorm_reset_inputs=bn)
        aligned = spec.permute(b, weight_matching(a, b, spec).permutation)
        curves = {"naive": interpolation_path(model, a, b, **common),
                  "weight matching": interpolation_path(model, a, aligned, **common)}
        if activation_matching is not None:
            act = spec.permute(b, activation_matching(model, a, b, spec,
                                                      data.x_train).permutation)
            curves["activation matching"] = interpolation_path(model, a, act, **common)
        curves["weight matching + REPAIR"] = interpolation_path(
            model, a, aligned, repair_inputs=data.x_train, spec=spec, **common)
        for method, curve in curves.items():
            curves_by_method.setdefault(method, []).append(curve)
        if plot_dir is not None and pair == 0:
            plot_barrier(curves, plot_dir / f"barrier-{name}.png",
                         title=f"{name} on digits: seeds {2 * pair} -> {2 * pair + 1}"
                               + (" (BN reset)" if bn is not None else ""))
    results = {}
    for method, curves in curves_by_method.items():
        values = [barrier(c) for c in curves]
        results[method] = {
            "loss_barrier": [v["loss_barrier"] for v in values],
            "accuracy_barrier": [v["accuracy_barrier"] for v in values],
            "midpoint_accuracy": [c[len(c) // 2]["accuracy"] for c in curves],
        }
    return {"arch": name, "family": family, "args": args, "parameters": spec.num_parameters,
            "pairs": pairs, "train_seconds": train_seconds, "batchnorm": bn is not None,
            "endpoint_accuracy": endpoints, "methods": results}


def bench_merge_many(name: str, count: int) -> dict:
    _, _, shape, _, _ = ARCHS[name]
    data = load_split("digits", shape)
    states, model = train_models(name, count, data)
    spec = trace(model, shape)
    individual = [evaluate(model, data.x_test, data.y_test, s) for s in states]
    with torch.no_grad():
        logits = torch.stack([torch.func.functional_call(model, s, (data.x_test,))
                              for s in states]).mean(0)
    ensemble = float((logits.argmax(1) == data.y_test).float().mean())
    start = time.perf_counter()
    result = merge_many(states, spec)
    seconds = time.perf_counter() - start
    merged = result.merged
    naive = average(states)
    if bool(batchnorm_modules(model)):
        for state_name in ("merged", "naive"):
            clone = copy.deepcopy(model)
            clone.load_state_dict(merged if state_name == "merged" else naive)
            reset_batchnorm(clone, data.x_train)
            fixed = {k: v.detach().clone() for k, v in clone.state_dict().items()}
            merged, naive = (fixed, naive) if state_name == "merged" else (merged, fixed)
    return {"arch": name, "models": count, "iterations": result.iterations,
            "seconds": seconds,
            "individual_accuracy": [acc for _, acc in individual],
            "ensemble_accuracy": ensemble,
            "merge_many_accuracy": evaluate(model, data.x_test, data.y_test, merged)[1],
            "naive_average_accuracy": evaluate(model, data.x_test, data.y_test, naive)[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="mlp3x512,cnn,resnet20x1")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--merge-many", type=int, default=8)
    parser.add_argument("--merge-many-arch", default="mlp3x512")
    parser.add_argument("--plot-dir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    plot_dir = Path(args.plot_dir) if args.plot_dir else None
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "archs": []}
    print(f"{'arch':<12} {'method':<26} {'loss barrier':>16} {'acc barrier (pts)':>18} "
          f"{'midpoint acc':>16}")
    for name in args.archs.split(","):
        result = bench_arch(name, args.pairs, args.steps, plot_dir)
        report["archs"].append(result)
        print(f"{name:<12} endpoints accuracy {mean_std(result['endpoint_accuracy'])}, "
              f"{result['parameters']} parameters, trained in {result['train_seconds']:.0f} s")
        for method, values in result["methods"].items():
            print(f"{'':<12} {method:<26} {mean_std(values['loss_barrier']):>16} "
                  f"{mean_std([100 * v for v in values['accuracy_barrier']]):>18} "
                  f"{mean_std(values['midpoint_accuracy']):>16}")
    if args.merge_many > 1:
        many = bench_merge_many(args.merge_many_arch, args.merge_many)
        report["merge_many"] = many
        print(f"MergeMany of {many['models']} {many['arch']} ({many['iterations']} iterations, "
              f"{many['seconds']:.1f} s): individual {mean_std(many['individual_accuracy'])}, "
              f"ensemble {many['ensemble_accuracy']:.3f}, MergeMany "
              f"{many['merge_many_accuracy']:.3f}, naive average "
              f"{many['naive_average_accuracy']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
