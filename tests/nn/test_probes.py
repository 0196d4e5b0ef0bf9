"""Probe features (Kofinas et al., ICLR 2024): each neuron's values on learned inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weightspace
from weightspace import GraphTemplate
from weightspace.models.cnn import SmallCNN
from weightspace.models.mlp import MLP
from weightspace.models.siren import SIREN
from weightspace.nn.deepsets import EdgeDeepSets
from weightspace.nn.probes import ProbeFeatures, check_linear_chain, with_probe_features

K = 8


def _zoo(model_fn, example, n=3, seed=0):
    torch.manual_seed(seed)
    models = [model_fn().double() for _ in range(n)]
    spec = weightspace.trace(models[0], example.double())
    return models, spec, spec.flatten_many([m.state_dict() for m in models])


@pytest.fixture(scope="module")
def siren():
    return _zoo(lambda: SIREN(hidden=(32, 32), w0=20.0, w0_initial=30.0), torch.zeros(1, 2))


@pytest.fixture(scope="module")
def mlp():
    # three hidden layers with BatchNorm (eval: its running statistics) and dropout
    def build():
        model = MLP(3, (8, 6, 8), 2, activation="tanh", norm="batch", dropout=0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
        return model
    return _zoo(build, torch.zeros(2, 3))


def _probes(models, spec, **kwargs):
    torch.manual_seed(0)
    return ProbeFeatures(GraphTemplate.for_spec(spec), K, network=models[0], **kwargs).double()


@pytest.mark.parametrize("arch", ["siren", "mlp"])
def test_values_of_every_node(arch, siren, mlp):
    models, spec, params = {"siren": siren, "mlp": mlp}[arch]
    template = GraphTemplate.for_spec(spec)
    probes = _probes(models, spec)
    features = probes(params).reshape(3, template.num_nodes, K)
    x = probes.probes.detach()
    for i, model in enumerate(models):
        # what each linear layer receives is the previous layer's nodes' values
        received = {}
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        hooks = [m.register_forward_pre_hook(lambda m, a, j=j, store=received: store.__setitem__(j, a[0]))
                 for j, m in enumerate(linears)]
        with torch.no_grad():
            out = model.eval()(x)
        for h in hooks:
            h.remove()
        expected = [received[j].T for j in range(len(linears))] + [out.T]
        expected = torch.cat(expected)
        torch.testing.assert_close(features[i], expected, rtol=1e-12, atol=1e-12)
        # input nodes hold the probes
        assert torch.equal(features[i, : x.shape[1]], x.T)
    if arch == "siren":  # first hidden layer: sin(w0_initial (W p + b)) -- w0 comes from the network
        w, b = params[0, :64].reshape(32, 2), params[0, 64:96]
        first = torch.sin(30.0 * (x @ w.T + b)).T
        torch.testing.assert_close(features[0, 2:34], first, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", ["siren", "mlp"])
def test_permutation_equivariant(arch, siren, mlp):
    models, spec, params = {"siren": siren, "mlp": mlp}[arch]
    template = GraphTemplate.for_spec(spec)
    probes = _probes(models, spec)
    features = probes(params).reshape(3, template.num_nodes, K)
    for k in range(2):
        perm = spec.random_permutation(torch.Generator().manual_seed(k))
        nmap = template.node_permutation(perm)
        assert not torch.equal(nmap, torch.arange(template.num_nodes))
        permuted = probes(spec.permute_flat(params, perm)).reshape(3, template.num_nodes, K)
        torch.testing.assert_close(permuted, features[:, nmap], rtol=1e-5, atol=1e-5)
        # the control: without relabelling the nodes, they differ
        assert (permuted - features).abs().max() > 1e-3


def test_batch_input_and_gradients(siren):
    models, spec, params = siren
    template = GraphTemplate.for_spec(spec)
    probes = _probes(models, spec, init="grid")
    assert probes.probes.shape == (K, 2) and probes.probes.abs().max() <= 1
    assert len({tuple(p.tolist()) for p in probes.probes}) == K
    batch = template.to_batch(params.clone().requires_grad_(True))
    out = probes(batch)
    assert out.shape == (3 * template.num_nodes, K)
    torch.testing.assert_close(out, probes(params), rtol=0, atol=0)
    out.square().sum().backward()
    assert probes.probes.grad is not None and probes.probes.grad.abs().sum() > 0
    # the network is a template, not a submodule: only the probes are trained and saved
    assert [n for n, _ in probes.named_parameters()] == ["probes"]
    assert list(probes.state_dict()) == ["probes"]


def test_params_gradient(siren):
    models, spec, params = siren
    probes = _probes(models, spec)
    leaf = params.clone().requires_grad_(True)
    probes(leaf).sum().backward()
    assert leaf.grad.abs().sum() > 0


def test_with_probe_features_feeds_a_widened_metanetwork(siren):
    models, spec, params = siren
    template = GraphTemplate.for_spec(spec)
    probes = _probes(models, spec)
    batch = template.to_batch(params)
    widened = with_probe_features(batch, probes)
    assert widened.x.shape == (batch.x.shape[0], batch.x.shape[1] + K)
    assert torch.equal(widened.x[:, : batch.x.shape[1]], batch.x)
    assert batch.x.shape[1] == 5  # the input batch is untouched
    assert widened.num_graphs == 3 and widened.get_example(2).x.shape == (template.num_nodes, 5 + K)
    torch.manual_seed(0)
    model = EdgeDeepSets(template, 2, hidden=16, fourier=2, extra_node_dim=K).double()
    out = model(widened)
    perm = spec.random_permutation(torch.Generator().manual_seed(3))
    permuted = with_probe_features(template.to_batch(spec.permute_flat(params, perm)), probes)
    torch.testing.assert_close(model(permuted), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="width"):
        EdgeDeepSets(template, 2, hidden=16)(widened)
    with pytest.raises(ValueError, match="one row per node"):
        with_probe_features(batch, torch.zeros(5, K))


def test_unsupported_architectures(siren):
    models, spec, _ = siren
    cnn = SmallCNN(channels=(4, 4))
    cnn_spec = weightspace.trace(cnn, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="chains of linear layers.*'features.0' is a 'conv2d' layer"):
        check_linear_chain(cnn_spec)
    with pytest.raises(ValueError, match="chains of linear layers"):
        ProbeFeatures(GraphTemplate.for_spec(cnn_spec), K, network=cnn)
    # a residual MLP: not a chain
    from tests.architectures import ResidualMLP
    res_spec = weightspace.trace(ResidualMLP(), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="chains of linear layers"):
        check_linear_chain(res_spec)
    # a network of another architecture
    with pytest.raises(ValueError, match="network has no entry"):
        ProbeFeatures(GraphTemplate.for_spec(spec), K, network=MLP(2, (4,), 1))
    with pytest.raises(ValueError, match="init="):
        ProbeFeatures(GraphTemplate.for_spec(spec), K, network=models[0], init="sobol")


GRAPH_MODELS = {"gmn": ("weightspace.nn.gmn", "GMN"), "transformer": ("weightspace.nn.transformer", "GraphTransformer"),
                "deepsets": ("weightspace.nn.deepsets", "EdgeDeepSets")}


def _graph_model(name, spec, head="invariant", **kwargs):
    import importlib

    module, cls = GRAPH_MODELS[name]
    torch.manual_seed(0)
    args = dict(hidden=16, num_layers=2, head=head, **kwargs)
    if name != "deepsets":
        args["fourier"] = 4
    return getattr(importlib.import_module(module), cls)(GraphTemplate.for_spec(spec), 3, **args).double()


@pytest.mark.parametrize("name", sorted(GRAPH_MODELS))
def test_graph_models_with_probes_stay_invariant_and_use_them(name, siren):
    models, spec, params = siren
    model = _graph_model(name, spec, probes=K, network=models[0])
    assert model.probe_features.num_probes == K
    assert model.fit_normalisation(params) is model
    model.eval()
    with torch.no_grad():
        out = model(params)
        for seed in range(2):
            perm = spec.random_permutation(torch.Generator().manual_seed(10 + seed))
            torch.testing.assert_close(model(spec.permute_flat(params, perm)), out, rtol=0, atol=1e-10)
        # control: the probes reach the output (moving them changes it)
        model.probe_features.probes.add_(0.5)
        assert (model(params) - out).abs().max() > 1e-6
    # the probes are trained with the model
    model.probe_features.probes.grad = None
    model(params).sum().backward()
    assert model.probe_features.probes.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"probes=\.\.\.\) needs network="):
        _graph_model(name, spec, probes=K)


@pytest.mark.parametrize("name", ["gmn", "transformer"])
def test_equivariant_heads_with_probes_are_equivariant(name, siren):
    models, spec, params = siren
    template = GraphTemplate.for_spec(spec)
    model = _graph_model(name, spec, head="equivariant", probes=K, network=models[0])
    model.fit_normalisation(params).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():  # the untrained head is the identity; randomise it
            p.normal_(0.0, 0.3)
        out = template.from_batch(model(template.to_batch(params)))
        assert (out - params).abs().max() > 1e-2
        perm = spec.random_permutation(torch.Generator().manual_seed(4))
        out_of_permuted = template.from_batch(model(template.to_batch(spec.permute_flat(params, perm))))
        torch.testing.assert_close(out_of_permuted, spec.permute_flat(out, perm), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["transformer", "deepsets"])
def test_fit_normalisation_standardises_each_depth(name, siren):
    models, spec, params = siren
    model = _graph_model(name, spec)
    template = GraphTemplate.for_spec(spec)
    batch = template.to_batch(params)
    depth = batch.node_depth[batch.edge_index[1]]
    before = model.edge_encoder.standardise(batch.edge_attr, depth)
    model.fit_normalisation(params)
    after = model.edge_encoder.standardise(batch.edge_attr, depth)
    for d in depth.unique():
        assert abs(float(after[depth == d].std()) - 1) < 0.05, int(d)
    # a SIREN's first layer (w0 = 30) is on another scale than its second: unfitted, it stays so
    assert float(before[depth == depth.min()].std()) > 2 * float(before[depth == depth.max()].std())
