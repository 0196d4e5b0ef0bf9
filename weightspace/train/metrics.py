"""Scores of metanetwork predictions."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import Tensor


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose arg-max class is the label."""
    if len(labels) == 0:
        return float("nan")
    return float((logits.argmax(-1) == labels).double().mean())


def kendall_tau(predictions: Tensor, targets: Tensor) -> float:
    """Kendall's τ-b rank correlation (the generalisation-prediction metric
    of Unterthiner et al. 2020 and the papers after it); NaN when either
    side is constant."""
    p = predictions.detach().double().flatten().cpu().numpy()
    t = targets.detach().double().flatten().cpu().numpy()
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return float("nan")
    return float(kendalltau(p, t).statistic)


def r_squared(predictions: Tensor, targets: Tensor) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (over all
    entries); NaN for constant targets."""
    p = predictions.detach().double().flatten()
    t = targets.detach().double().flatten()
    # constant targets: test equality, not the sum of squares, which rounding leaves a
    # tiny non-zero (mean of [0.1, 0.1, 0.1] is not exactly 0.1) and R² then explodes
    if len(t) < 2 or bool(t.max() == t.min()):
        return float("nan")
    total = ((t - t.mean()) ** 2).sum()
    return float(1.0 - ((t - p) ** 2).sum() / total)


def mean_squared_error(predictions: Tensor, targets: Tensor) -> float:
    return float(torch.mean((predictions.detach().double() - targets.detach().double()) ** 2))


__all__ = ["accuracy", "kendall_tau", "mean_squared_error", "r_squared"]
