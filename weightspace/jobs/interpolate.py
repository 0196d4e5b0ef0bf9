"""The loss barrier between two checkpoints: the job behind ``weightspace
interpolate``.

Loss and accuracy along the linear path ``θ(λ) = (1 − λ)·θ_A + λ·θ_B``
(Frankle et al., ICML 2020; Entezari et al., ICLR 2022), naive, after weight
matching and after activation matching (Ainsworth et al., "Git Re-Basin",
ICLR 2023), with a BatchNorm reset at every interior point when the model
has BatchNorm and, when asked, with REPAIR (Jordan et al., ICLR 2023). The
barriers, a PNG plot and a JSON file of the paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from weightspace.align import activation_matching, weight_matching
from weightspace.align.batchnorm import batchnorm_modules
from weightspace.io import atomic_write
from weightspace.jobs.checkpoints import load_checked, load_data
from weightspace.jobs.report import report_dict
from weightspace.merge.barrier import barrier, interpolation_path, plot_barrier
from weightspace.spec import WeightSpaceSpec


@dataclass(frozen=True)
class InterpolationReport:
    """What :func:`interpolate_checkpoints` measured (:meth:`to_dict` is the
    JSON file it writes, plus ``json``).

    Args:
        a: checkpoint A.
        b: checkpoint B.
        data: the data set of the test losses.
        steps: points on each path.
        batchnorm_reset: whether interior points had their BatchNorm
            statistics re-estimated.
        barriers: ``{path name: barrier(...)}`` (:func:`weightspace.merge.barrier`).
        paths: ``{path name: [{"lam", "loss", "accuracy"}, ...]}``; the
            names are ``"naive"``, ``"weight matching"``, ``"activation
            matching"`` and, with REPAIR, ``"weight matching + REPAIR"``.
        plot: the PNG written, if asked.
        json: the JSON file written, if asked.
    """

    a: str
    b: str
    data: str
    steps: int
    batchnorm_reset: bool
    barriers: dict[str, dict[str, Any]]
    paths: dict[str, list[dict[str, float]]]
    plot: str | None = None
    json: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return report_dict(self, omit_if_none=("plot", "json"))


def interpolate_checkpoints(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str],
                            model: nn.Module, spec: WeightSpaceSpec, data: str = "digits",
                            steps: int = 25, seed: int = 0,
                            plot: str | os.PathLike[str] | None = None,
                            json_path: str | os.PathLike[str] | None = None,
                            repair: bool = False) -> InterpolationReport:
    """Loss and accuracy along the linear path from A to B, naive and aligned.

    Args:
        path_a: checkpoint A.
        path_b: checkpoint B.
        model: a module of the architecture (its own weights are not used).
        spec: ``model``'s spec.
        data: ``"digits"`` or an ``.npz``: test points of the paths, training
            inputs of activation matching, BatchNorm reset and REPAIR.
        steps: evenly spaced points on each path, ends included.
        seed: order of the matching sweeps.
        plot: a PNG of the paths to write.
        json_path: a JSON file of the report to write.
        repair: also the REPAIRed weight-matched path.

    Returns:
        The :class:`InterpolationReport`.
    """
    state_a, state_b = load_checked(path_a, spec), load_checked(path_b, spec)
    split = load_data(data, spec)
    aligned = spec.permute(state_b, weight_matching(state_a, state_b, spec, seed=seed).permutation)
    bn_inputs = split.x_train if bool(batchnorm_modules(model)) else None
    common = dict(inputs=split.x_test, targets=split.y_test, steps=steps,
                  batchnorm_reset_inputs=bn_inputs)
    curves: dict[str, list[dict[str, float]]] = {}
    curves["naive"] = interpolation_path(model, state_a, state_b, **common)
    curves["weight matching"] = interpolation_path(model, state_a, aligned, **common)
    by_activations = spec.permute(state_b, activation_matching(
        model, state_a, state_b, spec, split.x_train, seed=seed).permutation)
    curves["activation matching"] = interpolation_path(model, state_a, by_activations, **common)
    if repair:
        curves["weight matching + REPAIR"] = interpolation_path(
            model, state_a, aligned, repair_inputs=split.x_train, spec=spec, **common)
    report = InterpolationReport(
        a=str(path_a), b=str(path_b), data=data, steps=steps,
        batchnorm_reset=bn_inputs is not None,
        barriers={name: barrier(path) for name, path in curves.items()}, paths=curves)
    if plot is not None:
        title = f"{Path(path_a).name} -> {Path(path_b).name}"
        report = dataclasses.replace(report, plot=str(plot_barrier(curves, plot, title=title)))
    if json_path is not None:
        with atomic_write(json_path, "w") as handle:
            json.dump(report.to_dict(), handle, indent=1)
        report = dataclasses.replace(report, json=str(json_path))
    return report


__all__ = ["InterpolationReport", "interpolate_checkpoints"]
