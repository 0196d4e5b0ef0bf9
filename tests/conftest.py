"""Shared fixtures: traced test architectures, the digits data and two MLPs
trained on it, built once per session."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import weightspace
from tests.architectures import ARCHITECTURES, Arch, build, example_input
from weightspace import WeightSpaceSpec
from weightspace.classify import train_classifier
from weightspace.data import load_digits_split
from weightspace.models import MLP


@dataclass(frozen=True)
class Traced:
    arch: Arch
    model: nn.Module
    x: Tensor
    spec: WeightSpaceSpec

    @property
    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


@pytest.fixture(scope="session")
def traced() -> Callable[..., Traced]:
    """``traced(name, dtype=torch.float64, seed=0)``: a test architecture (eval
    mode, randomised norm statistics), an example input and its spec. Cached:
    do not modify the returned model."""
    by_name = {a.name: a for a in ARCHITECTURES}
    cache: dict[tuple, Traced] = {}

    def get(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> Traced:
        key = (name, dtype, seed)
        if key not in cache:
            arch = by_name[name]
            model = build(arch, seed, dtype)
            x = example_input(arch, seed, dtype)
            cache[key] = Traced(arch, model, x, weightspace.trace(model, x))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def digits_flat():
    """The digits split with flat ``[N, 64]`` inputs."""
    return load_digits_split(flat=True)


@pytest.fixture(scope="session")
def digits_images():
    """The digits split with ``[N, 1, 8, 8]`` images."""
    return load_digits_split()


@pytest.fixture(scope="session")
def trained_mlps(digits_flat):
    """Two MLPs trained from different initialisations (not aligned) and their
    spec (REPAIR and barrier tests). Do not modify them."""
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(train_classifier(MLP(hidden=(64, 64)), digits_flat, epochs=5, seed=seed))
    spec = weightspace.trace(models[0], (2, 64))
    return models[0], models[1], spec
