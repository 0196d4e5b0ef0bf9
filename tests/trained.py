"""Small classifiers trained on digits, built once per test session and
shared by the REPAIR tests (tests/align) and the barrier tests (tests/merge)."""

from __future__ import annotations

import functools

import torch
from torch import nn

import weightspace
from weightspace import WeightSpaceSpec
from weightspace.classify import train_classifier
from weightspace.data import load_digits_split
from weightspace.merge import interpolate
from weightspace.models import MLP


@functools.cache
def digits_classifiers() -> tuple[nn.Module, nn.Module, WeightSpaceSpec]:
    """Two MLPs (hidden 64, 64) trained for 5 epochs from different
    initialisations (not aligned) and their spec. Do not modify them."""
    digits = load_digits_split(flat=True)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(train_classifier(MLP(hidden=(64, 64)), digits, epochs=5, seed=seed))
    return models[0], models[1], weightspace.trace(models[0], (2, 64))


def merged_model(factory, a: nn.Module, b: nn.Module, lam: float) -> nn.Module:
    """``factory()`` loaded with ``(1 - lam)·a + lam·b``, in eval mode."""
    model = factory()
    model.load_state_dict(interpolate(a.state_dict(), b.state_dict(), lam))
    return model.eval()
