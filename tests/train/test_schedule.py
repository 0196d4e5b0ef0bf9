"""The shared warm-up/cosine learning-rate schedule (weightspace.train.schedule)."""

from __future__ import annotations

import math

import pytest
import torch

from weightspace.errors import WeightspaceError
from weightspace.train.schedule import warmup_cosine, warmup_cosine_scheduler


def test_warms_up_linearly_then_decays_to_zero():
    warmup, total = 4, 20
    assert [warmup_cosine(s, warmup, total) for s in range(warmup)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(warmup, warmup, total) == 1.0
    middle = warmup + (total - warmup) // 2
    assert warmup_cosine(middle, warmup, total) == pytest.approx(0.5)
    assert warmup_cosine(total, warmup, total) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(total + 5, warmup, total) == pytest.approx(0.0, abs=1e-12)
    values = [warmup_cosine(s, warmup, total) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_scheduler_follows_the_schedule():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = warmup_cosine_scheduler(optimizer, warmup=3, total=10)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.1 * warmup_cosine(s, 3, 10) for s in range(12)]
    assert seen == pytest.approx(expected)
    assert math.isclose(seen[2], 0.1)


def test_warmup_must_be_a_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(WeightspaceError, match="warmup") as err:
        warmup_cosine_scheduler(optimizer, warmup=0, total=10)
    assert err.value.parameter == "warmup"
