"""Assertions shared by the spec and graph tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from weightspace import GraphTemplate, Permutation, WeightSpaceSpec
from weightspace.graph.template import NODE_ATTRS


def rel_err(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def run(model: nn.Module, state_dict: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``model``'s output with another state dict (buffers included)."""
    with torch.no_grad():
        return functional_call(model, dict(state_dict), (x,))


def assert_state_dicts_equal(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    """Same keys in the same order, same dtypes and shapes, equal bit for bit."""
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def assert_graphs_equal(a, b) -> None:
    """Two PyG graphs with the same attributes, dtypes and values."""
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        va, vb = a[key], b[key]
        if isinstance(va, Tensor):
            assert isinstance(vb, Tensor), key
            assert va.dtype == vb.dtype, key
            assert va.shape == vb.shape, key
            assert torch.equal(va, vb), key
        else:
            assert va == vb, key


def edge_multiset(edge_index: Tensor, edge_type: Tensor, edge_attr: Tensor) -> Counter:
    return Counter(
        (int(s), int(d), int(t), tuple(a.tolist()))
        for s, d, t, a in zip(edge_index[0], edge_index[1], edge_type, edge_attr, strict=True)
    )


def assert_graph_relabelled(spec: WeightSpaceSpec, state_dict: Mapping[str, Tensor],
                            perm: Permutation, template: GraphTemplate | None = None) -> None:
    """The graph of the permuted network is the original graph with its nodes
    relabelled by ``template.node_permutation(perm)``; nothing else changes."""
    template = template or GraphTemplate(spec)
    g = template.to_data(spec.flatten(state_dict))
    gp = template.to_data(spec.flatten(spec.permute(state_dict, perm)))
    nmap = template.node_permutation(perm)
    assert sorted(nmap.tolist()) == list(range(template.num_nodes))
    assert torch.equal(gp.x, g.x[nmap])
    assert torch.equal(gp.x_mask, g.x_mask[nmap])
    for key in NODE_ATTRS:
        assert torch.equal(gp[key], g[key][nmap]), key
    inv = torch.argsort(nmap)
    relabelled = edge_multiset(inv[g.edge_index], g.edge_type, g.edge_attr)
    assert relabelled == edge_multiset(gp.edge_index, gp.edge_type, gp.edge_attr)
    assert torch.equal(gp.scalars, g.scalars)
    assert sorted(gp.keys()) == sorted(g.keys())
