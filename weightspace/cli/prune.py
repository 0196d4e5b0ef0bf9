"""``weightspace prune`` and ``train-pruner``: one call each to
:func:`weightspace.jobs.prune.prune_checkpoint` /
:func:`weightspace.jobs.meta_pruner.train_meta_pruner` plus printing.

Their flags are generated from the jobs' options dataclasses
(:class:`~weightspace.jobs.prune.PruneOptions`,
:class:`~weightspace.jobs.meta_pruner.MetaPrunerOptions`) by
:func:`~weightspace.cli._common.add_options`, so a new option is one field
there. The choices of ``--method``, ``--importance``, ``--scope`` and
``--mode`` come from the library (:data:`~weightspace.jobs.prune.PRUNE_METHODS`,
:data:`~weightspace.prune.IMPORTANCE_METHODS`,
:data:`~weightspace.prune.magnitude.SCOPES`,
:data:`~weightspace.jobs.prune.NEURON_SCOPES`,
:data:`~weightspace.prune.meta.MODES`), see :func:`prune_choices`.
"""

from __future__ import annotations

import argparse

from weightspace.cli._common import (
    add_model_arguments,
    add_options,
    add_output_flags,
    model_and_spec,
    options_from_args,
    print_json,
    show_progress,
)


def prune_choices() -> dict[str, list[str]]:
    """Allowed values of the prune flags, by library parameter name.

    ``importance`` lists the magnitude criteria: the importance criteria that
    are not a ``--method`` of their own (Taylor, random). ``scope`` is a weight
    scope (unstructured) or a neuron scope (structured).
    """
    from weightspace.jobs.prune import NEURON_SCOPES, PRUNE_METHODS
    from weightspace.prune import IMPORTANCE_METHODS
    from weightspace.prune.magnitude import SCOPES

    return {"method": list(PRUNE_METHODS),
            "importance": [c.name for c in IMPORTANCE_METHODS.entries() if c.kind == "magnitude"],
            "scope": list(dict.fromkeys([*SCOPES, *NEURON_SCOPES]))}


def _format_row(label: str, m: dict) -> str:
    latency = f"{m['latency_ms']:.2f} ms" if m.get("latency_ms") is not None else "-"
    return (f"  {label:<7} accuracy {m['accuracy']:.4f}  parameters {m['parameters']:,} "
            f"(non-zero {m['nonzero']:,})  MACs {m['macs']:,}  latency {latency}")


def cmd_prune(args: argparse.Namespace) -> int:
    from weightspace.jobs.prune import PruneOptions, prune_checkpoint

    built = model_and_spec(args)
    options = options_from_args(args, PruneOptions)
    report = prune_checkpoint(args.checkpoint, built.module, built.spec, args.output, options,
                              progress=show_progress(args))
    if args.json:
        print_json(report)
        return 0
    kind = "structured" if options.structured else "unstructured"
    amount = (f"sparsity {report.sparsity:.3f}" if report.target_speedup is None else
              f"target {report.target_speedup:g}x MACs (neuron sparsity "
              f"{report.sparsity:.3f})")
    print(f"pruned {args.checkpoint}: {kind} {options.method}, {amount}, "
          f"{options.finetune_epochs} fine-tuning epochs")
    print(_format_row("before", report.before))
    print(_format_row("after", report.after))
    speed = report.latency_speedup
    print(f"  MACs reduced {report.mac_reduction:.2f}x, non-zero parameters reduced "
          f"{report.nonzero_reduction:.2f}x"
          + (f", measured latency {speed:.2f}x faster" if speed else ""))
    print(f"wrote {report.output}")
    return 0


def cmd_train_pruner(args: argparse.Namespace) -> int:
    from weightspace.jobs.meta_pruner import MetaPrunerOptions, train_meta_pruner

    options = options_from_args(args, MetaPrunerOptions)
    report = train_meta_pruner(args.zoo, args.output, options, progress=show_progress(args))
    if args.json:
        print_json(report)
        return 0
    last = report.last or {}
    print(f"meta-trained a {report.mode} pruner on {report.networks} networks of "
          f"{report.zoo} / {report.group} in {report.seconds:.0f} s")
    if last:
        print(f"  last epoch: task loss {last['task_loss']:.4f}, train accuracy of the outputs "
              f"{last['train_accuracy']:.4f}, group lasso {last['input_group_lasso']:.2f} -> "
              f"{last['group_lasso']:.2f}")
    print(f"wrote {report.output} (use it with: weightspace prune CHECKPOINT --structured "
          f"--method meta --metanet {report.output} ...)")
    return 0


def _add_prune(sub: argparse._SubParsersAction) -> None:
    from weightspace.jobs.prune import PruneOptions

    p = sub.add_parser(
        "prune", help="prune a checkpoint (magnitude, structured, Taylor, metanetwork-guided)",
        description="Prune a checkpoint and report parameters, MACs, measured latency and test "
                    "accuracy before and after. Unstructured pruning zeroes the smallest "
                    "weights (masks stay applied while fine-tuning); --structured removes whole "
                    "neurons/channels from every parameter that touches them (a residual stream "
                    "across the whole stream) and saves the smaller architecture in the "
                    "checkpoint's metadata, so weightspace.prune.load_pruned loads it again. "
                    "Checkpoints are loaded without running code (safetensors, or torch.load "
                    "with weights_only=True).")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="the checkpoint (.safetensors or .pt state dict)")
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="pruned checkpoint (.safetensors "
                                                         "keeps a structured result loadable)")
    add_options(p, PruneOptions, choices=prune_choices())
    add_output_flags(p, "print the report as JSON", quiet_help="no progress bars")
    p.set_defaults(func=cmd_prune)


def _add_train_pruner(sub: argparse._SubParsersAction) -> None:
    from weightspace.jobs.meta_pruner import MetaPrunerOptions
    from weightspace.prune.meta import MODES

    p = sub.add_parser(
        "train-pruner", help="meta-train a metanetwork pruner on a zoo (Meta-Pruning)",
        description="Meta-train a graph metanetwork (GMN with an equivariant head) that maps a "
                    "network to one of the same architecture that is easier to prune "
                    "structurally (Liu et al., 'Meta Pruning via Graph Metanetworks', 2025): "
                    "the task loss of the output networks plus a group-lasso term over every "
                    "neuron's parameters, over the trained networks (last checkpoints, train "
                    "split) of one zoo group. Use the result with `weightspace prune "
                    "--structured --method meta --metanet PRUNER`.")
    p.add_argument("zoo", help="the zoo (.h5), e.g. from `weightspace zoo build digits-cnn`")
    p.add_argument("-o", "--output", required=True, help="the pruner (.safetensors)")
    add_options(p, MetaPrunerOptions, choices={"mode": list(MODES)})
    add_output_flags(p, "print the report as JSON", quiet_help="no progress bar")
    p.set_defaults(func=cmd_train_pruner)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``prune`` and ``train-pruner``."""
    _add_prune(sub)
    _add_train_pruner(sub)
