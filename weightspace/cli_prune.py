"""``weightspace prune``: one call to :func:`weightspace.prune.pipeline.prune_checkpoint`
plus printing."""

from __future__ import annotations

import argparse
import json


def _format_row(label: str, m: dict) -> str:
    latency = f"{m['latency_ms']:.2f} ms" if m.get("latency_ms") is not None else "-"
    return (f"  {label:<7} accuracy {m['accuracy']:.4f}  parameters {m['parameters']:,} "
            f"(non-zero {m['nonzero']:,})  MACs {m['macs']:,}  latency {latency}")


def cmd_prune(args: argparse.Namespace) -> int:
    from weightspace.cli import _progress
    from weightspace.cli_align import _spec
    from weightspace.prune.pipeline import prune_checkpoint

    model, spec = _spec(args)
    report = prune_checkpoint(
        args.checkpoint, model, spec, args.output, sparsity=args.sparsity, speedup=args.speedup,
        structured=args.structured, method=args.method, importance=args.importance,
        scope=args.scope, metanet=args.metanet, data=args.data,
        finetune_epochs=args.finetune_epochs, lr=args.lr, seed=args.seed,
        latency_batch=args.latency_batch, progress=_progress(args))
    if args.json:
        print(json.dumps(report, indent=2))
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


def add_prune_parser(sub: argparse._SubParsersAction, model_arguments) -> None:
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
    p.add_argument("checkpoint", help="the checkpoint (.safetensors or .pt state dict)")
    model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="pruned checkpoint (.safetensors "
                                                         "keeps a structured result loadable)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of weights zeroed, or with --structured of hidden neurons "
                        "removed")
    p.add_argument("--speedup", type=float, default=None,
                   help="with --structured, instead of --sparsity: the MAC reduction to reach")
    p.add_argument("--structured", action="store_true", help="remove neurons/channels")
    p.add_argument("--method", default="magnitude", choices=["magnitude", "taylor", "meta", "random"],
                   help="importance: magnitude (default), first-order Taylor (uses --data), or "
                        "a trained metanetwork first (--metanet), or random (the control)")
    p.add_argument("--importance", default="l2", choices=["l1", "l2", "bn"],
                   help="structured magnitude criterion: L1/L2 norm of each neuron's "
                        "parameters, or its BatchNorm scale (default l2)")
    p.add_argument("--scope", default=None, choices=["global", "layer", "space"],
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
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prune)
