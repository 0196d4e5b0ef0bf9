"""``weightspace inspect`` and ``convert``: a model's spec, and checkpoints or
zoo rows as one batched graph file. Each verb is one library call plus
printing."""

from __future__ import annotations

import argparse

from weightspace.cli._common import (
    CLIError,
    add_model_arguments,
    add_output_flags,
    model_and_spec,
    print_json,
    show_progress,
)


def cmd_inspect(args: argparse.Namespace) -> int:
    from weightspace.graph import GraphTemplate

    spec = model_and_spec(args).spec
    template = GraphTemplate.for_spec(spec)
    if args.json:
        print_json({
            "hash": spec.hash,
            "num_parameters": spec.num_parameters,
            "graph": {"nodes": template.num_nodes, "edges": template.num_edges,
                      "edge_dim": template.edge_dim, "node_dim": template.node_dim,
                      "scalars": template.num_scalars},
            "spec": spec.to_dict(),
        })
        return 0
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
                                               progress=show_progress(args))
    else:
        if not args.model:
            raise CLIError("--model is required to convert checkpoint files (a zoo .h5 "
                           "carries its model)")
        batch, template, sources = convert_checkpoints(args.checkpoints,
                                                       model_and_spec(args).spec,
                                                       progress=show_progress(args))
    path = save_graphs(args.output, batch, template, sources)
    if args.json:
        print_json({"output": str(path), "num_graphs": batch.num_graphs,
                    "nodes_per_graph": template.num_nodes,
                    "edges_per_graph": template.num_edges, "spec_hash": template.spec.hash,
                    "sources": sources})
        return 0
    print(f"converted {batch.num_graphs} checkpoints -> {path}")
    print(graph_summary(batch))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``inspect`` and ``convert``."""
    p = sub.add_parser("inspect", help="trace a model and print its spaces, symmetries and "
                                       "parameters",
                       description="Trace a model into its weight-space spec and print the neuron "
                                   "spaces (sizes, symmetries), layers and parameters.")
    add_model_arguments(p)
    add_output_flags(p, "print the spec as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="convert checkpoints to parameter graphs",
                       description="Convert checkpoints (.safetensors, or .pt/.pth state dicts "
                                   "loaded with weights_only=True: a checkpoint never runs code) "
                                   "or the rows of a zoo (.h5) to one batched PyG graph file.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoint files, directories (searched recursively) or glob patterns; "
                        "or one zoo file (.h5)")
    add_model_arguments(p, required=False)
    p.add_argument("--group", default=None,
                   help="with a zoo: the group (architecture) to convert, if it has several")
    p.add_argument("-o", "--output", required=True, help="output graph file (.pt)")
    add_output_flags(p, "print a JSON summary", quiet_help="no progress bar")
    p.set_defaults(func=cmd_convert)
