"""``weightspace demo``: the main job end to end on built-in data — one call
to :func:`weightspace.jobs.demo.run_demo` plus printing. Exit status 1 when one of
the demo's checks fails."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from weightspace.cli._common import add_output_flags, print_json, show_progress

if TYPE_CHECKING:
    from weightspace.jobs.demo import DemoReport


def _print_zoo_steps(report: DemoReport) -> None:
    from weightspace.graph import graph_summary
    from weightspace.zoo.ops import format_info

    spec, template, batch = report.spec, report.template, report.batch
    build, perm = report.build, report.permutation
    print(f"== 1. weightspace zoo build {build.recipe} --size {build.size}: trained "
          f"{build.jobs_run} runs on scikit-learn digits, {build.rows_written} checkpoints "
          f"in {build.seconds:.1f} s")
    print("\n== 2. weightspace zoo info")
    print(format_info(report.info))
    print(f"   checksums verified: {report.verified}")
    print(f"\n== 3. the weight-space spec of group {report.group!r}, traced from the module")
    print(spec.summary())
    print(f"\n== 4. weightspace convert: {batch.num_graphs} zoo rows -> one batched parameter "
          f"graph ({report.convert_seconds * 1e3:.0f} ms)")
    print(graph_summary(batch))
    print(f"\n   per graph: {template.num_nodes} nodes, {template.num_edges} edges, "
          f"edge_dim {template.edge_dim}")
    print(f"   graph -> zoo row round trip exact for every row: {report.round_trip_exact}")
    print(f"\n== 5. symmetry: a random permutation of every hidden space of {perm.checkpoint}")
    print(f"   moves {perm.values_moved} weight values; test accuracy {perm.accuracy:.4f} "
          f"(recorded in the zoo: {perm.recorded_accuracy:.4f}) -> "
          f"{perm.accuracy_permuted:.4f}; graph = original with nodes relabelled: "
          f"{perm.graph_relabelled}")


def _print_model_steps(report: DemoReport) -> None:
    merging, meta, pruning = report.merging, report.metanetworks, report.pruning
    scores = merging["scores"]
    print("\n== 6. weightspace align / merge / interpolate: two MLPs trained from seeds 0 and 1")
    print(f"   test accuracy: A {scores['model0_aligned']['accuracy']:.4f}, B "
          f"{scores['model1_aligned']['accuracy']:.4f}; averaged naively "
          f"{merging['naive_merged']['accuracy']:.4f}, after weight matching "
          f"{scores['merged']['accuracy']:.4f}")
    for name, values in merging["barriers"].items():
        print(f"   {name:<18} loss barrier {values['loss_barrier']:.4f}, accuracy barrier "
              f"{100 * values['accuracy_barrier']:.1f} points")
    print(f"\n== 7. weightspace train: metanetworks classifying {meta['rows']} digit INRs "
          f"(SIREN 2-32-32-1, one per image)")
    for name, values in meta["models"].items():
        rows = values["rows"]
        print(f"   {name:<7} test accuracy {values['test']['accuracy']:.3f} on {rows['test']} INRs "
              f"(trained on {rows['train']}; {values['parameters']:,} parameters, "
              f"{values['graphs_per_second']:.0f} graphs/s, {values['seconds']:.0f} s)")
    print(f"\n== 8. weightspace prune: model A (64-64-64-10 MLP), fine-tuned "
          f"{pruning['structured'].finetune_epochs} epochs after pruning")
    before = pruning["structured"].before
    print(f"   before             test accuracy {before['accuracy']:.4f}, "
          f"{before['parameters']:,} parameters, {before['macs']:,} MACs, "
          f"{before['latency_ms']:.2f} ms per batch of {before['batch_size']}")
    for label, key in (("structured (2x)", "structured"), ("80 % weights zero", "unstructured")):
        after = pruning[key].after
        print(f"   {label:<18} test accuracy {after['accuracy']:.4f}, "
              f"{after['nonzero']:,} non-zero parameters, {after['macs']:,} MACs, "
              f"{after['latency_ms']:.2f} ms")
    if report.zoo:
        print(f"\nzoo in {report.zoo}, graphs in {report.graph_file}, barrier plot in "
              f"{merging['plot']}, metanetwork runs in {report.workdir}/digits-inr-*/")


def cmd_demo(args: argparse.Namespace) -> int:
    from weightspace.jobs.demo import run_demo

    report = run_demo(args.workdir, recipe=args.recipe, size=args.size,
                      progress=show_progress(args))
    ok = report.ok
    if args.json:
        print_json(report)
    else:
        _print_zoo_steps(report)
        _print_model_steps(report)
        print("\ndemo OK" if ok else "\ndemo FAILED")
    return 0 if ok else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    from weightspace.zoo.recipes import SIZES

    p = sub.add_parser("demo", help="run the main job end to end on built-in data",
                       description="Build a tiny zoo of small CNNs trained on scikit-learn's "
                                   "digits, show and verify it, convert its rows to graphs, and "
                                   "check round trips and permutation symmetry; align and merge "
                                   "two MLPs; train GMN and StatNN on a tiny zoo of digit INRs.")
    p.add_argument("--workdir", default=None, help="keep checkpoints and graphs here "
                                                   "(default: a temporary directory)")
    p.add_argument("--recipe", default="digits-cnn", help="zoo recipe (default digits-cnn)")
    p.add_argument("--size", default="tiny", choices=list(SIZES), help="zoo size (default tiny)")
    add_output_flags(p, "print the report as JSON", quiet_help="no progress bars")
    p.set_defaults(func=cmd_demo)
