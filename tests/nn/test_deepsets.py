"""EdgeDeepSets: DeepSets (Zaheer et al. 2017) over a parameter graph's edges."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from tests.nn.conftest import random_zoo
from weightspace import GraphTemplate
from weightspace.models.siren import SIREN
from weightspace.nn.deepsets import EdgeDeepSets


def _zoo(model_fn, example, n=3, seed=0):
    return random_zoo(model_fn, example, n, seed)


def _model(template, out_dim=3, **kwargs):
    torch.manual_seed(0)
    return EdgeDeepSets(template, out_dim, hidden=16, fourier=4, **kwargs).double()


def _relabel(data: Data, order: torch.Tensor, edge_order: torch.Tensor) -> Data:
    """The same graph with node ``order[i]`` renamed ``i`` and edges shuffled."""
    new_id = torch.argsort(order)
    out = Data(**{k: v[order] for k, v in data.items() if k not in ("edge_index", "edge_attr", "edge_type",
                                                                     "scalars")})
    out.edge_index = new_id[data.edge_index][:, edge_order]
    out.edge_attr = data.edge_attr[edge_order]
    out.edge_type = data.edge_type[edge_order]
    out.scalars = data.scalars
    return out


def _move_fixed_neurons(spec, params):
    """Roll a weight along an input or output neuron axis: a change that no
    symmetry explains (those neurons are not permutable)."""
    out = params.clone()
    for p in spec.parameters:
        if p.role != "weight":
            continue
        for axis in (1, 0):  # input neurons first, then output neurons
            space = spec.space(p.axes[axis].space)
            if not space.permutable and space.size > 1:
                w = spec.split_parameters(out)[p.name]
                w.copy_(w.roll(1, dims=axis + 1))
                return out
    raise AssertionError("no weight with several fixed neurons")


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
@pytest.mark.parametrize("arch", ["siren", "cnn"])
def test_invariant_to_neuron_permutations(arch, aggregation, siren, cnn):
    spec, params = {"siren": siren, "cnn": cnn}[arch]
    template = GraphTemplate.for_spec(spec)
    model = _model(template, aggregation=aggregation)
    out = model(template.to_batch(params))
    worst = 0.0
    for k in range(2):
        perm = spec.random_permutation(torch.Generator().manual_seed(k))
        permuted = spec.permute_flat(params, perm)
        assert not torch.equal(permuted, params)
        permuted_out = model(template.to_batch(permuted))
        torch.testing.assert_close(permuted_out, out, rtol=1e-5, atol=1e-5)
        worst = max(worst, float((permuted_out - out).abs().max().detach()))
    # control: moving the first layer's weights to other input neurons is not
    # a symmetry; an untrained model reacts weakly, but far above rounding
    swapped = _move_fixed_neurons(spec, params)
    change = float((model(template.to_batch(swapped)) - out).abs().max().detach())
    assert change > 1e-9 and change > 1e3 * worst, (change, worst)


def test_invariant_to_any_node_relabelling(siren):
    """A graph function: node ids and edge order do not matter at all."""
    spec, params = siren
    template = GraphTemplate.for_spec(spec)
    model = _model(template)
    g = torch.Generator().manual_seed(3)
    for row in params:
        data = template.to_data(row)
        relabelled = _relabel(data, torch.randperm(data.num_nodes, generator=g),
                              torch.randperm(data.edge_index.shape[1], generator=g))
        torch.testing.assert_close(model(relabelled), model(data), rtol=1e-5, atol=1e-5)


def test_flat_input_equals_batch_input(siren):
    spec, params = siren
    template = GraphTemplate.for_spec(spec)
    model = _model(template)
    out = model(params)
    assert out.shape == (len(params), 3)
    torch.testing.assert_close(model(template.to_batch(params)), out, rtol=0, atol=0)
    torch.testing.assert_close(model(template.to_batch(params.float())), out, rtol=1e-5, atol=1e-5)
    # a single graph (no batch vector)
    torch.testing.assert_close(model(template.to_data(params[1])), out[1:2], rtol=1e-12, atol=1e-12)


def test_mixed_architectures():
    spec_a, params_a = _zoo(lambda: SIREN(hidden=(32, 32)), torch.zeros(1, 2), n=2, seed=0)
    spec_b, params_b = _zoo(lambda: SIREN(hidden=(16, 16, 16)), torch.zeros(1, 2), n=2, seed=1)
    t_a, t_b = GraphTemplate.common([spec_a, spec_b])
    model = _model(t_a)
    graphs = [t_a.to_data(params_a[0]), t_b.to_data(params_b[0]), t_a.to_data(params_a[1]),
              t_b.to_data(params_b[1])]
    mixed = model(Batch.from_data_list(graphs))  # interleaved architectures
    assert mixed.shape == (4, 3)
    for i, graph in enumerate(graphs):
        torch.testing.assert_close(mixed[i: i + 1], model(graph), rtol=1e-10, atol=1e-10)
    # and equal to each architecture's own batch
    torch.testing.assert_close(mixed[[1, 3]], model(t_b.to_batch(params_b)), rtol=1e-10, atol=1e-10)
    # still invariant inside the mixed batch
    perm = spec_b.random_permutation(torch.Generator().manual_seed(0))
    graphs[1] = t_b.to_data(spec_b.permute_flat(params_b[0], perm))
    torch.testing.assert_close(model(Batch.from_data_list(graphs)), mixed, rtol=1e-5, atol=1e-5)


def test_bad_arguments(siren, cnn):
    spec, params = siren
    template = GraphTemplate.for_spec(spec)
    with pytest.raises(ValueError, match="EdgeDeepSets.*invariant|equivariant"):
        EdgeDeepSets(template, 3, head="equivariant")
    with pytest.raises(ValueError, match="aggregation"):
        EdgeDeepSets(template, 3, aggregation="max")
    # graphs of a template with other widths
    cnn_template = GraphTemplate.for_spec(cnn[0])
    with pytest.raises(ValueError, match="width"):
        _model(template)(cnn_template.to_batch(cnn[1]))


def test_trains_and_gradient_reaches_every_parameter():
    spec, _ = _zoo(lambda: SIREN(hidden=(8, 8)), torch.zeros(1, 2), n=1)
    template = GraphTemplate.for_spec(spec)
    torch.manual_seed(0)
    params = torch.randn(12, spec.num_parameters, dtype=torch.float64) * 0.3
    scale = torch.linspace(0.2, 2.0, 12, dtype=torch.float64)[:, None]
    params = params * scale
    target = (scale - scale.mean()) / scale.std()  # the weights' scale, an invariant
    batch = template.to_batch(params)
    model = _model(template, out_dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(batch), target)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < 0.3 * losses[0], losses
    model.zero_grad()
    torch.nn.functional.mse_loss(model(batch), target).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    # embeddings of categories these graphs do not contain get no gradient, everything else does
    assert all(".node_" in n or ".edge_type" in n for n in no_grad), no_grad
    assert not any(n.startswith(("phi", "rho")) for n in no_grad)
