"""``weightspace train``: train a metanetwork on a zoo — one call to
:func:`weightspace.train.train_metanetwork` plus printing. Runs under
``torchrun`` as it is (DDP); only rank 0 prints.

Settings come from ``--config`` YAML, then the flags, then ``KEY=VALUE``
overrides (:func:`weightspace.train.load_config`). The ``--model`` and
``--task`` choices are :data:`weightspace.nn.registry.METANETWORKS` and
:data:`weightspace.train.TASKS`.
"""

from __future__ import annotations

import argparse
import os

from weightspace.cli._common import CLIError, add_output_flags, print_json, show_progress

#: Flags that set a field of the training config of the same name.
_CONFIG_FLAGS = ("zoo", "model", "task", "target", "out", "device", "epochs", "seed")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args: argparse.Namespace) -> int:
    from weightspace.train import load_config, train_metanetwork

    values = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
    if args.resume:
        values["resume"] = True
    values["progress"] = show_progress(args)
    config = load_config(args.config, overrides=args.overrides, **values)
    if not config.zoo:
        raise CLIError("no zoo: give --zoo FILE.h5 or zoo: in the config")
    result = train_metanetwork(config)
    if not _is_main_process():
        return 0
    if args.json:
        print_json({k: v for k, v in result.to_dict().items() if k != "config"}, default=float)
        return 0
    scores = "  ".join(f"{k} {v:.4f}" for k, v in result.test.items())
    target = config.target if config.task != "edit" else ""
    print(f"{config.model} on {config.zoo} ({config.task} {target}): "
          f"{result.num_parameters:,} parameters, best epoch {result.best_epoch} of "
          f"{len(result.history)}, {result.graphs_per_second:.0f} graphs/s training")
    print(f"  test: {scores}")
    print(f"  wrote {config.out}/ (config.yaml, log.csv, best.pt, checkpoint.pt, metrics.json)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``train``."""
    from weightspace.nn.registry import METANETWORKS
    from weightspace.train import TASKS

    models, tasks = list(METANETWORKS), list(TASKS)
    p = sub.add_parser(
        "train", help="train a metanetwork on a zoo (classify, regress a column, edit INRs)",
        description=f"Train a metanetwork ({', '.join(models)}) on a zoo. Settings come from "
                    "--config YAML, then the options, then KEY=VALUE overrides (e.g. "
                    "model_args.hidden=64 augment.permutation={}). Under `torchrun "
                    "--nproc_per_node N` it trains with DistributedDataParallel (gloo on CPU, "
                    "NCCL on GPU).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings to override")
    p.add_argument("--config", default=None, help="training config YAML")
    p.add_argument("--zoo", default=None, help="the zoo (.h5)")
    p.add_argument("--model", default=None, choices=models, metavar="MODEL",
                   help="metanetwork name (default gmn)")
    p.add_argument("--task", default=None, choices=tasks, help="default classify")
    p.add_argument("--target", default=None, help="zoo column to predict (default label)")
    p.add_argument("--epochs", type=int, default=None, help="at most this many epochs")
    p.add_argument("--seed", type=int, default=None, help="seed of model, split and augmentation")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--out", default=None, help="output directory (default runs/metanet)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    add_output_flags(p, "print the result as JSON", quiet_help="no progress bars")
    p.set_defaults(func=cmd_train)
