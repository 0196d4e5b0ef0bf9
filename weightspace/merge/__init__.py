"""Merging models in weight space.

* :mod:`~weightspace.merge.methods` — data-free merges of state dicts:
  interpolation, weighted averaging, task arithmetic (Ilharco et al. 2023),
  TIES-Merging (Yadav et al. 2023) and DARE (Yu et al. 2024).
* :mod:`~weightspace.merge.barrier` — the linear interpolation path between
  two models, its loss/accuracy barrier (Frankle et al. 2020; Entezari et al.
  2022; Ainsworth et al. 2023) and a plot of it.
* :mod:`~weightspace.merge.config` — mergekit-style YAML merge configs.

Interpolating two independently trained networks needs them aligned first
(:mod:`weightspace.align`, which also holds REPAIR and the BatchNorm reset
that repair a merged model); every function here takes state dicts that may
or may not be aligned. Merging checkpoint *files* (checked, aligned,
corrected, scored, saved) is a job: :func:`weightspace.jobs.merge_checkpoints`.
"""

from weightspace.merge.barrier import (
    barrier,
    interpolation_path,
    plot_barrier,
)
from weightspace.merge.config import (
    ALIGN_METHODS,
    NO_ALIGNMENT,
    ArchitectureConfig,
    MergeConfig,
    MergeConfigError,
    ModelEntry,
    load_merge_config,
)
from weightspace.merge.methods import (
    MERGE_METHODS,
    MergeMethod,
    average,
    dare,
    interpolate,
    merge,
    task_arithmetic,
    ties,
)

__all__ = [
    "ALIGN_METHODS",
    "MERGE_METHODS",
    "NO_ALIGNMENT",
    "ArchitectureConfig",
    "MergeConfig",
    "MergeConfigError",
    "MergeMethod",
    "ModelEntry",
    "average",
    "barrier",
    "dare",
    "interpolate",
    "interpolation_path",
    "load_merge_config",
    "merge",
    "plot_barrier",
    "task_arithmetic",
    "ties",
]
