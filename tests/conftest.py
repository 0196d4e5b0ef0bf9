"""Shared fixtures: traced test architectures, built once per session."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import weightspace
from tests.architectures import ARCHITECTURES, Arch, build, example_input
from weightspace import WeightSpaceSpec


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
