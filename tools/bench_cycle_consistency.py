"""Cycle consistency of N-model alignment: separate pairwise weight matchings
against pairwise alignments through MergeMany's common frame
(:meth:`weightspace.align.MergeManyResult.relative`).

Trains ``--models`` digits MLPs from different seeds, aligns every ordered
pair both ways, and prints, in one run:

* how many 3-cycles ``i → j → k`` of the pairwise matchings disagree with the
  direct ``i → k`` matching, and the fraction of neurons that disagree (the
  common frame gives 0 by construction; checked here too);
* the mean squared distance ``‖θ_t − π(θ_s)‖²`` over ordered pairs: naive,
  pairwise weight matching (the per-pair optimum it finds), common frame —
  what cycle consistency costs in pairwise fit.

Usage::

    python tools/bench_cycle_consistency.py [--models 4] [--hidden 128,128] [--epochs 10]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

import weightspace as ws
from weightspace.align import merge_many, weight_matching
from weightspace.classify import load_split, train_classifier
from weightspace.models import build_model


def _distance(spec, a, b) -> float:
    return float(sum(((a[p.name] - b[p.name]) ** 2).sum() for p in spec.parameters
                     if a[p.name].is_floating_point()))


def _disagreement(composed, direct) -> int:
    return sum(int((composed[space] != direct[space]).sum()) for space in direct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--hidden", default="128,128")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hidden = [int(h) for h in args.hidden.split(",")]
    data = load_split("digits", (1, 64))
    states = []
    for seed in range(args.models):
        torch.manual_seed(seed)
        model = train_classifier(build_model("mlp", hidden=hidden), data, epochs=args.epochs,
                                 seed=seed)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    spec = ws.trace(model, (1, 64))
    n = len(states)
    pairs = [(t, s) for t in range(n) for s in range(n) if t != s]

    start = time.perf_counter()
    direct = {(t, s): weight_matching(states[t], states[s], spec).permutation for t, s in pairs}
    pairwise_seconds = time.perf_counter() - start
    start = time.perf_counter()
    common = merge_many(states, spec)
    common_seconds = time.perf_counter() - start

    neurons = sum(len(p) for p in direct[pairs[0]].perms.values())
    rows = {}
    for label, perm in (("pairwise weight matching", lambda t, s: direct[(t, s)]),
                        ("common frame (merge_many)", common.relative)):
        broken = moved = 0
        triples = list(itertools.permutations(range(n), 3))
        for i, j, k in triples:
            e = _disagreement(perm(j, i).then(perm(k, j)), perm(k, i))
            broken += e > 0
            moved += e
        fit = statistics.mean(_distance(spec, states[t], spec.permute(states[s], perm(t, s)))
                              for t, s in pairs)
        rows[label] = (broken, len(triples), moved / (neurons * len(triples)), fit)
    naive = statistics.mean(_distance(spec, states[t], states[s]) for t, s in pairs)

    print(f"{n} digits MLPs 64-{'-'.join(map(str, hidden))}-10, {args.epochs} epochs each; "
          f"{len(pairs)} ordered pairs")
    print("| alignment | broken 3-cycles | neurons disagreeing | mean ‖θ_t − π(θ_s)‖² | time |")
    print("|---|---|---|---|---|")
    print(f"| none | - | - | {naive:.1f} | - |")
    times = {"pairwise weight matching": pairwise_seconds,
             "common frame (merge_many)": common_seconds}
    for label, (broken, count, share, fit) in rows.items():
        print(f"| {label} | {broken}/{count} | {share:.1%} | {fit:.1f} | {times[label]:.2f} s |")


if __name__ == "__main__":
    main()
