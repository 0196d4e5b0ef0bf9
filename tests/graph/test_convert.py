"""to_graph / from_graph / to_batch / from_batch: exact round trips, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

import weightspace
from tests.architectures import ARCHITECTURES
from tests.helpers import assert_state_dicts_equal
from weightspace import GraphTemplate, StateDictMismatchError

ARCH_IDS = [a.name for a in ARCHITECTURES]
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_graph_round_trip_is_exact(arch, dtype, traced):
    t = traced(arch.name, dtype)
    sd = t.state_dict
    data = weightspace.to_graph(sd, t.spec)
    assert isinstance(data, Data)
    assert data.x.dtype == dtype and data.edge_attr.dtype == dtype
    assert_state_dicts_equal(weightspace.from_graph(data, t.spec), sd)


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_batch_round_trip_is_exact(arch, traced):
    spec = traced(arch.name).spec
    sds = [traced(arch.name, seed=s).state_dict for s in (0, 1, 2)]
    batch = weightspace.to_batch(sds, spec)
    assert isinstance(batch, Batch) and batch.num_graphs == 3
    back = weightspace.from_batch(batch, spec)
    assert len(back) == 3
    for got, want in zip(back, sds, strict=True):
        assert_state_dicts_equal(got, want)
    # a [B, P] matrix works the same way
    from_matrix = weightspace.to_batch(spec.flatten_many(sds), spec)
    assert torch.equal(from_matrix.x, batch.x) and torch.equal(from_matrix.edge_attr, batch.edge_attr)


def test_round_trip_with_template_options(traced):
    t = traced("small_cnn")
    sd = t.state_dict
    data = weightspace.to_graph(sd, t.spec, kernel_grid=(5, 5), edge_dim=30, node_dim=2)
    assert data.edge_attr.shape[1] == 30 and data.x.shape[1] == 10
    assert_state_dicts_equal(weightspace.from_graph(data, t.spec, kernel_grid=(5, 5), edge_dim=30,
                                                    node_dim=2), sd)
    with pytest.raises(StateDictMismatchError):  # read with the default template
        weightspace.from_graph(data, t.spec)


# ------------------------------------------------------------------- errors
def _pairs():
    # resnet_groupnorm and resnet_layernorm (GroupNorm(2, c) vs GroupNorm(1, c)) have
    # identical parameter graphs: nothing in a graph can tell them apart
    same = {frozenset({"resnet_groupnorm", "resnet_layernorm"})}
    out = []
    for a in ARCHITECTURES:
        for b in ARCHITECTURES:
            if a.name == b.name or frozenset({a.name, b.name}) in same:
                continue
            out.append(pytest.param(a.name, b.name, id=f"{a.name}<-{b.name}"))
    return out


@pytest.mark.parametrize("template_arch,graph_arch", _pairs())
def test_graph_of_another_architecture_is_rejected(template_arch, graph_arch, traced):
    spec = traced(template_arch).spec
    other = traced(graph_arch)
    data = weightspace.to_graph(other.state_dict, other.spec)
    batch = weightspace.to_batch([other.state_dict, other.state_dict], other.spec)
    template = GraphTemplate(spec)
    with pytest.raises(StateDictMismatchError):
        template.from_data(data)
    with pytest.raises(StateDictMismatchError):
        template.from_batch(batch)
    with pytest.raises(StateDictMismatchError):
        weightspace.from_graph(data, spec)
    with pytest.raises(StateDictMismatchError):
        weightspace.from_batch(batch, spec)


def test_to_batch_with_wrong_number_of_parameters(traced):
    spec = traced("mlp_relu").spec
    template = GraphTemplate(spec)
    n = spec.num_parameters
    for bad in (torch.zeros(2, n + 1), torch.zeros(2, n - 1), torch.zeros(2, 3, n)):
        with pytest.raises(StateDictMismatchError, match=str(n)):
            template.to_batch(bad)
        with pytest.raises(StateDictMismatchError):
            weightspace.to_batch(bad, spec)
    with pytest.raises(StateDictMismatchError):
        template.to_data(torch.zeros(n + 1))
    with pytest.raises(StateDictMismatchError):
        template.to_data(torch.zeros(2, n))  # to_data takes one vector


def test_to_graph_checks_the_state_dict(traced):
    t = traced("mlp_relu")
    sd = t.state_dict
    del sd["4.bias"]
    with pytest.raises(StateDictMismatchError, match="'4.bias'"):
        weightspace.to_graph(sd, t.spec)
    with pytest.raises(StateDictMismatchError, match="'4.bias'"):
        weightspace.to_batch([t.state_dict, sd], t.spec)
