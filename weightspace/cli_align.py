"""``weightspace align``, ``merge`` and ``interpolate``: each verb is one call
into :mod:`weightspace.jobs` plus printing."""

from __future__ import annotations

import argparse
import json


def _spec(args: argparse.Namespace):
    from weightspace.cli import _spec_from_args
    from weightspace.models.resolve import parse_model_args, resolve_model

    spec = _spec_from_args(args)
    model, _ = resolve_model(args.model, parse_model_args(args.model_args))
    return model, spec


def _scores_lines(scores: dict | None) -> list[str]:
    return [f"  {name:<16} test loss {s['loss']:.4f}  accuracy {s['accuracy']:.4f}"
            for name, s in (scores or {}).items()]


def cmd_align(args: argparse.Namespace) -> int:
    from weightspace.jobs.align import align_checkpoints

    model, spec = _spec(args)
    report = align_checkpoints(args.a, args.b, model, spec, args.output, method=args.method,
                               seed=args.seed, data=args.data)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"aligned {args.b} to {args.a} by {args.method} matching in {report.sweeps} sweeps "
          f"({report.permuted_spaces} spaces permuted); distance to A "
          f"{report.distance_before:.4f} -> {report.distance_after:.4f}; wrote "
          f"{report.output}")
    print("\n".join(_scores_lines(report.scores)))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from weightspace.cli import CLIError

    if args.config:
        from weightspace.jobs.merge import merge_from_config

        if args.checkpoints:
            raise CLIError("give checkpoints on the command line or --config, not both")
        report = merge_from_config(args.config, args.output, seed=args.seed)
    else:
        from weightspace.jobs.merge import merge_checkpoints

        if not args.model:
            raise CLIError("--model is required (or use --config merge.yaml)")
        model, spec = _spec(args)
        parameters = {k: v for k, v in (("density", args.density), ("scaling", args.scaling))
                      if v is not None}
        if args.method == "dare":
            parameters["seed"] = args.seed
        report = merge_checkpoints(
            args.checkpoints, model, spec, args.output, method=args.method, base=args.base,
            align=args.align, weights=args.weights, parameters=parameters, repair=args.repair,
            data=args.data, seed=args.seed)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    extra = f" + {', '.join(report.corrections)}" if report.corrections else ""
    print(f"merged {len(report.models)} model(s) by {report.method} (align: "
          f"{report.align}{extra}) -> {report.output}")
    print("\n".join(_scores_lines(report.scores)))
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from weightspace.jobs.interpolate import interpolate_checkpoints

    model, spec = _spec(args)
    report = interpolate_checkpoints(args.a, args.b, model, spec, data=args.data,
                                     steps=args.steps, seed=args.seed, plot=args.plot,
                                     json_path=args.json_path, repair=args.repair)
    for name, values in report.barriers.items():
        print(f"{name:<26} loss barrier {values['loss_barrier']:.4f}  accuracy barrier "
              f"{values['accuracy_barrier']:.4f}")
    for written in (report.plot, report.json):
        if written is not None:
            print(f"wrote {written}")
    return 0


def add_align_parsers(sub: argparse._SubParsersAction, model_arguments) -> None:
    from weightspace.merge.config import ALIGN_METHODS, NO_ALIGNMENT
    from weightspace.merge.methods import MERGE_METHODS

    p = sub.add_parser("align", help="permute checkpoint B's neurons to match A (Git Re-Basin)",
                       description="Align checkpoint B to A by weight matching over every "
                                   "permutable space (residual streams and BatchNorm statistics "
                                   "included). The aligned B computes exactly what B computes.")
    p.add_argument("a", help="reference checkpoint (.safetensors or .pt state dict)")
    p.add_argument("b", help="checkpoint to permute")
    model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="aligned B (.safetensors or .pt)")
    p.add_argument("--method", default="weight", choices=ALIGN_METHODS.names(),
                   help="weight matching (data-free) or activation matching (needs --data)")
    p.add_argument("--data", default=None,
                   help="digits or file.npz: activations for --method activation, and B's "
                        "accuracy before and after")
    p.add_argument("--seed", type=int, default=0, help="order of the matching sweeps")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("merge", help=f"align and merge checkpoints "
                                     f"({', '.join(MERGE_METHODS.names())})",
                       description="Merge checkpoints, after weight matching them into one "
                                   "frame (--align weight, the default). With --data, "
                                   "BatchNorm statistics are re-estimated and every model is "
                                   "scored. `--config merge.yaml` reads a mergekit-style config "
                                   "and copies it beside the output.")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="models to merge")
    model_arguments(p, required=False)
    p.add_argument("-o", "--output", required=True, help="merged checkpoint")
    p.add_argument("--config", default=None, help="mergekit-style YAML (models, merge_method, "
                                                  "base_model, parameters, architecture ...)")
    p.add_argument("--align", default="weight", choices=[*ALIGN_METHODS.names(), NO_ALIGNMENT],
                   help="bring the models into one frame first (activation needs --data)")
    p.add_argument("--method", default="average", choices=MERGE_METHODS.names())
    p.add_argument("--base", default=None, help="base model of task vectors (task-arith, "
                                                "ties, dare)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per model")
    p.add_argument("--density", type=float, default=None, help="ties/dare density")
    p.add_argument("--scaling", type=float, default=None, help="task vector scaling (lambda)")
    p.add_argument("--repair", action="store_true", help="REPAIR the merged model (two models, "
                                                         "average, needs --data)")
    p.add_argument("--data", default=None, help="digits or file.npz: BN reset, REPAIR, scores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("interpolate", help="loss/accuracy barrier along A -> B, naive and "
                                           "aligned",
                       description="Evaluate the linear path between A and B (25 points), naive, "
                                   "after weight matching and after activation matching, with "
                                   "BatchNorm reset when the model has BatchNorm; write a plot "
                                   "and JSON.")
    p.add_argument("a")
    p.add_argument("b")
    model_arguments(p)
    p.add_argument("--data", default="digits", help="digits (default) or file.npz")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repair", action="store_true", help="also the REPAIRed aligned path")
    p.add_argument("--plot", default=None, help="PNG to write")
    p.add_argument("--json", dest="json_path", default=None, metavar="FILE",
                   help="JSON file to write with the paths and barriers")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_interpolate)
