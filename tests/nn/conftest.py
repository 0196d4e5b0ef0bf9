"""Shared set-up of the metanetwork tests."""

from __future__ import annotations

import pytest
import torch

import weightspace
from weightspace.models.cnn import SmallCNN
from weightspace.models.siren import SIREN


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """The metanetworks here are tiny: on a busy 2-core machine two intra-op
    threads spend most of their time waiting on each other (10-30x slower).
    Restored afterwards; results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_zoo(model_fn, example, n=6, seed=0):
    """``(spec, [n, P])``: ``n`` freshly initialised float64 checkpoints of one
    architecture."""
    torch.manual_seed(seed)
    models = [model_fn().double() for _ in range(n)]
    spec = weightspace.trace(models[0], example.double())
    return spec, spec.flatten_many([m.state_dict() for m in models])


@pytest.fixture(scope="module")
def siren():
    return random_zoo(SIREN, torch.zeros(1, 2))


@pytest.fixture(scope="module")
def cnn():
    return random_zoo(lambda: SmallCNN(channels=(4, 4, 4)), torch.zeros(1, 1, 8, 8))


def fit(model, inputs, target, loss_fn, steps, lr=3e-3):
    """Adam on ``loss_fn(model(inputs), target)`` for ``steps`` steps; the losses."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(inputs), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses
