"""GraphTemplate: the schema, permutation equivariance, batching, mixed architectures."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from tests.architectures import ARCHITECTURES
from tests.helpers import assert_graph_relabelled, assert_graphs_equal
from weightspace import GraphTemplate, Permutation, SpecError, StateDictMismatchError
from weightspace.graph.schema import EDGE_TYPES, LAYER_OPS, NODE_SLOTS, NODE_TYPES, NORMS
from weightspace.graph.template import NODE_ATTRS

ARCH_IDS = [a.name for a in ARCHITECTURES]
DTYPES = [torch.float32, torch.float64]
BATCH_KEYS = {"x", "edge_index", "edge_attr", "edge_type", "x_mask", "scalars", "batch", "ptr",
              *NODE_ATTRS}


def _edges(data, kind: str):
    mask = data.edge_type == EDGE_TYPES.index(kind)
    return data.edge_index[:, mask], data.edge_attr[mask]


def _local(template, layer: str, nodes):
    """Node ids -> neuron index inside ``layer``."""
    off = template.layer_offsets[layer]
    idx = nodes - off
    assert ((idx >= 0) & (idx < template.spec.layer(layer).size)).all()
    return idx


# ------------------------------------------------------------- equivariance
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_graph_of_permuted_network_is_relabelled_graph(arch, dtype, traced):
    t = traced(arch.name, dtype)
    template = GraphTemplate(t.spec)
    g = torch.Generator().manual_seed(11)
    for _ in range(2):
        perm = t.spec.random_permutation(g)
        assert not perm.equal(t.spec.identity_permutation())
        nmap = template.node_permutation(perm)
        assert not torch.equal(nmap, torch.arange(template.num_nodes))
        assert_graph_relabelled(t.spec, t.state_dict, perm, template)


def test_node_permutation_is_explicit(traced):
    t = traced("mlp_relu")
    template = GraphTemplate(t.spec)
    order = torch.arange(16)
    order[[0, 1]] = torch.tensor([1, 0])
    perm = Permutation({"0": order})
    nmap = template.node_permutation(perm)
    expected = torch.arange(37)
    expected[[6, 7]] = torch.tensor([7, 6])
    assert torch.equal(nmap, expected)


# ---------------------------------------------------------------- batching
def _params(traced, name, dtype=torch.float64):
    spec = traced(name, dtype).spec
    return spec, spec.flatten_many([traced(name, dtype, seed=s).state_dict for s in (0, 1, 2)])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_to_batch_equals_batch_of_to_data(arch, dtype, traced):
    spec, params = _params(traced, arch.name, dtype)
    template = GraphTemplate(spec)
    batch = template.to_batch(params)
    graphs = [template.to_data(row) for row in params]
    reference = Batch.from_data_list(graphs)
    assert set(batch.keys()) == set(reference.keys()) == BATCH_KEYS
    for key in BATCH_KEYS:
        assert batch[key].dtype == reference[key].dtype, key
        assert torch.equal(batch[key], reference[key]), key
    assert batch.num_graphs == reference.num_graphs == 3
    # from_batch inverts both, exactly
    assert torch.equal(template.from_batch(batch), params)
    assert torch.equal(template.from_batch(reference), params)
    for i, graph in enumerate(graphs):
        assert torch.equal(template.from_data(graph), params[i])
        assert_graphs_equal(batch.get_example(i), graph)
    listed = batch.to_data_list()
    assert len(listed) == 3
    for got, want in zip(listed, graphs, strict=True):
        assert_graphs_equal(got, want)
    assert not torch.equal(graphs[0].x, graphs[1].x) or not torch.equal(
        graphs[0].edge_attr, graphs[1].edge_attr)


# ------------------------------------------------------------- schema: MLP
def test_mlp_relu_schema(traced):
    t = traced("mlp_relu")
    sd = t.state_dict
    template = GraphTemplate(t.spec)
    data = template.to_data(t.spec.flatten(sd))
    assert template.num_nodes == data.num_nodes == 6 + 16 + 12 + 3
    assert template.num_edges == data.num_edges == 6 * 16 + 16 * 12 + 12 * 3
    assert template.edge_dim == 1 and template.centre == 0 and template.node_dim == 1
    assert data.x.shape == (37, len(NODE_SLOTS)) and data.edge_attr.shape == (324, 1)
    assert data.node_pos.tolist() == list(range(6)) + [-1] * 28 + [0, 1, 2]
    assert data.node_type.tolist() == ([NODE_TYPES.index("input")] * 6
                                       + [NODE_TYPES.index("hidden")] * 28
                                       + [NODE_TYPES.index("output")] * 3)
    assert data.node_layer.tolist() == [0] * 6 + [1] * 16 + [2] * 12 + [3] * 3
    assert data.node_depth.tolist() == [0] * 6 + [1] * 16 + [2] * 12 + [3] * 3
    assert (data.node_op[6:] == LAYER_OPS.index("linear")).all()
    assert (data.node_op[:6] == LAYER_OPS.index("input")).all()
    assert (data.node_norm == NORMS.index("none")).all()
    # bias in slot 0 for every non-input node; nothing else
    assert data.x_mask[:, 0].tolist() == [False] * 6 + [True] * 31
    assert not data.x_mask[:, 1:].any()
    assert torch.equal(data.x[6:, 0], torch.cat([sd["0.bias"], sd["2.bias"], sd["4.bias"]]))
    assert not data.x[:6].any() and not data.x[:, 1:].any()
    # every edge carries W[out, in] of its layer
    assert (data.edge_type == EDGE_TYPES.index("linear")).all()
    layers = [("input", "0"), ("0", "2"), ("2", "4")]
    seen = 0
    for src_layer, dst_layer in layers:
        src_off, dst_off = template.layer_offsets[src_layer], template.layer_offsets[dst_layer]
        w = sd[f"{dst_layer}.weight"]
        mask = ((data.edge_index[1] >= dst_off) & (data.edge_index[1] < dst_off + w.shape[0]))
        src, dst = data.edge_index[:, mask]
        assert mask.sum() == w.numel()
        assert torch.equal(data.edge_attr[mask, 0], w[dst - dst_off, src - src_off])
        assert ((src >= src_off) & (src < src_off + w.shape[1])).all()
        pairs = set(zip(src.tolist(), dst.tolist(), strict=True))
        assert len(pairs) == w.numel()
        seen += int(mask.sum())
    assert seen == 324
    assert data.scalars.numel() == 0


# ------------------------------------------------------------ schema: convs
def test_resnet_residual_edges(traced):
    t = traced("resnet_bn")
    template = GraphTemplate(t.spec)
    data = template.to_data(t.spec.flatten(t.state_dict))
    assert template.kernel_grid == (3, 3) and template.edge_dim == 9 and template.centre == 4
    (src, dst), attr = _edges(data, "residual")
    assert src.numel() == 4 + 4 + 8
    expected = torch.zeros(16, 9, dtype=attr.dtype)
    expected[:, 4] = 1.0
    assert torch.equal(attr, expected)
    # neuron i -> neuron i, between the layers named by the spec
    pairs = [("conv1", "layer1.0.conv2"), ("layer1.0.conv2", "layer1.1.conv2"),
             ("layer2.0.conv2", "layer2.0.shortcut.0")]
    got = set(zip(src.tolist(), dst.tolist(), strict=True))
    want = set()
    for a, b in pairs:
        size = t.spec.layer(b).size
        want |= {(template.layer_offsets[a] + i, template.layer_offsets[b] + i) for i in range(size)}
    assert got == want
    # 8 batch norms: one num_batches_tracked scalar each
    assert data.scalars.tolist() == [7.0] * 8


def test_conv_kernel_is_centred_in_a_larger_grid(traced):
    t = traced("small_cnn")
    sd = t.state_dict
    template = GraphTemplate(t.spec, kernel_grid=(5, 5))
    assert template.edge_dim == 25 and template.centre == 12
    data = template.to_data(t.spec.flatten(sd))
    (src, dst), attr = _edges(data, "conv")
    assert src.numel() == 8 * 1 + 8 * 8 + 8 * 8
    grid = attr.reshape(-1, 5, 5)
    ring = grid.clone()
    ring[:, 1:4, 1:4] = 0
    assert not ring.any()
    for src_layer, dst_layer in [("input", "0"), ("0", "2"), ("2", "4")]:
        off = template.layer_offsets[dst_layer]
        mask = (dst >= off) & (dst < off + 8)
        i = _local(template, dst_layer, dst[mask])
        j = _local(template, src_layer, src[mask])
        assert torch.equal(grid[mask][:, 1:4, 1:4], sd[f"{dst_layer}.weight"][i, j])
    # the linear head's scalar weights sit at the centre
    (src, dst), attr = _edges(data, "linear")
    assert src.numel() == 80
    grid = attr.reshape(-1, 5, 5)
    i, j = _local(template, "8", dst), _local(template, "4", src)
    assert torch.equal(grid[:, 2, 2], sd["8.weight"][i, j])
    grid[:, 2, 2] = 0
    assert not grid.any()


def test_conv1d_kernel_in_a_2d_grid(traced):
    t = traced("conv1d")
    template = GraphTemplate(t.spec, kernel_grid=(3, 5))
    data = template.to_data(t.spec.flatten(t.state_dict))
    (src, dst), attr = _edges(data, "conv")
    grid = attr.reshape(-1, 3, 5)
    w = t.state_dict["2.weight"]  # kernel 3 -> row 1, columns 1..3
    off = template.layer_offsets["2"]
    mask = (dst >= off) & (dst < off + 6)
    i, j = _local(template, "2", dst[mask]), _local(template, "0", src[mask])
    assert torch.equal(grid[mask][:, 1, 1:4], w[i, j])
    assert grid[mask].abs().sum() == grid[mask][:, 1, 1:4].abs().sum()


def test_vgg_flatten_edges_carry_the_spatial_block(traced):
    t = traced("vgg_bn")
    sd = t.state_dict
    template = GraphTemplate(t.spec)
    assert template.edge_dim == 9
    data = template.to_data(t.spec.flatten(sd))
    (src, dst), attr = _edges(data, "flatten")
    assert src.numel() == 12 * 8
    i, c = _local(template, "9", dst), _local(template, "4", src)
    w = sd["9.weight"].reshape(12, 8, 4)
    assert torch.equal(attr[:, :4], w[i, c])
    assert not attr[:, 4:].any()


def test_batch_norm_nodes(traced):
    t = traced("vgg_bn")
    sd = t.state_dict
    template = GraphTemplate(t.spec)
    data = template.to_data(t.spec.flatten(sd))
    off = template.layer_offsets["0"]
    rows = slice(off, off + 6)
    assert data.x_mask[rows].all()  # bias + γ, β, running mean, running var
    for slot, key in enumerate(["0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]):
        assert torch.equal(data.x[rows, slot], sd[key]), key
    assert (data.node_norm[rows] == NORMS.index("batch")).all()
    off = template.layer_offsets["9"]  # linear without a norm
    assert data.x_mask[off: off + 12].tolist() == [[True, False, False, False, False]] * 12

    # a batch norm after tanh gets its own layer, joined by identity "norm" edges
    t = traced("mlp_bn_tanh")
    sd = t.state_dict
    template = GraphTemplate(t.spec)
    data = template.to_data(t.spec.flatten(sd))
    off = template.layer_offsets["6"]
    rows = slice(off, off + 10)
    assert data.x_mask[rows].tolist() == [[False, True, True, True, True]] * 10
    assert (data.node_op[rows] == LAYER_OPS.index("batch_norm")).all()
    for slot, key in enumerate(["6.weight", "6.bias", "6.running_mean", "6.running_var"], 1):
        assert torch.equal(data.x[rows, slot], sd[key]), key
    (src, dst), attr = _edges(data, "norm")
    assert torch.equal(dst, torch.arange(10) + off)
    assert torch.equal(src, torch.arange(10) + template.layer_offsets["4"])
    assert torch.equal(attr, torch.ones(10, 1, dtype=attr.dtype))


def test_depthwise_edges_one_per_channel(traced):
    t = traced("depthwise_separable")
    sd = t.state_dict
    template = GraphTemplate(t.spec)
    assert template.kernel_grid == (5, 5) and template.edge_dim == 25
    data = template.to_data(t.spec.flatten(sd))
    (src, dst), attr = _edges(data, "depthwise")
    assert torch.equal(src, torch.arange(8) + template.layer_offsets["stem"])
    assert torch.equal(dst, torch.arange(8) + template.layer_offsets["dw"])
    assert torch.equal(attr, sd["dw.weight"].reshape(8, 25))
    off = template.layer_offsets["dw"]
    assert data.x_mask[off: off + 8].all()  # dw.bias + bn1
    assert torch.equal(data.x[off: off + 8, 0], sd["dw.bias"])
    (src, dst), attr = _edges(data, "conv")
    stem = attr[dst < template.layer_offsets["dw"]].reshape(-1, 5, 5)
    assert not stem[:, 0].any() and not stem[:, 4].any()  # 3x3 stem centred


def test_layer_norm_over_channels_and_positions(traced):
    # norms: LayerNorm([4, 2, 2]) has 4 values per channel -> node_dim 4
    t = traced("norms")
    sd = t.state_dict
    template = GraphTemplate(t.spec)
    assert template.node_dim == 4
    data = template.to_data(t.spec.flatten(sd))
    assert data.x.shape == (template.num_nodes, 5 * 4)
    off = template.layer_offsets["6"]
    rows = slice(off, off + 4)
    assert torch.equal(data.x[rows, 4:8], sd["7.weight"].reshape(4, 4))
    assert torch.equal(data.x[rows, 8:12], sd["7.bias"].reshape(4, 4))
    assert torch.equal(data.x[rows, 0], sd["6.bias"])
    assert not data.x[rows, 1:4].any()


# ------------------------------------------------------- mixed architectures
def test_common_templates_batch_together(traced):
    names = ["mlp_relu", "small_cnn", "resnet_bn", "conv1d"]
    specs = [traced(n).spec for n in names]
    templates = GraphTemplate.common(specs)
    assert len({(tp.kernel_grid, tp.edge_dim, tp.node_dim) for tp in templates}) == 1
    assert templates[0].kernel_grid == (3, 5) and templates[0].edge_dim == 15
    params = [spec.flatten_many([traced(n, seed=s).state_dict for s in (0, 1)])
              for n, spec in zip(names, specs, strict=True)]
    graphs = [tp.to_data(row) for tp, p in zip(templates, params, strict=True) for row in p]
    batch = Batch.from_data_list(graphs)
    assert batch.num_graphs == 8
    assert batch.num_nodes == sum(g.num_nodes for g in graphs)
    listed = batch.to_data_list()
    k = 0
    for tp, p in zip(templates, params, strict=True):
        for row in p:
            assert_graphs_equal(listed[k], graphs[k])
            assert torch.equal(tp.from_data(listed[k]), row)
            k += 1
    # the 3x3 convs are centred in the 3x5 grid, the 1-d kernel 5 fills its middle row
    cnn = graphs[2]
    (_, _), attr = _edges(cnn, "conv")
    grid = attr.reshape(-1, 3, 5)
    assert not grid[:, :, 0].any() and not grid[:, :, 4].any()


def test_for_spec_is_cached(traced):
    spec = traced("vgg_bn").spec
    assert GraphTemplate.for_spec(spec) is GraphTemplate.for_spec(traced("vgg_bn", seed=1).spec)
    assert GraphTemplate.for_spec(spec) is not GraphTemplate.for_spec(spec, kernel_grid=(5, 5))


# ------------------------------------------------------------------- errors
def test_kernel_grid_too_small_is_rejected(traced):
    spec = traced("small_cnn").spec
    with pytest.raises(SpecError):
        GraphTemplate(spec, kernel_grid=(1, 1))
    with pytest.raises(SpecError):
        GraphTemplate(spec, kernel_grid=(3,))  # fewer axes than the kernels
    with pytest.raises(SpecError):
        GraphTemplate(spec, edge_dim=4)
    with pytest.raises(SpecError):
        GraphTemplate(traced("vgg_bn").spec, kernel_grid=(1, 1), edge_dim=3)  # block of 4
    with pytest.raises(SpecError):
        GraphTemplate(traced("norms").spec, node_dim=2)


def test_from_batch_rejects_a_batch_of_another_width(traced):
    spec = traced("small_cnn").spec
    template = GraphTemplate(spec)
    wide = GraphTemplate(spec, kernel_grid=(5, 5))
    params = spec.flatten_many([traced("small_cnn").state_dict])
    with pytest.raises(StateDictMismatchError, match="edge_attr"):
        template.from_batch(wide.to_batch(params))
