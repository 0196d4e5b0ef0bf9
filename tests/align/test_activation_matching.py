"""Git Re-Basin activation matching (weightspace.align.activation_matching)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import weightspace
from tests.architectures import randomise_buffers
from weightspace import StateDictMismatchError
from weightspace.align import WeightMatchingResult
from weightspace.align.activation_matching import activation_matching
from weightspace.classify import evaluate, load_split, train_classifier
from weightspace.models import MLP, build_model, default_input_shape

BUILTIN = [
    ("mlp", {}),
    ("cnn", {}),
    ("resnet20", {"norm": "batch", "width": 1}),
    ("resnet20", {"norm": "group", "width": 1}),
]
BUILTIN_IDS = ["mlp", "cnn", "resnet20-batch", "resnet20-group"]


def _sd(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


_SPECS: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the models are tiny: one thread avoids oversubscription on busy machines
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _builtin(name, kwargs, seed=0):
    torch.manual_seed(seed)
    model = build_model(name, **kwargs)
    randomise_buffers(model, torch.Generator().manual_seed(seed + 100))
    model.eval()
    shape = default_input_shape(name, **kwargs)
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _SPECS:
        _SPECS[key] = weightspace.trace(model, shape)
    spec = _SPECS[key]
    x = torch.randn((64, *shape[1:]), generator=torch.Generator().manual_seed(seed + 7))
    return model, spec, x


@pytest.mark.parametrize(("name", "kwargs"), BUILTIN, ids=BUILTIN_IDS)
def test_recovers_a_known_permutation(name, kwargs):
    model, spec, x = _builtin(name, kwargs)
    model.train()  # the mode must be restored
    sd = _sd(model)
    perm = spec.random_permutation(torch.Generator().manual_seed(1))
    permuted = spec.permute(sd, perm)
    # several batches for the small models (statistics accumulated over them)
    batch_size = 16 if name in ("mlp", "cnn") else 64
    result = activation_matching(model, sd, permuted, spec, x, batch_size=batch_size)
    assert model.training
    assert isinstance(result, WeightMatchingResult)
    assert result.sweeps == 1 and result.converged
    assert result.history == (result.objective,)
    assert set(result.permutation) == {s.name for s in spec.permutable_spaces}
    assert result.permutation.equal(perm.inverse())
    aligned = spec.permute(permuted, result.permutation)
    for key in sd:
        assert torch.equal(aligned[key], sd[key]), key
    # every matched pair is perfectly correlated (constant neurons score 0)
    assert result.objective <= sum(s.size for s in spec.permutable_spaces) + 1e-6
    # the aligned B computes what B computes
    model.eval()
    with torch.no_grad():
        out_b = functional_call(model, permuted, (x,))
        out_aligned = functional_call(model, aligned, (x,))
    torch.testing.assert_close(out_aligned, out_b, atol=1e-5, rtol=1e-5)


def test_aligned_b_computes_b_for_unrelated_models_and_batch_iterables():
    model, spec, x = _builtin("resnet20", {"norm": "batch", "width": 1})
    sd_a = _sd(model)
    other, _, _ = _builtin("resnet20", {"norm": "batch", "width": 1}, seed=5)
    sd_b = _sd(other)
    batches = [(x[:32], None), x[32:]]
    result = activation_matching(model, sd_a, sd_b, spec, batches, max_samples=50, cost="inner")
    aligned = spec.permute(sd_b, result.permutation)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(functional_call(model, aligned, (x,)),
                                   functional_call(model, sd_b, (x,)), atol=1e-5, rtol=1e-5)


def test_max_samples_subset_is_seeded():
    model, spec, x = _builtin("mlp", {})
    sd = _sd(model)
    other = _sd(build_model("mlp"))
    r1 = activation_matching(model, sd, other, spec, x, max_samples=32, seed=3)
    r2 = activation_matching(model, sd, other, spec, x, max_samples=32, seed=3)
    assert r1.permutation.equal(r2.permutation)
    assert r1.objective == r2.objective


def test_midpoint_of_activation_aligned_trained_mlps_beats_naive_midpoint():
    data = load_split("digits", (1, 64))
    states, model = [], None
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = MLP()
        train_classifier(model, data, epochs=8, seed=seed)
        states.append(_sd(model))
    spec = weightspace.trace(model, (1, 64))
    a, b = states
    result = activation_matching(model, a, b, spec, data.x_train)
    aligned = spec.permute(b, result.permutation)
    naive = {k: (a[k] + b[k]) / 2 for k in a}
    merged = {k: (a[k] + aligned[k]) / 2 for k in a}
    _, acc_naive = evaluate(model, data.x_test, data.y_test, naive)
    _, acc_merged = evaluate(model, data.x_test, data.y_test, merged)
    _, acc_b = evaluate(model, data.x_test, data.y_test, b)
    _, acc_aligned = evaluate(model, data.x_test, data.y_test, aligned)
    assert acc_aligned == acc_b
    assert acc_merged > acc_naive + 0.02, (acc_merged, acc_naive)


# ---------------------------------------------------------------- errors
def test_state_dict_mismatch_names_the_key():
    model, spec, x = _builtin("mlp", {})
    sd = _sd(model)
    bad = dict(sd)
    key = next(iter(bad))
    del bad[key]
    with pytest.raises(StateDictMismatchError, match=key.replace(".", r"\.")):
        activation_matching(model, sd, bad, spec, x)
    with pytest.raises(TypeError, match="state_a"):
        activation_matching(model, [1], sd, spec, x)


def test_empty_inputs_are_rejected():
    model, spec, x = _builtin("mlp", {})
    sd = _sd(model)
    with pytest.raises(ValueError, match="inputs is empty"):
        activation_matching(model, sd, sd, spec, x[:0])
    with pytest.raises(ValueError, match="inputs is empty"):
        activation_matching(model, sd, sd, spec, [])
    with pytest.raises(ValueError, match="inputs is empty"):
        activation_matching(model, sd, sd, spec, iter([x[:0]]))


def test_bad_arguments_are_rejected():
    model, spec, x = _builtin("mlp", {})
    sd = _sd(model)
    with pytest.raises(ValueError, match="batch_size"):
        activation_matching(model, sd, sd, spec, x, batch_size=0)
    with pytest.raises(ValueError, match="max_samples"):
        activation_matching(model, sd, sd, spec, x, max_samples=0)
    with pytest.raises(ValueError, match="cost"):
        activation_matching(model, sd, sd, spec, x, cost="cosine")
    nan = dict(sd)
    key = next(k for k in sd if k.endswith("weight"))
    nan[key] = torch.full_like(sd[key], float("nan"))
    with pytest.raises(ValueError, match="contains NaN values"):
        activation_matching(model, sd, nan, spec, x)
