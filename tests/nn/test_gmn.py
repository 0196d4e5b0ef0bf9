"""GMN: invariance / equivariance under random hidden permutations, mixed
architectures, normalisation, training."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

import weightspace
from weightspace import GraphTemplate
from weightspace.models.cnn import SmallCNN
from weightspace.models.siren import SIREN
from weightspace.nn import GMN, as_parameters
from weightspace.nn.encoders import FourierFeatures, position_features


def _siren_spec(hidden=(32, 32)):
    return weightspace.trace(SIREN(hidden=list(hidden)), torch.zeros(1, 2))


def _cnn_spec():
    return weightspace.trace(SmallCNN(1, (4, 5), num_classes=3), torch.zeros(1, 1, 8, 8))


def _params(spec, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, spec.num_parameters, generator=g, dtype=torch.float64) * 0.5


def _specs(traced):
    return {"siren": _siren_spec(), "cnn": _cnn_spec(), "resnet_bn": traced("resnet_bn").spec}


@pytest.mark.parametrize("arch", ["siren", "cnn", "resnet_bn"])
def test_invariant_head_is_permutation_invariant(traced, arch):
    spec = _specs(traced)[arch]
    template = GraphTemplate.for_spec(spec)
    torch.manual_seed(0)
    model = GMN(template, 4, hidden=16, num_layers=2).double().eval()
    params = _params(spec, 3)
    model.fit_normalisation(params)
    out = model(params)
    for k in range(3):
        perm = spec.random_permutation(torch.Generator().manual_seed(k))
        permuted = model(spec.permute_flat(params, perm))
        assert (permuted - out).abs().max() < 1e-5 * out.abs().max()
    # batch input == flat input
    assert torch.allclose(model(template.to_batch(params)), out, atol=1e-12)


def test_input_neurons_are_not_a_symmetry():
    """Control: swapping two INPUT neurons (not permutable) changes the output."""
    spec = _siren_spec()
    template = GraphTemplate.for_spec(spec)
    torch.manual_seed(0)
    model = GMN(template, 4, hidden=16, num_layers=2).double().eval()
    params = _params(spec, 2)
    state = spec.unflatten(params[0])
    first = next(p for p in spec.parameters if p.role == "weight")
    state[first.name] = state[first.name].flip(1)  # swap the two input coordinates
    swapped = spec.flatten(state, dtype=torch.float64).unsqueeze(0)
    # mean pooling makes an untrained model barely sensitive (~1e-6), yet far above the 1e-16
    # of a true symmetry
    assert (model(swapped) - model(params[:1])).abs().max() > 1e-8


@pytest.mark.parametrize("arch", ["siren", "cnn", "resnet_bn"])
def test_equivariant_head_permutes_like_the_input(traced, arch):
    spec = _specs(traced)[arch]
    template = GraphTemplate.for_spec(spec)
    torch.manual_seed(1)
    model = GMN(template, 1, hidden=16, num_layers=2, head="equivariant").double().eval()
    for p in model.decoder.parameters():  # the head starts at the identity; make it do something
        torch.nn.init.normal_(p, std=0.3)
    params = _params(spec, 2)
    out = as_parameters(model(params), template)
    assert not torch.allclose(out, params)
    for k in range(2):
        perm = spec.random_permutation(torch.Generator().manual_seed(10 + k))
        lhs = as_parameters(model(spec.permute_flat(params, perm)), template)
        rhs = spec.permute_flat(out, perm)
        assert (lhs - rhs).abs().max() < 1e-5 * rhs.abs().max()


def test_equivariant_head_starts_at_identity():
    spec = _siren_spec()
    template = GraphTemplate.for_spec(spec)
    model = GMN(template, 1, hidden=8, num_layers=1, head="equivariant").double()
    params = _params(spec, 2)
    assert torch.equal(as_parameters(model(params), template), params)


def test_mixed_architectures_batch_like_each_alone():
    specs = [_siren_spec((32, 32)), _siren_spec((16, 16, 16))]
    templates = GraphTemplate.common(specs)
    torch.manual_seed(0)
    model = GMN(templates[0], 3, hidden=16, num_layers=2).double().eval()
    graphs = []
    for i, (spec, template) in enumerate(zip(specs, templates, strict=True)):
        graphs += [template.to_data(p) for p in _params(spec, 2, seed=i)]
    order = [0, 2, 1, 3]
    mixed = Batch.from_data_list([graphs[i] for i in order])
    out = model(mixed)
    for row, i in enumerate(order):
        alone = model(Batch.from_data_list([graphs[i]]))
        assert torch.allclose(out[row], alone[0], atol=1e-10)
    # and invariant per graph
    perm = specs[1].random_permutation(torch.Generator().manual_seed(3))
    permuted_params = specs[1].permute_flat(_params(specs[1], 2, seed=1), perm)
    graphs_p = graphs[:2] + [templates[1].to_data(p) for p in permuted_params]
    out_p = model(Batch.from_data_list([graphs_p[i] for i in order]))
    assert (out_p - out).abs().max() < 1e-5 * out.abs().max()


def test_wrong_feature_width_is_a_clear_error():
    model = GMN(GraphTemplate.for_spec(_siren_spec()), 2, hidden=8, num_layers=1)
    batch = GraphTemplate.for_spec(_cnn_spec()).to_batch(_params(_cnn_spec(), 1).float())
    with pytest.raises(ValueError, match="GraphTemplate.common"):
        model(batch)


def test_fit_normalisation_standardises_each_depth():
    spec = _siren_spec()
    template = GraphTemplate.for_spec(spec)
    model = GMN(template, 2, hidden=8, num_layers=1)
    params = torch.cat([_params(spec, 8)[:, :64] * 30, _params(spec, 8)[:, 64:] * 0.01], 1).float()
    model.fit_normalisation(params)
    batch = template.to_batch(params)
    depth = batch.node_depth[batch.edge_index[1]]
    standardised = model.edge_encoder.standardise(batch.edge_attr, depth)
    for d in depth.unique():
        values = standardised[depth == d]
        assert abs(float(values.std()) - 1) < 0.05, int(d)


def test_trains_and_every_parameter_gets_a_gradient():
    spec = _siren_spec((8, 8))
    template = GraphTemplate.for_spec(spec)
    torch.manual_seed(0)
    model = GMN(template, 2, hidden=16, num_layers=2)
    # class = sign of the mean first-layer weight: learnable and permutation invariant
    params = _params(spec, 64).float()
    first = spec.offsets[next(p.name for p in spec.parameters if p.role == "weight")]
    labels = (params[:, first[0]:first[1]].mean(1) > 0).long()
    model.fit_normalisation(params)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(params), labels)
        optimiser.zero_grad()
        loss.backward()
        losses.append(float(loss.detach()))
        optimiser.step()
    assert losses[-1] < 0.5 * losses[0]
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(params), labels).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # no norm layers in this SIREN; the norm embedding still gets gradient (index "none")
    assert unused == [], unused


def test_fourier_and_position_features():
    f = FourierFeatures(4, 1.0)
    values = torch.randn(5, 3)
    out = f(values)
    assert out.shape == (5, 24)
    assert torch.allclose(out[:, :4], torch.sin(values[:, :1] * f.frequencies))
    assert FourierFeatures(0)(values).shape == (5, 0)
    pos = position_features(torch.arange(1000))
    assert pos.shape == (1000, 32)
    assert torch.unique(pos, dim=0).shape[0] == 1000  # every input pixel is told apart
