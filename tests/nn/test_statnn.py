"""StatNN: per-entry weight statistics (Unterthiner et al. 2020) and the MLP on them."""

from __future__ import annotations

import pytest
import torch

from tests.nn.conftest import random_zoo
from weightspace import GraphTemplate
from weightspace.nn.statnn import (
    STATISTICS,
    StatNN,
    layer_statistics,
    statistic_entries,
    statistic_names,
)


def _zoo(model_fn, example, n=6, seed=0):
    return random_zoo(model_fn, example, n, seed)


def _resnet(traced):
    spec = traced("resnet_bn").spec
    return spec, spec.flatten_many([traced("resnet_bn", seed=s).state_dict for s in (0, 1, 2)])


def test_feature_order_and_names(siren):
    spec, params = siren
    stats = layer_statistics(spec, params)
    names = statistic_names(spec)
    assert stats.shape == (params.shape[0], len(names)) == (6, 7 * 6)
    assert names[:7] == [f"net.0.weight.{s}" for s in STATISTICS]
    assert names[7] == "net.0.bias.mean"
    # entry i, statistic j is feature 7 i + j, computed like torch's own reductions
    w = spec.split_parameters(params)["net.2.weight"].flatten(1)
    i = [p.name for p in statistic_entries(spec)].index("net.2.weight")
    block = stats[:, 7 * i: 7 * i + 7]
    q = torch.quantile(w, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=w.dtype), dim=1).T
    expected = torch.cat([w.mean(1, keepdim=True), w.var(1, correction=0, keepdim=True), q], 1)
    torch.testing.assert_close(block, expected, rtol=1e-12, atol=1e-12)
    # single vector input, and a one-element entry has variance 0, not NaN
    torch.testing.assert_close(layer_statistics(spec, params[0]), stats[:1], rtol=1e-12, atol=1e-12)
    bias = names.index("net.4.bias.var")
    assert (stats[:, bias] == 0).all()


def test_entries_skip_integer_buffers(traced):
    spec = traced("resnet_bn").spec
    names = [p.name for p in statistic_entries(spec)]
    assert "bn1.running_mean" in names and "bn1.weight" in names and "conv1.weight" in names
    assert not any(n.endswith("num_batches_tracked") for n in names)


@pytest.mark.parametrize("arch", ["siren", "cnn", "resnet"])
def test_statistics_are_permutation_invariant(arch, siren, cnn, traced):
    spec, params = {"siren": siren, "cnn": cnn}[arch] if arch != "resnet" else _resnet(traced)
    stats = layer_statistics(spec, params)
    for k in range(3):
        perm = spec.random_permutation(torch.Generator().manual_seed(k))
        permuted = spec.permute_flat(params, perm)
        assert not torch.equal(permuted, params)
        torch.testing.assert_close(layer_statistics(spec, permuted), stats, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["siren", "cnn", "resnet"])
def test_model_is_permutation_invariant(arch, siren, cnn, traced):
    spec, params = {"siren": siren, "cnn": cnn}[arch] if arch != "resnet" else _resnet(traced)
    torch.manual_seed(0)
    model = StatNN(GraphTemplate.for_spec(spec), 3, hidden=32).double().fit_normalisation(params)
    out = model(params)
    perm = spec.random_permutation(torch.Generator().manual_seed(5))
    torch.testing.assert_close(model(spec.permute_flat(params, perm)), out, rtol=1e-5, atol=1e-5)
    # control: changing one weight's value is not a symmetry and changes the output
    changed = params.clone()
    changed[:, spec.offsets[statistic_entries(spec)[0].name][0]] += 1.0
    assert (model(changed) - out).abs().max() > 1e-3


def test_normalisation(siren):
    spec, params = siren
    model = StatNN(GraphTemplate.for_spec(spec), 2, hidden=16).double()
    raw = model.statistics(params)
    assert torch.equal(model.feature_mean, torch.zeros(raw.shape[1], dtype=torch.float64))
    assert torch.equal(model.feature_std, torch.ones(raw.shape[1], dtype=torch.float64))
    assert model.fit_normalisation(params) is model
    z = (raw - model.feature_mean) / model.feature_std
    varying = raw.std(0) > 1e-8
    torch.testing.assert_close(z.mean(0), torch.zeros_like(z[0]), rtol=0, atol=1e-8)
    torch.testing.assert_close(z.std(0)[varying], torch.ones(int(varying.sum()), dtype=z.dtype))
    assert "feature_mean" in model.state_dict() and "feature_std" in model.state_dict()
    with pytest.raises(ValueError, match="at least 2"):
        model.fit_normalisation(params[:1])


def test_batch_input_equals_flat_input(siren):
    spec, params = siren
    template = GraphTemplate.for_spec(spec)
    model = StatNN(template, 2, hidden=16).double().fit_normalisation(template.to_batch(params))
    torch.testing.assert_close(model(template.to_batch(params)), model(params), rtol=0, atol=0)


def test_equivariant_head_is_rejected(siren):
    spec, _ = siren
    with pytest.raises(ValueError, match="equivariant.*StatNN|StatNN.*invariant"):
        StatNN(GraphTemplate.for_spec(spec), 2, head="equivariant")


def test_trains_and_gradient_reaches_every_parameter(siren):
    spec, _ = siren
    torch.manual_seed(0)
    params = torch.randn(32, spec.num_parameters, dtype=torch.float64)
    params = params * torch.linspace(0.1, 2.0, 32, dtype=torch.float64)[:, None]
    target = params.std(1, keepdim=True)  # an invariant target
    model = StatNN(GraphTemplate.for_spec(spec), 1, hidden=32, dropout=0.1).double()
    model.fit_normalisation(params)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(params), target)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < 0.2 * losses[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
