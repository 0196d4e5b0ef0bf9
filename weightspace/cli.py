"""The ``weightspace`` command. Thin: each verb parses arguments, makes one
library call, and prints the result (``--json`` where a result is read by
programs). Bad input gives a one-line error on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Collection, Sequence

EXIT_BAD_INPUT = 1


class CLIError(Exception):
    """Bad input discovered by the CLI itself."""


#: The library argument behind each flag (or positional argument). Library
#: errors name the argument at fault (``WeightspaceError.parameter``) and never a
#: flag; :func:`main` shows the flag from this one table.
PARAMETER_FLAGS: dict[str, str] = {
    "align": "--align",
    "base": "--base",
    "batch_size": "--batch-size",
    "config": "--config",
    "data": "--data",
    "epochs": "--epochs",
    "finetune_epochs": "--finetune-epochs",
    "group": "--group",
    "hidden": "--hidden",
    "importance": "--importance",
    "latency_batch": "--latency-batch",
    "lr": "--lr",
    "metanet": "--metanet",
    "method": "--method",
    "min_accuracy": "--min-accuracy",
    "mode": "--mode",
    "num_layers": "--layers",
    "output": "--output",
    "paths": "CHECKPOINT",
    "repair": "--repair",
    "scope": "--scope",
    "seed": "--seed",
    "sparsity": "--sparsity",
    "sparsity_alpha": "--sparsity-alpha",
    "sparsity_ramp": "--sparsity-ramp",
    "sparsity_weight": "--sparsity-weight",
    "speedup": "--speedup",
    "steps": "--steps",
    "structured": "--structured",
    "weights": "--weights",
}


def error_line(err: BaseException, flags: Collection[str] | None = None) -> str:
    """The first line of ``err``'s message, after the flag of the parameter it
    names (argparse's ``argument --flag: ...`` form) when the table has one.

    Args:
        err: the error.
        flags: the flags and positional names of the verb that ran; a
            parameter's flag is shown only when the verb has it (``None``:
            always).
    """
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    flag = PARAMETER_FLAGS.get(getattr(err, "parameter", None) or "")
    if flag is None or (flags is not None and flag not in flags):
        return message
    return f"argument {flag}: {message}"


def verb_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> set[str]:
    """The option strings and positional metavars of the (sub)command that
    ``names`` (e.g. ``["zoo", "build"]``) selects in ``parser``."""
    for name in names:
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not commands or name not in commands[0].choices:
            break
        parser = commands[0].choices[name]
    flags: set[str] = set()
    for action in parser._actions:
        flags.update(action.option_strings or [action.metavar or action.dest])
    return flags


def _model_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="a built-in family (mlp, siren, cnn, resnet20, vgg), "
                        "package.module:callable, or path/to/file.py:callable")
    p.add_argument("--model-args", default=None, metavar="JSON",
                   help='keyword arguments for the model as a JSON object, e.g. \'{"width": 2}\'')
    p.add_argument("--input-shape", default=None, metavar="SHAPE",
                   help="example input shape with the batch axis first, e.g. 1,3,32,32 "
                        "(built-in families have a default)")


def _spec_from_args(args: argparse.Namespace):
    from weightspace.models.resolve import parse_input_shape, parse_model_args, resolve_model
    from weightspace.spec import trace

    module, default_shape = resolve_model(args.model, parse_model_args(args.model_args))
    shape = parse_input_shape(args.input_shape) if args.input_shape else default_shape
    if shape is None:
        raise CLIError(f"--input-shape is required for --model {args.model!r} "
                       f"(e.g. --input-shape 1,3,32,32)")
    return trace(module, shape)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, and never with --quiet or --json."""
    return not getattr(args, "quiet", False) and not getattr(args, "json", False) \
        and sys.stderr.isatty()


# ------------------------------------------------------------------ verbs
def cmd_inspect(args: argparse.Namespace) -> int:
    from weightspace.graph import GraphTemplate

    spec = _spec_from_args(args)
    template = GraphTemplate.for_spec(spec)
    if args.json:
        out = {
            "hash": spec.hash,
            "num_parameters": spec.num_parameters,
            "graph": {"nodes": template.num_nodes, "edges": template.num_edges,
                      "edge_dim": template.edge_dim, "node_dim": template.node_dim,
                      "scalars": template.num_scalars},
            "spec": spec.to_dict(),
        }
        print(json.dumps(out, indent=2))
    else:
        print(spec.summary())
        print()
        print(f"graph: {template.num_nodes} nodes, {template.num_edges} edges, "
              f"edge_dim {template.edge_dim}, node_dim {template.node_dim}, "
              f"{template.num_scalars} scalars")
    return 0


def _is_zoo(paths: list[str]) -> bool:
    return len(paths) == 1 and paths[0].lower().endswith((".h5", ".hdf5"))


def cmd_convert(args: argparse.Namespace) -> int:
    from weightspace.graph import convert_checkpoints, graph_summary, save_graphs

    if _is_zoo(args.checkpoints):
        from weightspace.zoo.convert import convert_zoo

        batch, template, sources = convert_zoo(args.checkpoints[0], group=args.group,
                                               progress=_progress(args))
        spec = template.spec
    else:
        if not args.model:
            raise CLIError("--model is required to convert checkpoint files (a zoo .h5 "
                           "carries its model)")
        spec = _spec_from_args(args)
        batch, template, sources = convert_checkpoints(args.checkpoints, spec,
                                                       progress=_progress(args))
    path = save_graphs(args.output, batch, template, sources)
    if args.json:
        print(json.dumps({"output": str(path), "num_graphs": batch.num_graphs,
                          "nodes_per_graph": template.num_nodes,
                          "edges_per_graph": template.num_edges, "spec_hash": spec.hash,
                          "sources": sources}, indent=2))
    else:
        print(f"converted {batch.num_graphs} checkpoints -> {path}")
        print(graph_summary(batch))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from weightspace.graph import graph_summary
    from weightspace.jobs.demo import run_demo
    from weightspace.zoo.ops import format_info

    report = run_demo(args.workdir, recipe=args.recipe, size=args.size,
                      progress=_progress(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    spec, template, batch = report.spec, report.template, report.batch
    perm, build = report.permutation, report.build
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
    merging = report.merging
    scores = merging["scores"]
    print("\n== 6. weightspace align / merge / interpolate: two MLPs trained from seeds 0 and 1")
    print(f"   test accuracy: A {scores['model0_aligned']['accuracy']:.4f}, B "
          f"{scores['model1_aligned']['accuracy']:.4f}; averaged naively "
          f"{merging['naive_merged']['accuracy']:.4f}, after weight matching "
          f"{scores['merged']['accuracy']:.4f}")
    for name, values in merging["barriers"].items():
        print(f"   {name:<18} loss barrier {values['loss_barrier']:.4f}, accuracy barrier "
              f"{100 * values['accuracy_barrier']:.1f} points")
    meta = report.metanetworks
    print(f"\n== 7. weightspace train: metanetworks classifying {meta['rows']} digit INRs "
          f"(SIREN 2-32-32-1, one per image)")
    for name, values in meta["models"].items():
        rows = values["rows"]
        print(f"   {name:<7} test accuracy {values['test']['accuracy']:.3f} on {rows['test']} INRs "
              f"(trained on {rows['train']}; {values['parameters']:,} parameters, "
              f"{values['graphs_per_second']:.0f} graphs/s, {values['seconds']:.0f} s)")
    pruning = report.pruning
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
    print("\ndemo OK" if report.ok else "\ndemo FAILED")
    return 0 if report.ok else 1


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightspace",
        description="Neural networks as data: weight-space specs, parameter graphs, symmetries.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inspect", help="trace a model and print its spaces, symmetries and parameters",
                       description="Trace a model into its weight-space spec and print the neuron "
                                   "spaces (sizes, symmetries), layers and parameters.")
    _model_arguments(p)
    p.add_argument("--json", action="store_true", help="print the spec as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="convert checkpoints to parameter graphs",
                       description="Convert checkpoints (.safetensors, or .pt/.pth state dicts "
                                   "loaded with weights_only=True: a checkpoint never runs code) "
                                   "or the rows of a zoo (.h5) to one batched PyG graph file.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoint files, directories (searched recursively) or glob patterns; "
                        "or one zoo file (.h5)")
    _model_arguments(p, required=False)
    p.add_argument("--group", default=None,
                   help="with a zoo: the group (architecture) to convert, if it has several")
    p.add_argument("-o", "--output", required=True, help="output graph file (.pt)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", help="run the main job end to end on built-in data",
                       description="Build a tiny zoo of small CNNs trained on scikit-learn's "
                                   "digits, show and verify it, convert its rows to graphs, and "
                                   "check round trips and permutation symmetry; align and merge "
                                   "two MLPs; train GMN and StatNN on a tiny zoo of digit INRs.")
    p.add_argument("--workdir", default=None, help="keep checkpoints and graphs here "
                                                   "(default: a temporary directory)")
    p.add_argument("--recipe", default="digits-cnn", help="zoo recipe (default digits-cnn)")
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "full"],
                   help="zoo size (default tiny)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    from weightspace.cli_align import add_align_parsers
    from weightspace.cli_prune import add_prune_parser
    from weightspace.cli_train import add_train_parser
    from weightspace.cli_zoo import add_zoo_parser

    add_align_parsers(sub, _model_arguments)
    add_prune_parser(sub, _model_arguments)
    add_zoo_parser(sub)
    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from weightspace.errors import WeightspaceError

    try:
        return int(args.func(args) or 0)
    except (CLIError, WeightspaceError, FileNotFoundError) as err:
        names = [n for n in (args.command, getattr(args, "zoo_command", None)) if n]
        line = error_line(err, verb_flags(parser, names))
        print(f"weightspace {' '.join(names)}: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
