"""Benchmark: reading a zoo against a folder of ``.pt`` files, building, and
memory while streaming.

In one run:

* **Reading** N SIREN 2->32->32->1 checkpoints into an ``[N, P]`` matrix:
  from the HDF5 zoo (``Zoo.iter_chunks``) and from a folder with one ``.pt``
  state dict per checkpoint (how the anchors' zoos are stored; read with
  ``torch.load(weights_only=True)`` and flattened). Sequential order, random
  order one row at a time (``Zoo.params(i)`` against ``torch.load`` in that
  order) and random batches of 64 (a shuffled DataLoader's access). Rows/s,
  MB/s and the ratio zoo / folder.
* **Building**: networks/s of ``build_zoo`` with 1 and 2 workers on a recipe.
* **Memory**: peak RSS of a fresh process streaming the whole zoo chunk by
  chunk, against the zoo's size.

Both paths read files that the OS has cached (they were just written), so the
ratios compare the formats, not the disk.

Usage::

    python tools/bench_zoo.py [--rows 10000] [--build-recipe digits-cnn --build-size small]
                              [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from weightspace.models import SIREN
from weightspace.spec import trace
from weightspace.zoo import ModelDef, Zoo, ZooRow, ZooWriter

SIREN_DEF = ModelDef("siren", {"hidden": [32, 32]}, (1, 2))


def make_data(folder: Path, rows: int) -> tuple[Path, Path, torch.Tensor]:
    spec = trace(SIREN(hidden=(32, 32)), (1, 2))
    params = torch.randn(rows, spec.num_parameters, generator=torch.Generator().manual_seed(0))
    params = params * 0.1
    zoo_path = folder / "zoo.h5"
    pt_dir = folder / "pt"
    pt_dir.mkdir()
    with ZooWriter(zoo_path, sync=False, commit_rows=1 << 40, specs={"siren": spec}) as writer:
        batch = []
        for i, row in enumerate(params):
            batch.append(ZooRow(f"inr{i:06d}/view0", "siren", SIREN_DEF, row,
                                {"label": i % 10, "psnr": 30.0}))
            if len(batch) == 1000:
                writer.extend(batch)
                batch = []
        if batch:
            writer.extend(batch)
    for i, row in enumerate(params):
        torch.save({k: v.clone() for k, v in spec.unflatten(row).items()},
                   pt_dir / f"inr{i:06d}.pt")
    return zoo_path, pt_dir, params


def read_folder(files: list[Path], spec, order: np.ndarray) -> torch.Tensor:
    rows = [spec.flatten(torch.load(files[i], map_location="cpu", weights_only=True))
            for i in order]
    return torch.stack(rows)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_reading(zoo_path: Path, pt_dir: Path, params: torch.Tensor, folder_rows: int) -> dict:
    rows = len(params)
    spec = trace(SIREN(hidden=(32, 32)), (1, 2))
    files = sorted(pt_dir.glob("*.pt"))
    mb = params.numel() * 4 / 1e6
    rng = np.random.default_rng(0)
    results = {}

    def zoo_sequential():
        out = torch.empty(rows, spec.num_parameters)
        with Zoo(zoo_path) as zoo:
            for chunk in zoo.iter_chunks():
                out[chunk.indices] = torch.from_numpy(chunk.params)
        return out

    def zoo_random_rows(order):
        with Zoo(zoo_path) as zoo:
            return torch.stack([zoo.params(int(i)) for i in order])

    def zoo_random_batches(order):
        with Zoo(zoo_path) as zoo:
            return torch.cat([zoo.params(order[start: start + 64])
                              for start in range(0, len(order), 64)])

    # The folder baseline is slow: time it on `folder_rows` rows and scale.
    sub = min(rows, folder_rows)
    scale = rows / sub
    order = rng.permutation(rows)
    cases = {
        "sequential": (zoo_sequential, lambda: read_folder(files, spec, np.arange(sub)),
                       np.arange(rows)),
        "random rows": (lambda: zoo_random_rows(order), lambda: read_folder(
            files, spec, order[:sub]), order),
        "random batches of 64": (lambda: zoo_random_batches(order), lambda: read_folder(
            files, spec, order[:sub]), order),
    }
    for name, (zoo_fn, folder_fn, expected_order) in cases.items():
        zoo_fn()  # warm the page cache and the imports
        zoo_seconds, got = timed(zoo_fn)
        assert torch.equal(got, params[expected_order]), f"{name}: zoo rows differ"
        folder_seconds, got_folder = timed(folder_fn)
        assert torch.equal(got_folder, params[expected_order[:sub]]), f"{name}: folder differs"
        folder_seconds *= scale
        results[name] = {
            "zoo_seconds": zoo_seconds, "zoo_rows_per_s": rows / zoo_seconds,
            "zoo_mb_per_s": mb / zoo_seconds,
            "folder_seconds": folder_seconds, "folder_rows_per_s": rows / folder_seconds,
            "folder_mb_per_s": mb / folder_seconds,
            "ratio": folder_seconds / zoo_seconds,
        }
    results["zoo_file_mb"] = zoo_path.stat().st_size / 1e6
    results["folder_mb"] = sum(f.stat().st_size for f in files) / 1e6
    results["raw_mb"] = mb
    return results


STREAM = """
import sys, numpy as np
from weightspace.zoo import Zoo
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
with Zoo(sys.argv[1], cache_bytes=0) as zoo:
    zoo.column("label")
    before = peak = rss()
    total = 0.0
    for chunk in zoo.iter_chunks():
        total += float(chunk.params.sum())
        peak = max(peak, rss())
    whole = zoo.params(np.arange(len(zoo)))
    print(before, peak, rss())
"""


def bench_memory(zoo_path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", STREAM, str(zoo_path)], capture_output=True,
                         text=True, check=True)
    before, peak, whole = (float(x) for x in out.stdout.split())
    with Zoo(zoo_path) as zoo:
        group = zoo.group("siren")
        chunk_mb = group.chunk_rows * group.spec.num_parameters * 4 / 2**20
        raw_mb = len(zoo) * group.spec.num_parameters * 4 / 2**20
    return {"rss_before_stream_mib": before, "peak_rss_streaming_mib": peak,
            "growth_mib": peak - before, "growth_reading_all_mib": whole - before,
            "zoo_raw_mib": raw_mb, "chunk_mib": chunk_mb}


def bench_build(recipe: str, size: str, folder: Path, workers_list: list[int]) -> dict:
    from weightspace.zoo.build import build_zoo

    results = {}
    for workers in workers_list:
        result = build_zoo(recipe, folder / f"build-{workers}.h5", size=size, workers=workers,
                           progress=False, overwrite=True)
        results[workers] = {"rows": result.rows_written, "seconds": result.seconds,
                            "networks_per_s": result.networks_per_second}
    base = results[workers_list[0]]["networks_per_s"]
    for workers in workers_list:
        results[workers]["speedup"] = results[workers]["networks_per_s"] / base
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10000, help="SIRENs in the read benchmark")
    parser.add_argument("--folder-rows", type=int, default=3000,
                        help="rows actually read from the .pt folder (the rest is scaled)")
    parser.add_argument("--build-recipe", default="digits-cnn")
    parser.add_argument("--build-size", default="small")
    parser.add_argument("--workers", default="1,2", help="worker counts for the build benchmark")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        zoo_path, pt_dir, params = make_data(folder, args.rows)
        report["setup_seconds"] = time.perf_counter() - start
        report["reading"] = bench_reading(zoo_path, pt_dir, params, args.folder_rows)
        report["memory"] = bench_memory(zoo_path)
        if not args.skip_build:
            workers = [int(w) for w in args.workers.split(",")]
            report["build"] = {"recipe": args.build_recipe, "size": args.build_size,
                               "by_workers": bench_build(args.build_recipe, args.build_size,
                                                         folder, workers)}

    reading = report["reading"]
    print(f"zoo reading: {args.rows} SIREN 2-32-32-1 rows ({reading['raw_mb']:.1f} MB raw; zoo "
          f"file {reading['zoo_file_mb']:.1f} MB, .pt folder {reading['folder_mb']:.1f} MB)")
    print(f"{'access':<22} {'zoo rows/s':>11} {'zoo MB/s':>9} {'.pt rows/s':>11} "
          f"{'.pt MB/s':>9} {'ratio':>7}")
    for name in ("sequential", "random rows", "random batches of 64"):
        r = reading[name]
        print(f"{name:<22} {r['zoo_rows_per_s']:>11,.0f} {r['zoo_mb_per_s']:>9.1f} "
              f"{r['folder_rows_per_s']:>11,.0f} {r['folder_mb_per_s']:>9.1f} "
              f"{r['ratio']:>6.1f}x")
    memory = report["memory"]
    print(f"streaming memory: RSS grows {memory['growth_mib']:.1f} MiB while streaming a "
          f"{memory['zoo_raw_mib']:.0f} MiB zoo in {memory['chunk_mib']:.2f} MiB chunks "
          f"(reading it all at once: +{memory['growth_reading_all_mib']:.0f} MiB)")
    if "build" in report:
        build = report["build"]
        for workers, r in build["by_workers"].items():
            print(f"build {build['recipe']} ({build['size']}), {workers} worker(s): "
                  f"{r['rows']} networks in {r['seconds']:.1f} s = {r['networks_per_s']:.1f} "
                  f"networks/s ({r['speedup']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
