"""``weightspace prune`` and ``train-pruner``: one call each to
:func:`weightspace.prune.pipeline.prune_checkpoint` /
:func:`weightspace.prune.meta.train_meta_pruner` plus printing.

The choices of ``--method``, ``--importance``, ``--scope`` and ``--mode``
come from the library (:data:`~weightspace.prune.PRUNE_METHODS`,
:data:`~weightspace.prune.IMPORTANCE_METHODS`,
:data:`~weightspace.prune.magnitude.SCOPES`,
:data:`~weightspace.prune.meta.MODES`), see :func:`prune_choices`.
"""

from __future__ import annotations

import argparse

from weightspace.cli._common import (
    add_model_arguments,
    add_output_flags,
    model_and_spec,
    print_json,
    show_progress,
)


def prune_choices() -> dict[str, list[str]]:
    """Allowed values of the prune flags, by library parameter name.

    ``importance`` lists the magnitude criteria: the importance criteria that
    are not a ``--method`` of their own (Taylor, random). Structured pruning
    adds the scope ``space`` to the weight scopes.
    """
    from weightspace.prune import IMPORTANCE_METHODS, PRUNE_METHODS
    from weightspace.prune.magnitude import SCOPES

    methods = list(PRUNE_METHODS)
    return {"method": methods,
            "importance": [c for c in IMPORTANCE_METHODS if c not in methods],
            "scope": [*SCOPES, "space"]}


def _format_row(label: str, m: dict) -> str:
    latency = f"{m['latency_ms']:.2f} ms" if m.get("latency_ms") is not None else "-"
    return (f"  {label:<7} accuracy {m['accuracy']:.4f}  parameters {m['parameters']:,} "
            f"(non-zero {m['nonzero']:,})  MACs {m['macs']:,}  latency {latency}")


def cmd_prune(args: argparse.Namespace) -> int:
    from weightspace.prune.pipeline import prune_checkpoint

    built = model_and_spec(args)
    report = prune_checkpoint(
        args.checkpoint, built.module, built.spec, args.output, sparsity=args.sparsity,
        speedup=args.speedup, structured=args.structured, method=args.method,
        importance=args.importance, scope=args.scope, metanet=args.metanet, data=args.data,
        finetune_epochs=args.finetune_epochs, lr=args.lr, seed=args.seed,
        latency_batch=args.latency_batch, progress=show_progress(args))
    if args.json:
        print_json(report)
        return 0
    kind = "structured" if args.structured else "unstructured"
    amount = (f"sparsity {report['sparsity']:.3f}" if report["target_speedup"] is None else
              f"target {report['target_speedup']:g}x MACs (neuron sparsity "
              f"{report['sparsity']:.3f})")
    print(f"pruned {args.checkpoint}: {kind} {args.method}, {amount}, "
          f"{args.finetune_epochs} fine-tuning epochs")
    print(_format_row("before", report["before"]))
    print(_format_row("after", report["after"]))
    speed = report["latency_speedup"]
    print(f"  MACs reduced {report['mac_reduction']:.2f}x, non-zero parameters reduced "
          f"{report['nonzero_reduction']:.2f}x"
          + (f", measured latency {speed:.2f}x faster" if speed else ""))
    print(f"wrote {report['output']}")
    return 0


def cmd_train_pruner(args: argparse.Namespace) -> int:
    from weightspace.prune.meta import train_meta_pruner

    report = train_meta_pruner(
        args.zoo, args.output, group=args.group, mode=args.mode, hidden=args.hidden,
        num_layers=args.layers, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        sparsity_weight=args.sparsity_weight, sparsity_alpha=args.sparsity_alpha,
        sparsity_ramp=args.sparsity_ramp, min_accuracy=args.min_accuracy, data=args.data,
        seed=args.seed, progress=show_progress(args))
    if args.json:
        print_json({k: v for k, v in report.items() if k != "rows"})
        return 0
    last = report["last"] or {}
    print(f"meta-trained a {report['mode']} pruner on {report['networks']} networks of "
          f"{report['zoo']} / {report['group']} in {report['seconds']:.0f} s")
    if last:
        print(f"  last epoch: task loss {last['task_loss']:.4f}, train accuracy of the outputs "
              f"{last['train_accuracy']:.4f}, group lasso {last['input_group_lasso']:.2f} -> "
              f"{last['group_lasso']:.2f}")
    print(f"wrote {report['output']} (use it with: weightspace prune CHECKPOINT --structured "
          f"--method meta --metanet {report['output']} ...)")
    return 0


def _add_prune(sub: argparse._SubParsersAction) -> None:
    choices = prune_choices()
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
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of weights zeroed, or with --structured of hidden neurons "
                        "removed")
    p.add_argument("--speedup", type=float, default=None,
                   help="with --structured, instead of --sparsity: the MAC reduction to reach")
    p.add_argument("--structured", action="store_true", help="remove neurons/channels")
    p.add_argument("--method", default="magnitude", choices=choices["method"],
                   help="importance: magnitude (default), first-order Taylor (uses --data), or "
                        "a trained metanetwork first (--metanet), or random (the control)")
    p.add_argument("--importance", default="l2", choices=choices["importance"],
                   help="structured magnitude criterion: L1/L2 norm of each neuron's "
                        "parameters, or its BatchNorm scale (default l2)")
    p.add_argument("--scope", default=None, choices=choices["scope"],
                   help="unstructured: global (default) or layer; structured: space (the same "
                        "fraction of every space, default) or global")
    p.add_argument("--metanet", default=None, help="a trained meta-pruner (.safetensors)")
    p.add_argument("--data", default="digits", help="digits (default) or file.npz: accuracy, "
                                                    "Taylor scores and fine-tuning")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs (Adam)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--seed", type=int, default=0, help="fine-tuning data order")
    p.add_argument("--latency-batch", type=int, default=256,
                   help="batch size of the latency measurement (0 skips it)")
    add_output_flags(p, "print the report as JSON", quiet_help="no progress bars")
    p.set_defaults(func=cmd_prune)


def _add_train_pruner(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--group", default=None, help="the zoo group (architecture) to train on")
    p.add_argument("--mode", default="edit", choices=list(MODES),
                   help="edit: change every parameter (the paper's); gate: only rescale each "
                        "neuron's group (default edit)")
    p.add_argument("--hidden", type=int, default=32, help="GMN channels (default 32)")
    p.add_argument("--layers", type=int, default=3, help="GMN layers (default 3)")
    p.add_argument("--epochs", type=int, default=100, help="passes over the networks")
    p.add_argument("--batch-size", type=int, default=8, help="networks per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--sparsity-weight", type=float, default=1e-2,
                   help="weight of the group-lasso term")
    p.add_argument("--sparsity-alpha", type=float, default=0.0,
                   help="DepGraph's adaptive weighting: the least important neurons' norms "
                        "count up to 2**alpha times more (default 0: plain group lasso)")
    p.add_argument("--sparsity-ramp", type=float, default=0.0,
                   help="fraction of training over which the group-lasso weight grows from 0 "
                        "(default 0: constant)")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="train only on networks with at least this test accuracy")
    p.add_argument("--data", default="digits", help="digits (default) or file.npz: the "
                                                    "training images of the task loss")
    p.add_argument("--seed", type=int, default=0)
    add_output_flags(p, "print the report as JSON", quiet_help="no progress bar")
    p.set_defaults(func=cmd_train_pruner)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``prune`` and ``train-pruner``."""
    _add_prune(sub)
    _add_train_pruner(sub)
