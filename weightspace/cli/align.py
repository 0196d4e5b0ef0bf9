"""``weightspace align``, ``merge`` and ``interpolate``: each verb is one call
into :mod:`weightspace.jobs` plus printing.

``merge`` takes its models, method and architecture either from the flags
(:func:`weightspace.jobs.merge.merge_checkpoints`) or from a mergekit-style
``--config merge.yaml`` (:func:`weightspace.jobs.merge.merge_from_config`).
"""

from __future__ import annotations

import argparse
from typing import Any

from weightspace.cli._common import (
    CLIError,
    ModelAndSpec,
    add_model_arguments,
    add_output_flags,
    model_and_spec,
    print_json,
)


def _scores_lines(scores: dict | None) -> list[str]:
    return [f"  {name:<16} test loss {s['loss']:.4f}  accuracy {s['accuracy']:.4f}"
            for name, s in (scores or {}).items()]


def cmd_align(args: argparse.Namespace) -> int:
    from weightspace.jobs.align import align_checkpoints

    built = model_and_spec(args)
    report = align_checkpoints(args.a, args.b, built.module, built.spec, args.output,
                               method=args.method, seed=args.seed, data=args.data)
    if args.json:
        print_json(report)
        return 0
    print(f"aligned {args.b} to {args.a} by {args.method} matching in {report.sweeps} sweeps "
          f"({report.permuted_spaces} spaces permuted); distance to A "
          f"{report.distance_before:.4f} -> {report.distance_after:.4f}; wrote "
          f"{report.output}")
    print("\n".join(_scores_lines(report.scores)))
    return 0


#: Flags that choose what ``merge`` does, with the config field that sets the
#: same (the config sets every one of them, explicitly or by its default).
_MERGE_SETTING_FLAGS = {"method": ("--method", "merge_method"), "base": ("--base", "base_model"),
                        "weights": ("--weights", "models[].parameters.weight"),
                        "density": ("--density", "parameters.density"),
                        "scaling": ("--scaling", "parameters.lambda"),
                        "align": ("--align", "align"), "repair": ("--repair", "repair"),
                        "data": ("--data", "data")}
#: What ``merge`` does with no flag and no config.
_MERGE_DEFAULTS = {"method": "average", "align": "weight"}


def _config_with_flags(args: argparse.Namespace) -> Any:
    """The ``--config`` merge config; ``--model`` fills in a missing ``architecture:``.

    Raises:
        CLIError: checkpoints or a setting flag beside ``--config`` (the config
            sets them all, so the flag would be ignored), or ``--model``
            beside a config that names its architecture.
    """
    import dataclasses

    from weightspace.merge import load_merge_config
    from weightspace.merge.config import ArchitectureConfig
    from weightspace.models.resolve import parse_input_shape, parse_model_args

    if args.checkpoints:
        raise CLIError("give checkpoints on the command line or --config, not both")
    for dest, (flag, field_name) in _MERGE_SETTING_FLAGS.items():
        if getattr(args, dest) not in (None, False):
            raise CLIError(f"{flag} is not used beside --config: set {field_name} in "
                           f"{args.config} instead, or drop --config")
    config = load_merge_config(args.config)
    if args.model is None:
        if args.model_args or args.input_shape:
            raise CLIError("--model-args and --input-shape go with --model")
        return config
    if config.architecture is not None:
        raise CLIError(f"--model is not used: {args.config} sets architecture "
                       f"({config.architecture.model!r}); drop --model or that field")
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    architecture = ArchitectureConfig(args.model, parse_model_args(args.model_args), shape)
    return dataclasses.replace(config, architecture=architecture)


def _merge_from_flags(args: argparse.Namespace) -> tuple[list[str], ModelAndSpec, dict[str, Any]]:
    """Checkpoints, model + spec and settings of the flags."""
    if not args.model:
        raise CLIError("--model is required (or use --config merge.yaml)")
    for dest, default in _MERGE_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    parameters = {k: v for k, v in (("density", args.density), ("scaling", args.scaling))
                  if v is not None}
    if args.method == "dare":
        parameters["seed"] = args.seed
    settings = dict(method=args.method, base=args.base, align=args.align, weights=args.weights,
                    parameters=parameters, repair=args.repair, data=args.data)
    return args.checkpoints, model_and_spec(args), settings


def cmd_merge(args: argparse.Namespace) -> int:
    if args.config:
        from weightspace.jobs.merge import merge_from_config

        report = merge_from_config(_config_with_flags(args), args.output, seed=args.seed)
    else:
        from weightspace.jobs.merge import merge_checkpoints

        paths, built, settings = _merge_from_flags(args)
        report = merge_checkpoints(paths, built.module, built.spec, args.output, seed=args.seed,
                                   **settings)
    if args.json:
        print_json(report)
        return 0
    extra = f" + {', '.join(report.corrections)}" if report.corrections else ""
    print(f"merged {len(report.models)} model(s) by {report.method} (align: "
          f"{report.align}{extra}) -> {report.output}")
    print("\n".join(_scores_lines(report.scores)))
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from weightspace.jobs.interpolate import interpolate_checkpoints

    built = model_and_spec(args)
    report = interpolate_checkpoints(args.a, args.b, built.module, built.spec, data=args.data,
                                     steps=args.steps, seed=args.seed, plot=args.plot,
                                     json_path=args.json_out, repair=args.repair)
    if args.json:
        print_json(report)
        return 0
    for name, values in report.barriers.items():
        # points (percentage points of accuracy), as the plot and the demo say
        print(f"{name:<26} loss barrier {values['loss_barrier']:.4f}  accuracy barrier "
              f"{100 * values['accuracy_barrier']:.1f} points")
    for written in (report.plot, report.json):
        if written is not None:
            print(f"wrote {written}")
    return 0


def _add_align(sub: argparse._SubParsersAction, align_methods: list[str]) -> None:
    p = sub.add_parser("align", help="permute checkpoint B's neurons to match A (Git Re-Basin)",
                       description="Align checkpoint B to A by weight matching over every "
                                   "permutable space (residual streams and BatchNorm statistics "
                                   "included). The aligned B computes exactly what B computes.")
    p.add_argument("a", help="reference checkpoint (.safetensors or .pt state dict)")
    p.add_argument("b", help="checkpoint to permute")
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="aligned B (.safetensors or .pt)")
    p.add_argument("--method", default="weight", choices=align_methods,
                   help="weight matching (data-free) or activation matching (needs --data)")
    p.add_argument("--data", default=None,
                   help="digits or file.npz: activations for --method activation, and B's "
                        "accuracy before and after")
    p.add_argument("--seed", type=int, default=0, help="order of the matching sweeps")
    add_output_flags(p, "print the report as JSON")
    p.set_defaults(func=cmd_align)


def _add_merge(sub: argparse._SubParsersAction, align_methods: list[str],
               merge_methods: list[str]) -> None:
    p = sub.add_parser("merge", help=f"align and merge checkpoints ({', '.join(merge_methods)})",
                       description="Merge checkpoints, after weight matching them into one "
                                   "frame (--align weight, the default). With --data, "
                                   "BatchNorm statistics are re-estimated and every model is "
                                   "scored. `--config merge.yaml` reads a mergekit-style config "
                                   "and copies it beside the output; the config sets the "
                                   "method and its settings (their flags are refused beside "
                                   "it), --model fills in a missing architecture:.")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="models to merge")
    add_model_arguments(p, required=False)
    p.add_argument("-o", "--output", required=True, help="merged checkpoint")
    p.add_argument("--config", default=None, help="mergekit-style YAML (models, merge_method, "
                                                  "base_model, parameters, architecture ...)")
    p.add_argument("--align", default=None, choices=align_methods,
                   help="bring the models into one frame first (activation needs --data) "
                        f"(default {_MERGE_DEFAULTS['align']})")
    p.add_argument("--method", default=None, choices=merge_methods,
                   help=f"how to merge (default {_MERGE_DEFAULTS['method']})")
    p.add_argument("--base", default=None, help="base model of task vectors (task-arith, "
                                                "ties, dare)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per model")
    p.add_argument("--density", type=float, default=None, help="ties/dare density")
    p.add_argument("--scaling", type=float, default=None, help="task vector scaling (lambda)")
    p.add_argument("--repair", action="store_true", help="REPAIR the merged model (two models, "
                                                         "average, needs --data)")
    p.add_argument("--data", default=None, help="digits or file.npz: BN reset, REPAIR, scores")
    p.add_argument("--seed", type=int, default=0, help="order of the matching sweeps (and "
                                                         "dare's random drops)")
    add_output_flags(p, "print the report as JSON")
    p.set_defaults(func=cmd_merge)


def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="loss/accuracy barrier along A -> B, naive and "
                                           "aligned",
                       description="Evaluate the linear path between A and B (25 points), naive, "
                                   "after weight matching and after activation matching, with "
                                   "BatchNorm reset when the model has BatchNorm; print each "
                                   "path's loss barrier and accuracy barrier (in points), and "
                                   "write a plot and JSON.")
    p.add_argument("a", help="checkpoint A (the path's start)")
    p.add_argument("b", help="checkpoint B (the path's end)")
    add_model_arguments(p)
    p.add_argument("--data", default="digits", help="digits or file.npz")
    p.add_argument("--steps", type=int, default=25, help="points on each path, ends included")
    p.add_argument("--repair", action="store_true", help="also the REPAIRed aligned path")
    p.add_argument("--plot", default=None, help="PNG to write")
    p.add_argument("--json-out", default=None, metavar="FILE",
                   help="JSON file to write with the paths and barriers")
    p.add_argument("--seed", type=int, default=0, help="order of the matching sweeps")
    add_output_flags(p, "print the report (paths and barriers, accuracy barrier as a "
                        "fraction) as JSON")
    p.set_defaults(func=cmd_interpolate)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``align``, ``merge`` and ``interpolate``; the method choices
    come from :data:`~weightspace.merge.config.ALIGN_METHODS` and
    :data:`~weightspace.merge.MERGE_METHODS`."""
    from weightspace.merge import MERGE_METHODS
    from weightspace.merge.config import ALIGN_METHODS, NO_ALIGNMENT

    _add_align(sub, ALIGN_METHODS.names())
    _add_merge(sub, [*ALIGN_METHODS.names(), NO_ALIGNMENT], MERGE_METHODS.names())
    _add_interpolate(sub)
