"""Jobs: files in, a report out — the layer between the algorithms and the CLI.

A *job* is one complete task on files: it checks its inputs (every checkpoint
against the architecture's spec, finite weights), loads the data it needs,
runs one or more algorithms from the packages below (``align``, ``merge``,
``prune``, ``zoo``, ``train``), writes its outputs atomically (a failed job
leaves no output file) and returns a frozen *report* dataclass whose
``to_dict()`` is the JSON the CLI prints with ``--json``. Jobs never print
(progress bars are tqdm, off by default; messages go to ``logging``), and
their errors are :class:`~weightspace.errors.WeightspaceError` naming the
Python argument at fault (``parameter="data"``), never a command-line flag:
the CLI maps parameter names to its flags.

The algorithm packages stay free of files, data sets and YAML: ``merge`` and
``prune`` take state dicts and modules; the jobs are what open files.

===============================  ===================================  ============================
job                              what it does                         report
===============================  ===================================  ============================
:func:`align_checkpoints`        permute checkpoint B into A's frame  :class:`AlignReport`
:func:`merge_checkpoints`        align, merge, BN reset / REPAIR      :class:`MergeReport`
:func:`merge_from_config`        the same from a mergekit-style YAML  :class:`MergeReport`
:func:`interpolate_checkpoints`  loss barrier, naive and aligned      :class:`InterpolationReport`
:func:`prune_checkpoint`         prune, fine-tune, measure, save      :class:`PruneReport`
:func:`train_meta_pruner`        meta-train a pruner on a zoo         :class:`MetaPrunerReport`
:func:`run_demo`                 the main job end to end              :class:`DemoReport`
===============================  ===================================  ============================

:func:`prune_model` is the prune job in memory (a module in, a
:class:`PruneOutcome` out), and :func:`load_checked` the checkpoint check
every job starts with.

The jobs with many settings take one frozen options dataclass
(:class:`PruneOptions`, :class:`MetaPrunerOptions`; every field has a default
and a ``metadata["help"]``), as mergekit's ``MergeOptions`` does, so the CLI
can generate its flags from them.

Dependencies: ``jobs`` may import every package below it; nothing in the
library imports ``jobs`` except the CLI.
"""

from weightspace.jobs.align import AlignReport, align_checkpoints
from weightspace.jobs.checkpoints import load_checked
from weightspace.jobs.demo import DemoReport, run_demo
from weightspace.jobs.interpolate import InterpolationReport, interpolate_checkpoints
from weightspace.jobs.merge import MergeReport, merge_checkpoints, merge_from_config
from weightspace.jobs.meta_pruner import MetaPrunerOptions, MetaPrunerReport, train_meta_pruner
from weightspace.jobs.prune import (
    PRUNE_METHODS,
    PruneOptions,
    PruneOutcome,
    PruneReport,
    prune_checkpoint,
    prune_model,
)

__all__ = [
    "PRUNE_METHODS",
    "AlignReport",
    "DemoReport",
    "InterpolationReport",
    "MergeReport",
    "MetaPrunerOptions",
    "MetaPrunerReport",
    "PruneOptions",
    "PruneOutcome",
    "PruneReport",
    "align_checkpoints",
    "interpolate_checkpoints",
    "load_checked",
    "merge_checkpoints",
    "merge_from_config",
    "prune_checkpoint",
    "prune_model",
    "run_demo",
    "train_meta_pruner",
]
