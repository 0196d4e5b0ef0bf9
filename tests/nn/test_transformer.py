"""The sparse relational graph transformer: symmetry, batching, attention,
training and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

import weightspace
from weightspace.graph import GraphTemplate
from weightspace.models.cnn import SmallCNN
from weightspace.models.siren import SIREN
from weightspace.nn.base import as_parameters
from weightspace.nn.transformer import GraphTransformer, RelationalAttention

SMALL = dict(hidden=16, num_layers=2, heads=2, fourier=4)
# float64 symmetry errors are ~1e-14; this is far tighter than 1e-5 so that
# the non-symmetric controls below (which move an untrained, mean-pooled
# model's output by ~1e-6..1e-4) prove the checks can fail
ATOL = 1e-10
CONTROL = 1e-8


def siren_spec(hidden=(32, 32)) -> weightspace.WeightSpaceSpec:
    return weightspace.trace(SIREN(hidden=hidden).double(), torch.zeros(1, 2, dtype=torch.float64))


@pytest.fixture(scope="module")
def specs(traced):
    """SIREN 2-32-32-1, SmallCNN (RGB, three strided convs + linear), a BatchNorm ResNet."""
    cnn = SmallCNN(in_channels=3, channels=(8, 8, 8)).double()
    return {
        "siren": siren_spec(),
        "small_cnn": weightspace.trace(cnn, torch.zeros(1, 3, 8, 8, dtype=torch.float64)),
        "resnet_bn": traced("resnet_bn").spec,
    }


def random_params(spec, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, spec.num_parameters, generator=generator, dtype=torch.float64) * 0.5


def build(template, out_dim=3, head="invariant", seed=0, **kwargs) -> GraphTransformer:
    torch.manual_seed(seed)
    model = GraphTransformer(template, out_dim, head=head, **{**SMALL, **kwargs}).double().eval()
    if head == "equivariant":
        # the decoder starts at the identity map (zero last layers), which is
        # trivially equivariant; randomise it so the test sees the whole network
        with torch.no_grad():
            for p in model.decoder.parameters():
                p.normal_(0.0, 0.3)
    return model


def edited(spec, params: torch.Tensor, name: str, edit) -> torch.Tensor:
    """``params`` with parameter ``name`` (viewed as ``[B, *shape]``) replaced by ``edit`` of it."""
    start, end = spec.offsets[name]
    out = params.clone()
    view = params[:, start:end].reshape(len(params), *spec.parameter(name).shape)
    out[:, start:end] = edit(view).reshape(len(params), -1)
    return out


def swap_input_neurons(spec, params: torch.Tensor) -> torch.Tensor:
    """Reverse the input neurons (coordinates / image channels) in the first weight: no symmetry."""
    first = next(p for p in spec.parameters if p.role == "weight")
    return edited(spec, params, first.name, lambda w: w.flip(2))


def random_permutation(spec, seed: int):
    perm = spec.random_permutation(torch.Generator().manual_seed(seed))
    assert any(not torch.equal(perm[s], torch.arange(len(perm[s]))) for s in perm), "identity permutation"
    return perm


@pytest.mark.parametrize("name", ["siren", "small_cnn", "resnet_bn"])
def test_invariant_head_is_invariant_to_hidden_neuron_permutations(specs, name):
    spec = specs[name]
    template = GraphTemplate.for_spec(spec)
    model = build(template)
    params = random_params(spec, 3, seed=1)
    with torch.no_grad():
        out = model(params)
        assert out.shape == (3, 3)
        for seed in range(2):
            permuted = spec.permute_flat(params, random_permutation(spec, seed))
            assert not torch.equal(permuted, params)
            torch.testing.assert_close(model(permuted), out, atol=ATOL, rtol=0)
        # a batch of graphs and flat parameters are the same input
        torch.testing.assert_close(model(template.to_batch(params)), out, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["siren", "small_cnn", "resnet_bn"])
def test_equivariant_head_is_equivariant_to_hidden_neuron_permutations(specs, name):
    spec = specs[name]
    template = GraphTemplate.for_spec(spec)
    model = build(template, head="equivariant")
    params = random_params(spec, 2, seed=2)
    with torch.no_grad():
        out = template.from_batch(model(template.to_batch(params)))
        assert out.shape == params.shape
        assert (out - params).abs().max() > 1e-2, "the head must not be the identity for this test"
        for seed in range(2):
            perm = random_permutation(spec, seed)
            out_of_permuted = as_parameters(model(template.to_batch(spec.permute_flat(params, perm))), template)
            torch.testing.assert_close(out_of_permuted, spec.permute_flat(out, perm), atol=ATOL, rtol=0)
            # control: the output network did move with the permutation
            assert (out_of_permuted - out).abs().max() > 1e-3
        # control: a non-symmetry (input coordinates of a SIREN, input
        # channels of a CNN, swapped in the first weight) is not followed
        out_of_swapped = as_parameters(model(template.to_batch(swap_input_neurons(spec, params))), template)
        assert (out_of_swapped - swap_input_neurons(spec, out)).abs().max() > CONTROL


def test_non_symmetries_change_the_invariant_output(specs):
    """Controls: swapping the two input coordinates of a SIREN (the first
    weight's columns), or permuting a hidden layer's neurons without the next
    layer's columns, is no symmetry and must change the output."""
    spec = specs["siren"]
    model = build(GraphTemplate.for_spec(spec))
    params = random_params(spec, 1, seed=10)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    half_permuted = edited(spec, edited(spec, params, "net.0.weight", lambda w: w[:, perm]),
                           "net.0.bias", lambda b: b[:, perm])
    with torch.no_grad():
        out = model(params)
        for changed in (swap_input_neurons(spec, params), half_permuted):
            assert (model(changed) - out).abs().max() > CONTROL


@pytest.mark.parametrize("head", ["invariant", "equivariant"])
def test_mixed_architecture_batch_equals_each_graph_alone(head):
    spec_a, spec_b = siren_spec((32, 32)), siren_spec((16, 16, 16))
    template_a, template_b = GraphTemplate.common([spec_a, spec_b])
    model = build(template_a, head=head)
    pa, pb = random_params(spec_a, 2, seed=3), random_params(spec_b, 1, seed=4)
    graphs = [(template_a, template_a.to_data(pa[0])), (template_b, template_b.to_data(pb[0])),
              (template_a, template_a.to_data(pa[1]))]
    with torch.no_grad():
        batched = model(Batch.from_data_list([g for _, g in graphs]))
        for i, (template, graph) in enumerate(graphs):
            alone = model(graph)
            if head == "invariant":
                torch.testing.assert_close(batched[i], alone[0], atol=ATOL, rtol=0)
            else:
                torch.testing.assert_close(template.from_data(batched.get_example(i)),
                                           template.from_data(alone), atol=ATOL, rtol=0)


def test_attention_weights_sum_to_one_over_each_nodes_edges(specs):
    spec = specs["resnet_bn"]  # residual and norm edges: in-degrees from 1 to dozens
    template = GraphTemplate.for_spec(spec)
    model = build(template)
    data = template.to_batch(random_params(spec, 2, seed=5))
    layer = model.layers[0]
    with torch.no_grad():
        h, e = model.node_encoder(data), model.edge_encoder(data)
        n = data.num_nodes
        for attention, receiver in ((layer.forward_attention, data.edge_index[1]),
                                    (layer.backward_attention, data.edge_index[0])):
            out, alpha = attention(h, data.edge_index, e, return_attention_weights=True)
            assert alpha.shape == (data.edge_index.shape[1], SMALL["heads"])
            assert (alpha >= 0).all()
            total = scatter(alpha, receiver, 0, n, reduce="sum")
            has_edges = torch.bincount(receiver, minlength=n) > 0
            torch.testing.assert_close(total[has_edges], torch.ones_like(total[has_edges]))
            # nodes with no edges in this direction (input neurons forward,
            # output neurons backward) exist and get exactly zeros
            assert (~has_edges).any()
            assert torch.equal(out[~has_edges], torch.zeros_like(out[~has_edges]))


def test_training_reduces_the_loss():
    """Regress the scale by which each SIREN's weights were multiplied."""
    spec = siren_spec((8, 8))
    template = GraphTemplate.for_spec(spec)
    generator = torch.Generator().manual_seed(0)
    scale = torch.rand(24, 1, generator=generator) * 1.5 + 0.5
    params = torch.randn(24, spec.num_parameters, generator=generator) * 0.5 * scale
    torch.manual_seed(0)
    model = GraphTransformer(template, 1, **SMALL)
    batch = template.to_batch(params)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(batch), scale)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize("head", ["invariant", "equivariant"])
def test_gradients_reach_every_parameter(specs, head):
    """No parameter is unused: the last layer's edge update feeds the edge
    mean (invariant) or the edge decoder (equivariant). Only at
    initialisation does the equivariant decoder's zero last layer block all
    gradients upstream of it, which :func:`build` undoes."""
    spec = specs["resnet_bn"]
    template = GraphTemplate.for_spec(spec)
    model = build(template, head=head).train()
    out = model(random_params(spec, 2, seed=6))
    if head == "equivariant":
        out = as_parameters(out, template)
    out.pow(2).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_untrained_equivariant_head_is_the_identity(specs):
    spec = specs["small_cnn"]
    template = GraphTemplate.for_spec(spec)
    model = GraphTransformer(template, 0, head="equivariant", **SMALL).double()
    params = random_params(spec, 2, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(as_parameters(model(params), template), params)


def test_float64_inputs_to_a_float32_model(specs):
    spec = specs["siren"]
    template = GraphTemplate.for_spec(spec)
    model = GraphTransformer(template, 2, **SMALL)
    params = random_params(spec, 2, seed=8)
    batch = template.to_batch(params)
    out = model(batch)
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    assert batch.x.dtype == torch.float64  # the caller's batch is left alone
    torch.testing.assert_close(model(params.float()), out)


def test_clear_errors(specs):
    template = GraphTemplate.for_spec(specs["siren"])
    with pytest.raises(ValueError, match="divisible by heads"):
        GraphTransformer(template, 1, hidden=10, heads=4)
    with pytest.raises(ValueError, match="head='pooled' is not supported"):
        GraphTransformer(template, 1, head="pooled")
    with pytest.raises(TypeError, match="GraphTemplate"):
        GraphTransformer(specs["siren"], 1)
    with pytest.raises(ValueError, match="direction"):
        RelationalAttention(16, 2, direction="sideways")
    # a conv graph (9 values per edge) through a model built for SIREN graphs (1 per edge)
    model = GraphTransformer(template, 1, **SMALL).double()
    cnn = GraphTemplate.for_spec(specs["small_cnn"])
    with pytest.raises(ValueError, match="GraphTemplate.common"):
        model(cnn.to_batch(random_params(specs["small_cnn"], 1, seed=9)))
