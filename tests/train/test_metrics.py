"""Scores: accuracy, Kendall's tau, R^2, MSE against scipy / scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightspace.train import accuracy, kendall_tau, mean_squared_error, r_squared


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 2, 0])) == 1.0
    assert accuracy(logits, torch.tensor([0, 1, 2, 2])) == 0.75
    assert accuracy(logits, torch.tensor([1, 0, 0, 2])) == 0.0
    assert isinstance(accuracy(logits, torch.tensor([0, 1, 2, 0])), float)


def test_accuracy_empty_is_nan():
    assert math.isnan(accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))


# tenths in [-100, 100]: ties are likely, and no sum of squares underflows
floats = st.integers(-1000, 1000).map(lambda k: k / 10)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(floats, floats), min_size=2, max_size=30))
def test_kendall_tau_matches_scipy(pairs):
    p = np.array([a for a, _ in pairs])
    t = np.array([b for _, b in pairs])
    ours = kendall_tau(torch.tensor(p), torch.tensor(t))
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(scipy.stats.kendalltau(p, t).statistic, abs=1e-12)


def test_kendall_tau_known_values():
    t = torch.arange(10.0)
    assert kendall_tau(t, t) == pytest.approx(1.0)
    assert kendall_tau(-t, t) == pytest.approx(-1.0)
    # monotone transforms keep the ranks; ties are tau-b
    assert kendall_tau(t**3, t) == pytest.approx(1.0)
    p = torch.tensor([1.0, 1.0, 2.0, 3.0])
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert kendall_tau(p, y) == pytest.approx(scipy.stats.kendalltau(p.numpy(), y.numpy()).statistic)
    # shapes [N, 1] and [N] are the same scores
    assert kendall_tau(p.view(-1, 1), y) == pytest.approx(kendall_tau(p, y))


@pytest.mark.parametrize("p, t", [
    ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]),
    ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]),
    ([1.0], [2.0]),
    ([], []),
])
def test_kendall_tau_nan_for_constant_or_short(p, t):
    assert math.isnan(kendall_tau(torch.tensor(p), torch.tensor(t)))


def test_r_squared_nan_for_constant_targets_that_do_not_average_exactly():
    # the mean of three 0.1s is 0.1 + 1 ulp: the sum of squares is not exactly zero
    assert math.isnan(r_squared(torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64),
                                torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(floats, floats), min_size=2, max_size=30))
def test_r_squared_matches_sklearn(pairs):
    p = np.array([a for a, _ in pairs])
    t = np.array([b for _, b in pairs])
    ours = r_squared(torch.tensor(p), torch.tensor(t))
    if np.ptp(t) == 0:
        assert math.isnan(ours)
    else:
        expected = sklearn.metrics.r2_score(t, p)
        assert ours == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_r_squared_known_values():
    t = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert r_squared(t, t) == 1.0
    assert r_squared(torch.full((4,), 2.5), t) == 0.0   # the mean predicts R^2 = 0
    assert r_squared(-t, t) < 0
    # constant predictions of constant targets: undefined
    assert math.isnan(r_squared(t, torch.full((4,), 3.0)))
    assert math.isnan(r_squared(torch.tensor([1.0]), torch.tensor([1.0])))


def test_r_squared_multi_output_is_over_all_entries():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(20, 3))
    p = t + rng.normal(scale=0.5, size=(20, 3))
    expected = sklearn.metrics.r2_score(t.ravel(), p.ravel())
    assert r_squared(torch.tensor(p), torch.tensor(t)) == pytest.approx(expected)


def test_mean_squared_error():
    p = torch.tensor([1.0, 2.0, 4.0])
    t = torch.tensor([1.0, 0.0, 1.0])
    assert mean_squared_error(p, t) == pytest.approx((0 + 4 + 9) / 3)
    assert mean_squared_error(p, t) == pytest.approx(sklearn.metrics.mean_squared_error(t.numpy(), p.numpy()))


def test_metrics_ignore_gradients():
    p = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    t = torch.tensor([1.0, 3.0, 2.0])
    assert isinstance(kendall_tau(p, t), float)
    assert isinstance(r_squared(p, t), float)
    assert isinstance(mean_squared_error(p, t), float)
