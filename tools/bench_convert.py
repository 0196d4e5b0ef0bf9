"""Benchmark: checkpoints -> one batched PyG graph, and back.

Measures, in one run, for 10,000 SIREN 2->32->32->1 checkpoints and 1,000
small CNNs (the Small-CNN-Zoo architecture on 8x8 digits):

* template path: ``GraphTemplate.to_batch`` on the ``[N, P]`` parameter
  matrix (how zoo rows arrive), and the inverse ``from_batch``;
* the same starting from ``N`` state dicts (``spec.flatten_many`` included);
* the per-model baseline: ``to_graph`` one checkpoint at a time plus
  ``Batch.from_data_list`` (how anchors convert), and its inverse
  (``from_graph`` per graph after ``to_data_list``);

and prints checkpoints/s and the ratio template / per-model. Timings are the
median of ``--repeats`` runs after one warm-up; the cold first call is shown
too.

Usage::

    python tools/bench_convert.py [--siren 10000] [--cnn 1000] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch_geometric.data import Batch

import weightspace as ws
from weightspace.graph import GraphTemplate
from weightspace.models import SIREN, SmallCNN


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(cold seconds, median warm seconds, last result)."""
    t0 = time.perf_counter()
    out = fn()
    cold = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return cold, statistics.median(times), out


def bench_family(name: str, model: torch.nn.Module, shape, n: int, repeats: int, baseline_n: int):
    spec = ws.trace(model, shape)
    template = GraphTemplate(spec)
    g = torch.Generator().manual_seed(0)
    params = torch.randn(n, spec.num_parameters, generator=g)
    state_dicts = [spec.unflatten(row) for row in params]

    cold, warm, batch = timed(lambda: template.to_batch(params), repeats)
    _, warm_inv, back = timed(lambda: template.from_batch(batch), repeats)
    assert torch.equal(back, params), "template round trip is not exact"
    _, warm_sd, _ = timed(lambda: template.to_batch(spec.flatten_many(state_dicts)), max(1, repeats // 2))

    # per-model path on a subset when n is large (it is linear in n), scaled up
    m = min(n, baseline_n)
    subset = state_dicts[:m]
    _, per_model, data_list_batch = timed(
        lambda: Batch.from_data_list([ws.to_graph(sd, spec) for sd in subset]), 1)
    per_model *= n / m
    _, per_model_inv, _ = timed(
        lambda: [ws.from_graph(d, spec) for d in data_list_batch.to_data_list()], 1)
    per_model_inv *= n / m
    return {
        "family": name,
        "checkpoints": n,
        "parameters": spec.num_parameters,
        "nodes_per_graph": template.num_nodes,
        "edges_per_graph": template.num_edges,
        "edge_dim": template.edge_dim,
        "to_batch_s": warm,
        "to_batch_cold_s": cold,
        "to_batch_per_s": n / warm,
        "from_batch_s": warm_inv,
        "from_batch_per_s": n / warm_inv,
        "from_state_dicts_s": warm_sd,
        "per_model_s": per_model,
        "per_model_per_s": n / per_model,
        "per_model_inverse_s": per_model_inv,
        "per_model_measured_on": m,
        "speedup": per_model / warm,
        "speedup_from_state_dicts": per_model / warm_sd,
        "speedup_inverse": per_model_inv / warm_inv,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--siren", type=int, default=10_000)
    parser.add_argument("--cnn", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=int, default=2_000,
                        help="per-model path measured on at most this many checkpoints, scaled")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    rows = [
        bench_family("SIREN 2-32-32-1", SIREN(2, (32, 32), 1), (1, 2), args.siren, args.repeats,
                     args.baseline),
        bench_family("SmallCNN 3x16 (8x8 digits)", SmallCNN(), (1, 1, 8, 8), args.cnn, args.repeats,
                     args.baseline),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    header = (f"{'family':<28} {'N':>6} {'P':>6} {'to_batch':>10} {'graphs/s':>10} {'cold':>8} "
              f"{'inverse':>9} {'from sds':>9} {'per-model':>10} {'ratio':>7} {'ratio sd':>8} "
              f"{'ratio inv':>9}")
    print(header)
    for r in rows:
        print(f"{r['family']:<28} {r['checkpoints']:>6} {r['parameters']:>6} "
              f"{r['to_batch_s'] * 1e3:>8.1f}ms {r['to_batch_per_s']:>10.0f} "
              f"{r['to_batch_cold_s'] * 1e3:>6.0f}ms {r['from_batch_s'] * 1e3:>7.1f}ms "
              f"{r['from_state_dicts_s'] * 1e3:>7.0f}ms {r['per_model_s']:>9.2f}s "
              f"{r['speedup']:>6.0f}x {r['speedup_from_state_dicts']:>7.1f}x {r['speedup_inverse']:>8.0f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
