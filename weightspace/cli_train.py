"""``weightspace train``: train a metanetwork on a zoo — one call to
:func:`weightspace.train.train_metanetwork` plus printing. Runs under
``torchrun`` as it is (DDP)."""

from __future__ import annotations

import argparse
import json


def cmd_train(args: argparse.Namespace) -> int:
    from weightspace.cli import CLIError, _progress
    from weightspace.errors import WeightspaceError
    from weightspace.train import load_config, train_metanetwork

    values = {k: v for k, v in (("zoo", args.zoo), ("model", args.model), ("task", args.task),
                                ("target", args.target), ("out", args.out), ("device", args.device),
                                ("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    if args.resume:
        values["resume"] = True
    values["progress"] = _progress(args)
    try:
        config = load_config(args.config, overrides=args.overrides, **values)
        if not config.zoo:
            raise CLIError("no zoo: give --zoo FILE.h5 or zoo: in the config")
        result = train_metanetwork(config)
    except WeightspaceError:
        raise
    except ValueError as err:
        # weightspace.train (and the metanetwork registry) still report bad settings as
        # plain ValueError; until they raise WeightspaceError, this verb keeps its
        # one-line errors here rather than in main()
        raise CLIError(str(err)) from err
    if not _is_main():
        return 0
    summary = {k: v for k, v in result.to_dict().items() if k != "config"}
    if args.json:
        print(json.dumps(summary, indent=2, default=float))
        return 0
    scores = "  ".join(f"{k} {v:.4f}" for k, v in result.test.items())
    print(f"{config.model} on {config.zoo} ({config.task} {config.target if config.task != 'edit' else ''}"
          f"): {result.num_parameters:,} parameters, best epoch {result.best_epoch} of "
          f"{len(result.history)}, {result.graphs_per_second:.0f} graphs/s training")
    print(f"  test: {scores}")
    print(f"  wrote {config.out}/ (config.yaml, log.csv, best.pt, checkpoint.pt, metrics.json)")
    return 0


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from weightspace.train.tasks import TASKS

    p = sub.add_parser(
        "train", help="train a metanetwork on a zoo (classify, regress a column, edit INRs)",
        description="Train a metanetwork (gmn, transformer, nfn-hnp, nfn-np, dwsnet, statnn, "
                    "flat-mlp, deepsets) on a zoo. Settings come from --config YAML, then the "
                    "options, then KEY=VALUE overrides (e.g. model_args.hidden=64 "
                    "augment.permutation={}). Under `torchrun --nproc_per_node N` it trains "
                    "with DistributedDataParallel (gloo on CPU, NCCL on GPU).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings to override")
    p.add_argument("--config", default=None, help="training config YAML")
    p.add_argument("--zoo", default=None, help="the zoo (.h5)")
    p.add_argument("--model", default=None, help="metanetwork name (default gmn)")
    p.add_argument("--task", default=None, choices=TASKS.names(),
                   help="default classify")
    p.add_argument("--target", default=None, help="zoo column to predict (default label)")
    p.add_argument("--epochs", type=int, default=None, help="at most this many epochs")
    p.add_argument("--seed", type=int, default=None, help="seed of model, split and augmentation")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--out", default=None, help="output directory (default runs/metanet)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)
