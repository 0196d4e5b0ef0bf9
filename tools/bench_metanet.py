#!/usr/bin/env python
"""Metanetwork training throughput: template-batched graphs against the same
model fed per-sample ``Data`` objects built one by one (the anchors' way), in
one run.

For every model: training graphs/s (batch building + forward + backward +
Adam step, a fixed number of steps after warm-up) on

* ``batched``: :meth:`ZooGraphDataset.batch` — one zoo read and one template
  gather for the whole batch;
* ``per-sample``: ``Batch.from_data_list([dataset[i] for i in batch])`` — one
  ``Data`` per network (read and gathered through the cached template on its
  own), then collated: what a PyG ``DataLoader`` over our dataset does;
* ``per-network conversion``: the anchors' way — each network's state dict
  converted by walking its architecture (a new :class:`GraphTemplate` per
  network, as GMN's and Neural Graphs' per-model converters do), then
  collated.

Usage::

    python tools/bench_metanet.py [--zoo digits-inr.h5] [--models gmn,gmn-92k,statnn]
                                  [--batch-size 64] [--steps 20] [--device auto] [--json out.json]

Without ``--zoo`` it builds the ``small`` digits-inr zoo in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from weightspace.graph import GraphTemplate
from weightspace.nn import build_metanetwork, count_trainable_parameters
from weightspace.train import resolve_device
from weightspace.zoo import Zoo, ZooGraphDataset, build_zoo

MODELS = {
    # name: (registry name, model_args)
    "gmn": ("gmn", {"hidden": 64, "num_layers": 4}),
    "gmn-92k": ("gmn", {"hidden": 40, "num_layers": 3}),
    "gmn-probes": ("gmn", {"hidden": 32, "num_layers": 2, "probes": 64}),
    "transformer": ("transformer", {"hidden": 32, "num_layers": 2}),
    "transformer-probes": ("transformer", {"hidden": 32, "num_layers": 2, "probes": 64}),
    "deepsets": ("deepsets", {}),
    "nfn-hnp": ("nfn-hnp", {}),
    "nfn-np": ("nfn-np", {}),
    "dwsnet": ("dwsnet", {}),
    "statnn": ("statnn", {}),
    "flat-mlp": ("flat-mlp", {}),
}


def measure(model, make_batch, order, batch_size, steps, warmup, device):
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    done = 0
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = order[(step * batch_size) % (len(order) - batch_size + 1):][:batch_size]
        batch = make_batch(idx).to(device)
        loss = F.cross_entropy(model(batch), batch.y.view(-1))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step >= warmup:
            done += batch.num_graphs
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=None)
    parser.add_argument("--models", default="gmn,gmn-92k,gmn-probes,transformer,statnn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    tmp = None
    zoo_path = args.zoo
    if zoo_path is None:
        tmp = tempfile.TemporaryDirectory()
        zoo_path = str(Path(tmp.name) / "digits-inr-small.h5")
        build_zoo("digits-inr", zoo_path, size="small", progress=False)
    zoo = Zoo(zoo_path)
    dataset = ZooGraphDataset(zoo, target="label")
    template = dataset.templates[dataset.group_names[0]]
    network = zoo.group(dataset.group_names[0]).model_def.build()
    order = np.random.default_rng(0).permutation(len(dataset))

    def batched(idx):
        return dataset.batch(idx)

    def per_sample(idx):
        return Batch.from_data_list([dataset[int(i)] for i in idx])

    spec = template.spec
    labels = dataset._targets

    def per_network(idx):
        graphs = []
        for i in idx:
            row = int(dataset.rows[int(i)])
            graph = GraphTemplate(spec).to_data(spec.flatten(zoo.state_dict(row)))
            graph.y = labels[row:row + 1]
            graphs.append(graph)
        return Batch.from_data_list(graphs)

    rows = []
    print(f"{len(dataset)} graphs of {zoo.path.name} ({template.num_nodes} nodes, {template.num_edges} "
          f"edges each), batch {args.batch_size}, {args.steps} steps, device {device}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'model':<12} {'parameters':>10} {'batched g/s':>12} {'per-sample g/s':>15} {'ratio':>6} "
          f"{'per-network g/s':>16} {'ratio':>6}")
    for name in args.models.split(","):
        registry, model_args = MODELS[name]
        model_args = dict(model_args)
        if model_args.get("probes"):
            model_args["network"] = network
        torch.manual_seed(0)
        model = build_metanetwork(registry, template, dataset.num_classes, model_args).to(device)
        fit = getattr(model, "fit_normalisation", None)
        if fit is not None:
            fit(dataset.batch(np.arange(min(256, len(dataset)))).to(device))
        fast = measure(model, batched, order, args.batch_size, args.steps, args.warmup, device)
        slow = measure(model, per_sample, order, args.batch_size, args.steps, args.warmup, device)
        slowest = measure(model, per_network, order, args.batch_size, args.steps, args.warmup, device)
        row = {"model": name, "parameters": count_trainable_parameters(model), "batched": fast,
               "per_sample": slow, "per_network": slowest, "ratio_per_sample": fast / slow,
               "ratio_per_network": fast / slowest, "device": str(device)}
        rows.append(row)
        print(f"{name:<12} {row['parameters']:>10,} {fast:>12.1f} {slow:>15.1f} {fast / slow:>6.2f} "
              f"{slowest:>16.1f} {fast / slowest:>6.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    zoo.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
