"""Neural Functional Networks: the NP/HNP layers and the NFN model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weightspace
from tests.helpers import rel_err
from weightspace import GraphTemplate
from weightspace.models.cnn import SmallCNN
from weightspace.models.mlp import MLP
from weightspace.models.siren import SIREN
from weightspace.nn.features import WeightSpaceFeatures
from weightspace.nn.nfn import (
    NFN,
    HNPLinear,
    LayerChain,
    NFNPool,
    NPLinear,
)

TOL = 1e-5


def _conv_flatten_linear() -> nn.Module:
    # conv -> flatten (block of 2x2 positions per channel) -> linear
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 2 * 2, 5), nn.Tanh(), nn.Linear(5, 2))


ARCHS = {
    "siren": (lambda: SIREN(2, (32, 32), 1), (1, 2)),
    "mlp": (lambda: MLP(6, (10, 8, 7), 3), (1, 6)),
    "small_cnn": (lambda: SmallCNN(2, (5, 4, 6), num_classes=3), (1, 2, 8, 8)),
    "conv_flatten": (_conv_flatten_linear, (1, 2, 4, 4)),
}


def _spec(name: str):
    build, shape = ARCHS[name]
    torch.manual_seed(0)
    return weightspace.trace(build(), torch.zeros(shape))


@pytest.fixture(scope="module")
def specs():
    return {name: _spec(name) for name in ARCHS}


def _params(spec, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, spec.num_parameters, generator=g, dtype=torch.float64)


def _model(spec, seed: int = 0, **kwargs) -> NFN:
    torch.manual_seed(seed)
    kwargs.setdefault("hidden_channels", 4)
    kwargs.setdefault("num_layers", 2)
    model = NFN(GraphTemplate.for_spec(spec), 3, **kwargs).double()
    if model.head == "equivariant" and model.residual:
        # the residual head starts at zero (the identity map), which is
        # trivially equivariant; randomise it so the tests see the whole network
        with torch.no_grad():
            for p in model.readout.parameters():
                p.normal_(0.0, 0.3)
    return model


def _permute_features(chain: LayerChain, features: WeightSpaceFeatures, perm) -> WeightSpaceFeatures:
    """Apply a spec permutation to multi-channel features by hand."""
    def index(space: int):
        name = chain.spaces[space]
        return perm[name] if name in perm else torch.arange(chain.sizes[space])

    weights = tuple(w.index_select(2, index(i + 1)).index_select(3, index(i))
                    for i, w in enumerate(features.weights))
    biases = tuple(b.index_select(2, index(i + 1)) for i, b in enumerate(features.biases))
    return WeightSpaceFeatures(weights, biases)


def _random_features(chain: LayerChain, channels: int, batch: int = 2) -> WeightSpaceFeatures:
    g = torch.Generator().manual_seed(3)
    return WeightSpaceFeatures(
        tuple(torch.randn(batch, channels, layer.n_out, layer.n_in, *layer.kernel, generator=g,
                          dtype=torch.float64) for layer in chain.layers),
        tuple(torch.randn(batch, channels, layer.n_out, generator=g, dtype=torch.float64)
              for layer in chain.layers))


# --------------------------------------------------------------------------- the chain
def test_chain_reads_layers_and_flatten_block(specs):
    chain = LayerChain.from_spec(specs["conv_flatten"])
    assert chain.sizes == (2, 3, 5, 2)
    assert [layer.kernel for layer in chain.layers] == [(3, 3), (4,), ()]
    chain = LayerChain.from_spec(specs["small_cnn"])
    assert chain.sizes == (2, 5, 4, 6, 3)
    assert [layer.kernel for layer in chain.layers] == [(3, 3)] * 3 + [()]


@pytest.mark.parametrize("name", list(ARCHS))
def test_features_round_trip(specs, name):
    spec = specs[name]
    chain = LayerChain.from_spec(spec)
    params = _params(spec)
    features = chain.features(params)
    assert features.weights[0].shape[:2] == (4, 1)
    assert torch.equal(chain.flat_parameters(features), params)


# --------------------------------------------------------------------------- symmetry
@pytest.mark.parametrize("layer_cls", [NPLinear, HNPLinear])
@pytest.mark.parametrize("name", ["mlp", "conv_flatten"])
def test_layers_are_equivariant(specs, name, layer_cls):
    spec = specs[name]
    chain = LayerChain.from_spec(spec)
    torch.manual_seed(0)
    layer = layer_cls(chain, 3, 5).double()
    features = _random_features(chain, 3)
    for k in range(3):
        perm = spec.random_permutation(torch.Generator().manual_seed(k))
        with torch.no_grad():
            out_of_permuted = layer(_permute_features(chain, features, perm))
            permuted_out = _permute_features(chain, layer(features), perm)
        for a, b in zip(out_of_permuted.pieces(), permuted_out.pieces(), strict=True):
            assert a.shape[1] == 5
            assert rel_err(a, b) < TOL


@pytest.mark.parametrize("mode", ["hnp", "np"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_invariant_head_is_invariant(specs, name, mode):
    spec = specs[name]
    model = _model(spec, mode=mode).eval()
    params = _params(spec)
    with torch.no_grad():
        out = model(params)
        assert out.shape == (4, 3)
        assert rel_err(out[0], out[1]) > 1e-3  # not a constant function
        for k in range(3):
            perm = spec.random_permutation(torch.Generator().manual_seed(k))
            assert rel_err(model(spec.permute_flat(params, perm)), out) < TOL


@pytest.mark.parametrize("mode", ["hnp", "np"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_equivariant_head_is_equivariant(specs, name, mode):
    spec = specs[name]
    model = _model(spec, mode=mode, head="equivariant").eval()
    params = _params(spec)
    with torch.no_grad():
        out = model(params)
        assert out.shape == params.shape
        assert rel_err(out[0], out[1]) > 1e-3  # depends on the input network
        for k in range(3):
            perm = spec.random_permutation(torch.Generator().manual_seed(k))
            assert rel_err(model(spec.permute_flat(params, perm)), spec.permute_flat(out, perm)) < TOL


def _permute_io(spec, params: torch.Tensor, where: str) -> torch.Tensor:
    """Permute the input neurons (columns of the first weight) or the output
    neurons (rows of the last weight and bias): NOT a symmetry of the network."""
    chain = LayerChain.from_spec(spec)
    tensors = spec.split_parameters(params)
    layer = chain.layers[0] if where == "input" else chain.layers[-1]
    n = layer.n_in if where == "input" else layer.n_out
    perm = torch.roll(torch.arange(n), 1)
    w = tensors[layer.weight].reshape(params.shape[0], layer.n_out, layer.n_in, *layer.kernel)
    if where == "input":
        tensors[layer.weight] = w[:, :, perm]
    else:
        tensors[layer.weight] = w[:, perm]
        tensors[layer.bias] = tensors[layer.bias][:, perm]
    return spec.join_parameters(tensors)


@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize("name", ["mlp", "small_cnn"])
def test_hnp_sees_input_and_output_neurons_np_does_not(specs, name, where):
    spec = specs[name]
    params = _params(spec)
    moved = _permute_io(spec, params, where)
    assert not torch.equal(moved, params)
    with torch.no_grad():
        hnp = _model(spec, mode="hnp").eval()
        assert rel_err(hnp(moved), hnp(params)) > 1e-3
        # NP treats input and output neurons as exchangeable too
        np_model = _model(spec, mode="np").eval()
        assert rel_err(np_model(moved), np_model(params)) < TOL


def test_np_parameter_count_is_independent_of_widths():
    narrow = weightspace.trace(MLP(8, (16, 16, 16), 3), torch.zeros(1, 8))
    wide = weightspace.trace(MLP(5, (32, 7, 9), 2), torch.zeros(1, 5))
    for head in ("invariant", "equivariant"):
        counts = [sum(p.numel() for p in _model(s, mode="np", head=head).parameters())
                  for s in (narrow, wide)]
        assert counts[0] == counts[1]
    # HNP depends on the input/output widths but not on the hidden ones
    other_hidden = weightspace.trace(MLP(8, (32, 7, 9), 3), torch.zeros(1, 8))
    hnp = [sum(p.numel() for p in _model(s, mode="hnp").parameters())
           for s in (narrow, other_hidden, wide)]
    assert hnp[0] == hnp[1] != hnp[2]


def test_pool_keeps_fixed_axes_in_hnp(specs):
    spec = specs["mlp"]  # 6 -> 10 -> 8 -> 7 -> 3
    chain = LayerChain.from_spec(spec)
    features = _random_features(chain, 2)
    hnp = NFNPool(chain, 2, mode="hnp")
    np_pool = NFNPool(chain, 2, mode="np")
    # HNP: first weight keeps its 6 inputs, last weight and bias their 3 outputs
    assert hnp.out_features == 2 * (6 + 1 + 1 + 3 + 1 + 1 + 1 + 3)
    assert np_pool.out_features == 2 * 8
    assert hnp(features).shape == (2, hnp.out_features)
    assert np_pool(features).shape == (2, np_pool.out_features)
    assert torch.allclose(np_pool(features)[:, :2], features.weights[0].mean(dim=(2, 3)))


# --------------------------------------------------------------------------- the model
def test_graph_batch_input_equals_flat_input(specs):
    spec = specs["siren"]
    model = _model(spec).eval()
    params = _params(spec)
    batch = model.template.to_batch(params)
    with torch.no_grad():
        assert torch.allclose(model(batch), model(params), rtol=1e-12, atol=1e-12)


def test_fit_normalisation_standardises_entries_and_keeps_symmetry(specs):
    spec = specs["siren"]
    g = torch.Generator().manual_seed(1)
    # entries with very different scales and offsets
    scales = torch.rand(spec.num_parameters, generator=g, dtype=torch.float64) * 10
    params = _params(spec, n=16) * scales + 3.0
    for head in ("invariant", "equivariant"):
        model = _model(spec, head=head).fit_normalisation(params).eval()
        normalised = (params - model.input_shift) / model.input_scale
        for start, end in spec.offsets.values():
            assert abs(float(normalised[:, start:end].mean())) < 1e-9
            assert abs(float(normalised[:, start:end].std(unbiased=False)) - 1) < 1e-9
        perm = spec.random_permutation(torch.Generator().manual_seed(0))
        with torch.no_grad():
            out, moved = model(params), model(spec.permute_flat(params, perm))
        expected = out if head == "invariant" else spec.permute_flat(out, perm)
        assert rel_err(moved, expected) < TOL


@pytest.mark.parametrize("head", ["invariant", "equivariant"])
def test_gradient_reaches_every_parameter(specs, head):
    spec = specs["small_cnn"]
    model = _model(spec, head=head)
    model(_params(spec)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", ["hnp", "np"])
def test_training_reduces_loss(specs, mode):
    # predict the mean of each network's weights (an invariant target)
    spec = specs["mlp"]
    g = torch.Generator().manual_seed(0)
    params = torch.randn(32, spec.num_parameters, generator=g) * 0.5 + torch.randn(32, 1, generator=g)
    target = params.mean(dim=1, keepdim=True)
    torch.manual_seed(0)
    model = NFN(GraphTemplate.for_spec(spec), 1, mode=mode, hidden_channels=8, num_layers=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        loss = nn.functional.mse_loss(model(params), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_dropout_is_active_only_in_training(specs):
    spec = specs["mlp"]
    model = _model(spec, dropout=0.5)
    params = _params(spec)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(params)
        torch.manual_seed(2)
        b = model(params)
        assert not torch.allclose(a, b)
        model.eval()
        assert torch.equal(model(params), model(params))


# --------------------------------------------------------------------------- errors
def test_resnet_is_rejected(traced):
    spec = traced("resnet_bn").spec
    with pytest.raises(ValueError, match=r"layer 'layer1\.0\.conv2'.*residual"):
        NFN(GraphTemplate.for_spec(spec), 3)


def test_norm_layers_are_rejected(traced):
    with pytest.raises(ValueError, match=r"layer '6' \(batch_norm\).*not a linear or conv"):
        NFN(GraphTemplate.for_spec(traced("mlp_bn_tanh").spec), 3)
    spec = weightspace.trace(MLP(4, (8, 8), 2, norm="layer"), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"'layers\.1\.weight' of layer 'layers\.0'.*norm"):
        NFN(GraphTemplate.for_spec(spec), 3)


def test_bad_arguments(specs):
    template = GraphTemplate.for_spec(specs["mlp"])
    with pytest.raises(ValueError, match="mode="):
        NFN(template, 3, mode="full")
    with pytest.raises(ValueError, match="head="):
        NFN(template, 3, head="both")
    with pytest.raises(ValueError, match="num_layers"):
        NFN(template, 3, num_layers=0)
    with pytest.raises(ValueError, match="agg="):
        NFN(template, 3, pool="median")


def test_untrained_residual_head_is_the_identity(specs):
    spec = next(iter(specs.values()))
    params = torch.randn(3, spec.num_parameters, dtype=torch.float64)
    torch.manual_seed(0)
    model = NFN(GraphTemplate.for_spec(spec), 1, head="equivariant", hidden_channels=4,
                num_layers=2).double().fit_normalisation(params)
    assert torch.equal(model(params), params)
    plain = NFN(GraphTemplate.for_spec(spec), 1, head="equivariant", hidden_channels=4, num_layers=2,
                residual=False).double()
    assert (plain(params) - params).abs().max() > 1e-2
