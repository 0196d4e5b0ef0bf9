"""``weightspace zoo ...``: build, inspect, verify, merge, export and import
HDF5 checkpoint zoos. Each verb is one library call plus printing.

The ``--size``, ``--format`` and import-format choices come from
:data:`weightspace.zoo.recipes.SIZES`, :data:`weightspace.io.SAVE_SUFFIXES`
and :data:`weightspace.zoo.importers.IMPORT_FORMATS`.
"""

from __future__ import annotations

import argparse

from weightspace.cli._common import (
    add_output_flags,
    print_json,
    report_error,
    show_progress,
)


def cmd_build(args: argparse.Namespace) -> int:
    from weightspace.zoo.build import build_zoo, parse_shard

    result = build_zoo(args.recipe, args.output, size=args.size, workers=args.workers,
                       shard=parse_shard(args.shard), data=args.data, overwrite=args.overwrite,
                       progress=show_progress(args))
    if args.json:
        print_json(result.to_dict())
    else:
        skipped = f" ({result.jobs_skipped} already done)" if result.jobs_skipped else ""
        print(f"built {result.recipe} ({result.size}, shard {result.shard[0]}/{result.shard[1]}): "
              f"{result.jobs_run} job(s) run{skipped}, {result.rows_written} rows written, "
              f"{result.rows_in_zoo} in {result.path}; {result.seconds:.1f} s, "
              f"{result.networks_per_second:.1f} networks/s with {result.workers} worker(s)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from weightspace.zoo.ops import format_info, zoo_info

    info = zoo_info(args.zoo)
    if args.json:
        print_json(info)
    else:
        print(format_info(info))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from weightspace.zoo.ops import verify_zoo

    report = verify_zoo(args.zoo, progress=show_progress(args))
    if args.json:
        print_json(report.to_dict())
    else:
        for problem in report.problems:
            print(f"problem: {problem}")
        for bad in report.bad_rows[:50]:
            print(f"bad row: group {bad.group!r} row {bad.row} (index {bad.index}, key "
                  f"{bad.key!r}): {bad.reason}")
        if len(report.bad_rows) > 50:
            print(f"... and {len(report.bad_rows) - 50} more bad rows (--json lists all)")
        status = "OK" if report.ok else f"FAILED: {len(report.bad_rows)} bad row(s), " \
                                         f"{len(report.problems)} problem(s)"
        print(f"{args.zoo}: {report.rows_checked} rows checked, {status}")
    if not report.ok:
        return report_error(args, f"{args.zoo} has {len(report.bad_rows)} bad row(s) and "
                                  f"{len(report.problems)} problem(s)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from weightspace.zoo.ops import merge_zoos

    rows = merge_zoos(args.inputs, args.output, overwrite=args.overwrite,
                      progress=show_progress(args))
    if args.json:
        print_json({"output": args.output, "rows": rows, "inputs": args.inputs})
    else:
        print(f"merged {len(args.inputs)} zoo(s) -> {args.output}: {rows} rows")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from weightspace.zoo import Zoo
    from weightspace.zoo.ops import export_zoo

    index = None
    if args.rows or args.group or args.last_checkpoint:
        with Zoo(args.zoo) as zoo:
            index = zoo.select(group=args.group, last_checkpoint=args.last_checkpoint,
                               finite=None)
        if args.rows:
            index = index[_parse_rows(args.rows, len(index), _selection_name(args))]
        if len(index) == 0:
            return report_error(args, f"{args.zoo}: no row matches {_selection_name(args)}")
    paths = export_zoo(args.zoo, args.output, index=index, suffix=args.format,
                       progress=show_progress(args))
    if args.json:
        print_json({"output": args.output, "files": [str(p) for p in paths]})
    else:
        print(f"exported {len(paths)} checkpoint(s) to {args.output} (index.json lists them)")
    return 0


def _selection_name(args: argparse.Namespace) -> str:
    """What ``--rows`` counts in, for messages: the group, the last
    checkpoints, or the whole zoo."""
    parts = [f"group {args.group!r}"] if args.group else []
    if args.last_checkpoint:
        parts.append("the last checkpoint of each run")
    return " and ".join(parts) if parts else "the zoo"


def _parse_rows(text: str, count: int, within: str) -> list[int]:
    """Positions ``0..count-1`` named by ``--rows`` (``0,5,10:20``), counted
    within the selection ``--group`` / ``--last-checkpoint`` made, so that
    ``--group cnn-tanh --rows 0:10`` is that group's first ten rows."""
    from weightspace.zoo import ZooError

    rows: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        start, colon, stop = part.partition(":")
        try:
            bounds = [int(b) if b else None for b in (start, stop)]
        except ValueError:
            raise ZooError(f"{part!r} is not a row index or start:stop range",
                           parameter="rows") from None
        if colon:
            rows += range(count)[slice(*bounds)]
        elif not -count <= bounds[0] < count:
            raise ZooError(f"row {bounds[0]} is out of range: {within} has {count} row(s), "
                           f"numbered 0..{count - 1}", parameter="rows")
        else:
            rows.append(bounds[0] % count)
    return rows


def cmd_import(args: argparse.Namespace) -> int:
    from weightspace.zoo.importing import import_zoo

    result = import_zoo(args.format, args.path, args.output, overwrite=args.overwrite,
                        on_error=args.on_error, progress=show_progress(args))
    if args.json:
        print_json(result)
    else:
        print(f"imported {result['rows']} row(s) in group(s) {', '.join(result['groups'])} "
              f"from {args.path} ({args.format}) -> {args.output}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``zoo`` and its verbs (``zoo build`` …)."""
    zoo = sub.add_parser("zoo", help="build, inspect, verify, merge, export and import zoos",
                         description="HDF5 checkpoint zoos: one group per architecture, one "
                                     "[N, P] row per checkpoint, metadata columns, per-row "
                                     "checksums (docs/zoo-format.md).")
    verbs = zoo.add_subparsers(dest="zoo_command", metavar="VERB", required=True)
    _add_build(verbs)
    _add_info_and_verify(verbs)
    _add_merge_and_export(verbs)
    _add_import(verbs)


def _add_build(verbs: argparse._SubParsersAction) -> None:
    from weightspace.zoo.recipes import SIZES, available_recipes

    p = verbs.add_parser("build", help="train a zoo from a recipe (digits-inr, digits-cnn ...)",
                         description="Build a zoo from a recipe in datasets/ (or a recipe YAML "
                                     "path). A killed build resumes when re-run with the same "
                                     "arguments.")
    p.add_argument("recipe", help=f"recipe name ({', '.join(available_recipes())}) or path to a "
                                  f"recipe YAML")
    p.add_argument("-o", "--output", required=True, help="zoo file to write (.h5)")
    p.add_argument("--size", default="tiny", choices=list(SIZES),
                   help="tiny builds in seconds; full is what the benchmark tables use")
    p.add_argument("--workers", type=int, default=1, help="training processes (default 1)")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="build only jobs i, i+n, i+2n, ... (merge shards with `zoo merge`)")
    p.add_argument("--data", default=None, metavar="FILE.npz",
                   help="train on x_train, y_train, x_test, y_test from this .npz instead of "
                        "scikit-learn's digits")
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    add_output_flags(p, "print the build summary as JSON", quiet_help="no progress bar")
    p.set_defaults(func=cmd_build)


def _add_info_and_verify(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("info", help="groups, rows, columns and value ranges of a zoo",
                         description="Show a zoo's groups, rows, parameters, metadata columns "
                                     "(ranges, distinct values) and file size.")
    p.add_argument("zoo", help="zoo file (.h5)")
    add_output_flags(p, "print as JSON")
    p.set_defaults(func=cmd_info)

    p = verbs.add_parser("verify", help="check every row's checksum; name the bad rows",
                         description="Read every row, compare it with its stored CRC-32 and "
                                     "check column lengths. Exit status 1 when anything is bad.")
    p.add_argument("zoo", help="zoo file (.h5)")
    add_output_flags(p, "print the report as JSON", quiet_help="no progress bar")
    p.set_defaults(func=cmd_verify)


def _add_merge_and_export(verbs: argparse._SubParsersAction) -> None:
    from weightspace.io import SAVE_SUFFIXES

    p = verbs.add_parser("merge", help="join zoos (e.g. build shards) into one",
                         description="Join zoos into a new file. Identical rows found in several "
                                     "inputs are kept once; a key with different weights, or a "
                                     "group holding different architectures, is an error and "
                                     "nothing is written.")
    p.add_argument("inputs", nargs="+", metavar="ZOO", help="input zoo files")
    p.add_argument("-o", "--output", required=True, help="merged zoo file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_output_flags(p, "print a JSON summary", quiet_help="no progress bar")
    p.set_defaults(func=cmd_merge)

    p = verbs.add_parser("export", help="write zoo rows as checkpoint files",
                         description="Write rows as OUT/<group>/<key>.safetensors (or .pt) with "
                                     "their metadata, plus OUT/index.json.")
    p.add_argument("zoo", help="zoo file (.h5)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--rows", default=None,
                   help="row positions and ranges, e.g. 0,5,10:20, counted within the rows "
                        "--group and --last-checkpoint select (the whole zoo without them): "
                        "--group G --rows 0:10 is G's first ten rows")
    p.add_argument("--group", default=None, help="only this group")
    p.add_argument("--last-checkpoint", action="store_true",
                   help="only the last checkpoint of each run")
    p.add_argument("--format", default=".safetensors", choices=list(SAVE_SUFFIXES),
                   help="checkpoint file format (default .safetensors)")
    add_output_flags(p, "print the written files as JSON", quiet_help="no progress bar")
    p.set_defaults(func=cmd_export)


def _add_import(verbs: argparse._SubParsersAction) -> None:
    from weightspace.zoo.importers import IMPORT_FORMATS

    formats = "; ".join(f"{name} ({IMPORT_FORMATS[name].description})" for name in IMPORT_FORMATS)
    p = verbs.add_parser("import", help="convert a published zoo to our format",
                         description=f"Import a published zoo: {formats}. Pickled files are "
                                     f"read with torch.load(weights_only=True): an import never "
                                     f"runs code from the files.")
    p.add_argument("format", choices=list(IMPORT_FORMATS), help="the published format")
    p.add_argument("path", help="the published zoo's folder")
    p.add_argument("-o", "--output", required=True, help="zoo file to write (.h5)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="a broken file in the folder: stop (default) or skip it with a warning "
                        "(small-cnn-zoo reads one array: only raise)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_output_flags(p, "print a JSON summary", quiet_help="no progress bar")
    p.set_defaults(func=cmd_import)
