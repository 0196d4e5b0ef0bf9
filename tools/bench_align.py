"""Benchmark Git Re-Basin weight matching (weightspace.align.weight_matching).

For each model (random init; A and B independently initialised, two seed
pairs) it reports:

* ``total``: wall time of ``weight_matching`` (setup included), best of
  ``--repeats``; ``sweeps``; ``per sweep`` = total / sweeps;
* ``solves``: assignment problems solved / space visits (a visit is skipped
  when nothing its cost depends on changed since the space's last solve);
* ``unavoidable``: the same cost matrices' products plus the assignment solves
  (``torch.mm`` + ``linear_sum_assignment``) timed alone, replaying every solve
  of the run on recorded matrices; ``ratio`` = total / unavoidable. The
  replay recomputes every product, as a plain implementation must; the engine
  updates a large space's cost from its previous solve instead (``updated``:
  how many solves did), so the ratio can fall below 1;
* if the PyPI ``rebasin`` package is importable (``pip install --no-deps
  rebasin torchview graphviz``; it is not a dependency of weightspace): its
  ``PermutationCoordinateDescent.calculate_permutations`` time, sweeps, time
  per sweep and the per-sweep speed-up of weightspace over it. Its set-up
  (graph tracing) is not counted.

Usage::

    python tools/bench_align.py [--models mlp,resnet20_w1,resnet20_w4]
                                [--seeds 0,1] [--repeats 7] [--recompute]
                                [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import time

import torch

import weightspace
from weightspace.align.assignment import solve_assignment
from weightspace.align.weight_matching import weight_matching
from weightspace.models import MLP, resnet20

# the engine module (its incremental-update threshold is switched off by --recompute)
weight_matching_engine = importlib.import_module("weightspace.align._wm_engine")

MODELS = {
    "mlp": (lambda: MLP(in_features=784, hidden=(512, 512, 512)), (1, 784),
            "MLP 784-512-512-512-10"),
    "resnet20_w1": (lambda: resnet20(width=1, norm="batch", in_channels=3), (1, 3, 32, 32),
                    "ResNet-20 BN width 1"),
    "resnet20_w4": (lambda: resnet20(width=4, norm="batch", in_channels=3), (1, 3, 32, 32),
                    "ResNet-20 BN width 4"),
}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unavoidable(spec, record) -> float:
    """Time the recorded solves' products and assignments alone."""
    blocks = {s.name: s.permutation_blocks for s in spec.spaces}
    start = time.perf_counter()
    for name, acat, bcat, _ in record:
        cost = torch.mm(acat, bcat.T)
        solve_assignment(cost.to("cpu", torch.float64).numpy(), blocks[name])
    return time.perf_counter() - start


def _bench_rebasin(build, shape, seed_a, seed_b, max_sweeps, repeats=2):
    """Best of ``repeats`` runs of rebasin's coordinate descent (fresh object
    each time; its tracing set-up is not timed)."""
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        return None
    best = None
    for _ in range(repeats):
        torch.manual_seed(seed_a)
        model_a = build().eval()
        torch.manual_seed(seed_b)
        model_b = build().eval()
        x = torch.randn(shape)
        pcd = PermutationCoordinateDescent(model_a, model_b, x)
        count = [0]
        step = pcd._calculate_permutations_step

        def counted(loop, step=step, count=count):
            count[0] += 1
            return step(loop)

        pcd._calculate_permutations_step = counted
        torch.manual_seed(0)  # rebasin draws its space order from the global RNG
        start = time.perf_counter()
        pcd.calculate_permutations(max_sweeps)
        total = time.perf_counter() - start
        row = {"total_s": total, "sweeps": count[0], "per_sweep_s": total / max(count[0], 1),
               "permutations": len(pcd.pinit.model_graph.permutation_to_info)}
        if best is None or row["per_sweep_s"] < best["per_sweep_s"]:
            best = row
    return best


def run(models, seeds, repeats, max_sweeps, with_rebasin=True) -> list[dict]:
    rows = []
    for key in models:
        build, shape, label = MODELS[key]
        spec = weightspace.trace(build().eval(), shape)
        for seed in seeds:
            seed_a, seed_b = 2 * seed, 2 * seed + 1
            torch.manual_seed(seed_a)
            state_a = _state(build())
            torch.manual_seed(seed_b)
            state_b = _state(build())
            record: list = []
            weight_matching(state_a, state_b, spec, max_sweeps=max_sweeps, _record=record)
            # interleaved, best of `repeats`: robust against other load on the machine
            times, bare = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                result = weight_matching(state_a, state_b, spec, max_sweeps=max_sweeps)
                times.append(time.perf_counter() - start)
                bare.append(_unavoidable(spec, record))
            total, unavoidable = min(times), min(bare)
            row = {
                "model": label, "key": key, "seed": seed,
                "permutable_spaces": len(spec.permutable_spaces),
                "parameters": spec.num_parameters,
                "total_s": total, "sweeps": result.sweeps,
                "per_sweep_s": total / max(result.sweeps, 1),
                "unavoidable_s": unavoidable, "ratio": total / unavoidable,
                "solves": result.solves, "visits": result.sweeps * len(spec.permutable_spaces),
                "updated": sum(1 for entry in record if entry[3]),
                "converged": result.converged,
                "objective": result.objective,
            }
            reb = _bench_rebasin(build, shape, seed_a, seed_b, max_sweeps) if with_rebasin else None
            if reb is not None:
                row["rebasin"] = reb
                row["speedup_per_sweep"] = reb["per_sweep_s"] / row["per_sweep_s"]
            rows.append(row)
    return rows


def _table(rows) -> str:
    head = (f"{'model':<24}{'seed':>5}{'sweeps':>7}{'solves':>8}{'updated':>8}{'total ms':>10}"
            f"{'ms/sweep':>10}"
            f"{'unavoid ms':>11}{'ratio':>7}{'rebasin ms/sweep':>18}{'(sweeps)':>9}{'speed-up':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        reb = r.get("rebasin")
        reb_cols = (f"{reb['per_sweep_s'] * 1e3:>18.1f}{reb['sweeps']:>9d}"
                    f"{r['speedup_per_sweep']:>8.1f}x" if reb else f"{'n/a':>18}{'':>9}{'':>9}")
        solves = f"{r['solves']}/{r['visits']}"
        lines.append(f"{r['model']:<24}{r['seed']:>5}{r['sweeps']:>7}{solves:>8}{r['updated']:>8}"
                     f"{r['total_s'] * 1e3:>10.1f}"
                     f"{r['per_sweep_s'] * 1e3:>10.2f}{r['unavoidable_s'] * 1e3:>11.1f}"
                     f"{r['ratio']:>7.2f}" + reb_cols)
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-sweeps", type=int, default=100)
    parser.add_argument("--no-rebasin", action="store_true", help="skip the rebasin package")
    parser.add_argument("--recompute", action="store_true",
                        help="recompute every cost product instead of updating large spaces' "
                             "costs from their last solve (for comparison)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.recompute:
        weight_matching_engine._INCREMENTAL_MIN_MACS = math.inf

    try:
        import rebasin  # noqa: F401

        have_rebasin = not args.no_rebasin
        note = "rebasin: installed" if have_rebasin else "rebasin: skipped (--no-rebasin)"
    except ImportError:
        have_rebasin = False
        note = ("rebasin: not installed (pip install --no-deps rebasin torchview graphviz "
                "to compare)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; {note}")
    rows = run(models, seeds, args.repeats, args.max_sweeps, have_rebasin)
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "rows": rows}, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
