"""Linear mode connectivity: the interpolation path, its barrier, and a plot.

References: Frankle et al. 2020, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis"; Entezari et al. 2022, "The Role of Permutation Invariance
in Linear Mode Connectivity of Neural Networks"; Ainsworth et al. 2023, "Git
Re-Basin: Merging Models modulo Permutation Symmetries" (barrier over 25
points of λ ∈ [0, 1]); Jordan et al. 2023, "REPAIR" (BN reset and REPAIR at
each point of the path).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from weightspace.activations import Inputs, input_batches, module_device
from weightspace.align.batchnorm import reset_batchnorm
from weightspace.align.repair import apply_repair, endpoint_statistics, repair_points
from weightspace.classify import evaluate
from weightspace.errors import WeightspaceError
from weightspace.io import atomic_output_path
from weightspace.merge.methods import interpolate
from weightspace.spec.containers import WeightSpaceSpec

logger = logging.getLogger(__name__)

__all__ = ["barrier", "interpolation_path", "plot_barrier"]


def interpolation_path(model: nn.Module, state_a: Mapping[str, Tensor],
                       state_b: Mapping[str, Tensor], inputs: Tensor, targets: Tensor,
                       steps: int = 25, batchnorm_reset_inputs: Inputs | None = None,
                       repair_inputs: Inputs | None = None, spec: WeightSpaceSpec | None = None,
                       batch_size: int = 256) -> list[dict[str, float]]:
    """Loss and accuracy along ``θ(λ) = (1 − λ)·θ_A + λ·θ_B`` for ``steps``
    evenly spaced λ in ``[0, 1]`` (classification, cross-entropy).

    Align B to A first to measure the aligned barrier; pass the raw B for the
    naive one. The endpoints are evaluated as given; at the interior points
    the merged model can be corrected before evaluation:

    * ``batchnorm_reset_inputs``: re-estimate BatchNorm statistics
      (:func:`~weightspace.align.reset_batchnorm`) on these inputs;
    * ``repair_inputs``: REPAIR (:func:`~weightspace.align.repair`) with the
      endpoint statistics measured once on these inputs (traced from
      ``model`` when ``spec`` is not given). REPAIR re-estimates BatchNorm
      statistics itself; when both are given the BN reset runs first.

    Args:
        model: a module of the architecture; it is not modified (a copy is
            loaded with each point's weights).
        inputs, targets: evaluation data ``[N, *sample]`` and labels ``[N]``.
        steps: number of λ values (at least 2; Git Re-Basin uses 25).
        batch_size: batch size of BN reset and REPAIR passes.

    Returns:
        One ``{"lam", "loss", "accuracy"}`` dict per λ, in increasing λ.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise WeightspaceError(f"steps must be an integer >= 2, got {steps!r}")
    if len(inputs) != len(targets) or len(targets) == 0:
        raise WeightspaceError(f"inputs ({len(inputs)} samples) and targets ({len(targets)}) must be "
                         f"non-empty and of the same length")
    work = copy.deepcopy(model)
    if spec is not None:
        spec.check_state_dict(work.state_dict())
    endpoints = points = repair_batches = None
    if repair_inputs is not None:
        repair_batches = input_batches(repair_inputs, batch_size)
        if spec is None:
            from weightspace.spec.trace import trace

            spec = trace(work, repair_batches[0][:2])
        model_a, model_b = copy.deepcopy(model), copy.deepcopy(model)
        model_a.load_state_dict(dict(state_a))
        model_b.load_state_dict(dict(state_b))
        points = repair_points(work, spec)
        endpoints = endpoint_statistics(model_a, model_b, points, repair_batches)
        del model_a, model_b
    device = module_device(work)
    if device is not None:
        inputs, targets = inputs.to(device), targets.to(device)
    bn_batches = (None if batchnorm_reset_inputs is None
                  else input_batches(batchnorm_reset_inputs, batch_size))
    path = []
    for i in range(steps):
        lam = i / (steps - 1)
        work.load_state_dict(interpolate(state_a, state_b, lam))
        if 0 < i < steps - 1:
            if bn_batches is not None:
                reset_batchnorm(work, bn_batches)
            if repair_batches is not None:
                apply_repair(work, points, endpoints, lam, repair_batches, reset_batchnorm=True)
        loss, accuracy = evaluate(work, inputs, targets)
        path.append({"lam": lam, "loss": loss, "accuracy": accuracy})
        logger.debug("interpolation λ=%.3f: loss %.4f, accuracy %.4f", lam, loss, accuracy)
    return path


def _check_path(path: Sequence[Mapping[str, float]], label: str = "path") -> None:
    if len(path) < 2:
        raise WeightspaceError(f"{label} needs at least 2 points, got {len(path)}")
    for point in path:
        for field in ("lam", "loss", "accuracy"):
            if field not in point:
                raise WeightspaceError(f"{label}: a point has no {field!r} (got {sorted(point)})")
    lams = [float(p["lam"]) for p in path]
    if lams[0] != 0.0 or lams[-1] != 1.0 or any(b <= a for a, b in zip(lams, lams[1:], strict=False)):
        raise WeightspaceError(f"{label}: λ must increase from 0 to 1, got {lams}")


def barrier(path: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Loss and accuracy barriers of an interpolation path.

    ``loss_barrier = max_λ L(λ) − ((1 − λ)·L(0) + λ·L(1))`` and
    ``accuracy_barrier = max_λ ((1 − λ)·acc(0) + λ·acc(1)) − acc(λ)`` (the
    definition of Entezari et al. 2022 and Ainsworth et al. 2023; 0 for a
    path that is nowhere worse than the straight line between its ends).
    Also returned: the λ where each maximum is reached, the variants measured
    from the mean of the endpoints (as plotted in Git Re-Basin), and the
    values at the endpoints and at the point nearest λ = 0.5.
    """
    _check_path(path)
    lams = [float(p["lam"]) for p in path]
    loss = [float(p["loss"]) for p in path]
    acc = [float(p["accuracy"]) for p in path]
    loss_gap = [v - ((1 - t) * loss[0] + t * loss[-1]) for t, v in zip(lams, loss, strict=True)]
    acc_gap = [((1 - t) * acc[0] + t * acc[-1]) - v for t, v in zip(lams, acc, strict=True)]
    i_loss = max(range(len(lams)), key=loss_gap.__getitem__)
    i_acc = max(range(len(lams)), key=acc_gap.__getitem__)
    mid = min(range(len(lams)), key=lambda i: abs(lams[i] - 0.5))
    return {
        "loss_barrier": loss_gap[i_loss],
        "accuracy_barrier": acc_gap[i_acc],
        "loss_barrier_lam": lams[i_loss],
        "accuracy_barrier_lam": lams[i_acc],
        "loss_barrier_from_mean": max(loss) - (loss[0] + loss[-1]) / 2,
        "accuracy_barrier_from_mean": (acc[0] + acc[-1]) / 2 - min(acc),
        "loss_endpoints": (loss[0], loss[-1]),
        "accuracy_endpoints": (acc[0], acc[-1]),
        "midpoint_lam": lams[mid],
        "midpoint_loss": loss[mid],
        "midpoint_accuracy": acc[mid],
    }


def plot_barrier(curves: Mapping[str, Sequence[Mapping[str, float]]],
                 out_png: str | os.PathLike[str], title: str | None = None) -> Path:
    """Plot loss and accuracy along one or more interpolation paths (e.g.
    ``{"naive": path, "aligned": path, "aligned + REPAIR": path}``) side by
    side, each labelled with its barrier, and write a PNG atomically.

    Uses matplotlib's Agg canvas directly (no pyplot, no display, the global
    backend is left alone). The file is written to a temporary sibling and
    renamed; on error nothing is left behind and an existing file is kept.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise WeightspaceError("plot_barrier needs at least one curve")
    for label, path in curves.items():
        _check_path(path, f"curve {label!r}")
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for label, path in curves.items():
        b = barrier(path)
        lams = [p["lam"] for p in path]
        ax_loss.plot(lams, [p["loss"] for p in path], marker="o", markersize=3,
                     label=f"{label} (barrier {b['loss_barrier']:.3f})")
        ax_acc.plot(lams, [100 * p["accuracy"] for p in path], marker="o", markersize=3,
                    label=f"{label} (barrier {100 * b['accuracy_barrier']:.1f} pts)")
    ax_loss.set(xlabel="λ", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="λ", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    out = Path(out_png)
    with atomic_output_path(out) as temporary:
        fig.savefig(temporary, format="png", dpi=120)
    logger.debug("wrote barrier plot %s", out)
    return out
