"""Tracing: the derived spec is a true description of each network's symmetries."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import weightspace
from tests.architectures import ARCHITECTURES, TinyResNet, build, randomise_buffers
from tests.helpers import assert_graph_relabelled, assert_state_dicts_equal, rel_err, run
from weightspace import (
    GraphTemplate,
    NeuronScaling,
    SpecError,
    StateDictMismatchError,
    TraceError,
    UnsupportedLayerError,
    WeightSpaceSpec,
    register_module_rule,
)
from weightspace.spec import Axis
from weightspace.spec import rules as rules_mod

ARCH_IDS = [a.name for a in ARCHITECTURES]
P, PS, PG, PSG = ("permutation",), ("permutation", "scale"), ("permutation", "sign"), (
    "permutation", "scale", "sign")


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ invariance
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_random_permutations_leave_the_function_unchanged(arch, traced):
    t = traced(arch.name, torch.float32)
    sd = t.state_dict
    y = run(t.model, sd, t.x)
    g = torch.Generator().manual_seed(1234)
    for _ in range(3):
        perm = t.spec.random_permutation(g)
        assert set(perm) == {s.name for s in t.spec.permutable_spaces}
        permuted = t.spec.permute(sd, perm)
        assert _changed(sd, permuted), "the permutation did not move any parameter"
        assert rel_err(run(t.model, permuted, t.x), y) < 1e-5


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_random_scaling_and_sign_flips_leave_the_function_unchanged(arch, traced):
    t = traced(arch.name, torch.float64)
    sd = t.state_dict
    y = run(t.model, sd, t.x)
    g = torch.Generator().manual_seed(99)
    for kind, scaling in (("scale", t.spec.random_scaling(g)), ("sign", t.spec.random_sign_flip(g))):
        assert scaling.kind == kind
        assert set(scaling.factors) == {s.name for s in t.spec.spaces if kind in s.symmetries}
        rescaled = t.spec.rescale(sd, scaling)
        if scaling.factors:
            assert _changed(sd, rescaled), f"the {kind} symmetry did not move any parameter"
        assert rel_err(run(t.model, rescaled, t.x), y) < 1e-9, kind


# ------------------------------------------------------- expected symmetries
# Derived by hand from each architecture's forward (see tests/architectures.py):
# ReLU / leaky ReLU / max pooling commute with positive scaling, tanh / sine with
# sign flips, (average) pooling and linear maps with both; a norm's γ/β start a
# new scalable producer, everything else (ELU, Softplus, SiLU, Mish, sigmoid,
# GELU, ReLU6, max pooling for signs) breaks the symmetry.
EXPECTED_SYMMETRIES = {
    "mlp_relu": {"input": (), "0": PS, "2": PS, "4": ()},
    "siren": {"input": (), "layers.0": PG, "layers.1": PG, "layers.2": ()},
    # Hardtanh is odd, but AdaptiveMaxPool1d does not commute with sign flips
    "conv1d": {"input": (), "0": P, "2": P, "5": P, "9": ()},
    "small_cnn": {"input": (), "0": PS, "2": PS, "4": PS, "8": ()},
    "vgg_bn": {"input": (), "0": PS, "4": PS, "9": PS, "12": ()},
    # 0: bn γ/β -> tanh -> linear (sign only); 4: tanh -> bn -> linear, the last
    # bn's γ/β can be scaled or flipped against the next linear's columns
    "mlp_bn_tanh": {"input": (), "0": PG, "4": PSG, "7": ()},
    "depthwise_separable": {"input": (), "stem": PS, "pw": PS, "fc": ()},
    "conv3d": {"input": (), "0": P, "4": P, "9": ()},
    "norms": {"input": (), "0": PS, "3": P, "6": P, "10": ()},
    "functional": {"input": (), "conv1": PS, "fc1": PG, "fc2": P, "fc3": ()},
    "resnet_bn": {"input": (), "conv1": PS, "layer1.0.conv1": PS, "layer1.1.conv1": PS,
                  "layer2.0.conv1": PS, "layer2.0.conv2": PS, "linear": ()},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SYMMETRIES))
def test_expected_symmetries(name, traced):
    spec = traced(name).spec
    assert {s.name: s.symmetries for s in spec.spaces} == EXPECTED_SYMMETRIES[name]


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_input_and_output_spaces_are_not_permutable(arch, traced):
    spec = traced(arch.name).spec
    assert spec.spaces[0].name == "input" and spec.spaces[0].role == "input"
    for s in spec.spaces:
        assert s.permutable == (s.role == "hidden")
        if s.role != "hidden":
            assert s.symmetries == () and not s.scale_rules and not s.sign_rules
    assert {s.role for s in spec.spaces} == {"input", "hidden", "output"}
    output = {layer.space for layer in spec.output_layers}
    assert output and all(spec.space(n).role == "output" for n in output)


def test_resnet_bn_residual_stream_ties_spaces(traced):
    spec = traced("resnet_bn").spec

    def space(param, axis=0):
        return spec.parameter(param).axes[axis].space

    assert len(spec.permutable_spaces) == 5
    stream = space("conv1.weight")
    assert space("layer1.0.conv2.weight") == stream
    assert space("layer1.1.conv2.weight") == stream
    # the blocks' first convs read the stream and write their own spaces
    assert space("layer1.0.conv1.weight", 1) == stream
    assert len({stream, space("layer1.0.conv1.weight"), space("layer1.1.conv1.weight")}) == 3
    # layer2: the projection shortcut and conv2 are added: one space
    assert space("layer2.0.conv2.weight") == space("layer2.0.shortcut.0.weight")
    assert space("layer2.0.shortcut.0.weight", 1) == stream
    assert space("layer2.0.conv2.weight") != stream
    assert space("linear.weight", 1) == space("layer2.0.conv2.weight")
    # batch-norm parameters and running statistics index their conv's channels
    for bn, conv in [("bn1", "conv1"), ("layer1.0.bn1", "layer1.0.conv1"),
                     ("layer1.0.bn2", "layer1.0.conv2"), ("layer2.0.bn2", "layer2.0.conv2"),
                     ("layer2.0.shortcut.1", "layer2.0.shortcut.0")]:
        for attr, role in [("weight", "norm_weight"), ("bias", "norm_bias"),
                           ("running_mean", "running_mean"), ("running_var", "running_var")]:
            p = spec.parameter(f"{bn}.{attr}")
            assert p.role == role
            assert p.axes == (Axis(space(f"{conv}.weight")),), p.name
        nbt = spec.parameter(f"{bn}.num_batches_tracked")
        assert nbt.role == "scalar" and nbt.axes == () and nbt.is_buffer


def test_resnet_groupnorm_restricts_permutations_to_blocks(traced):
    spec = traced("resnet_groupnorm").spec
    assert len(spec.permutable_spaces) == 5
    assert all(s.permutation_blocks == 2 for s in spec.permutable_spaces)
    # GroupNorm(1, c) normalises over all channels: no restriction
    assert all(s.permutation_blocks == 1 for s in traced("resnet_layernorm").spec.spaces)


def test_vgg_flatten_gives_blocked_axis(traced):
    spec = traced("vgg_bn").spec
    last_conv = spec.parameter("4.weight").axes[0].space
    assert spec.parameter("9.weight").axes == (Axis("9"), Axis(last_conv, block=4))
    assert spec.space(last_conv).size == 8


def test_flattened_image_input_becomes_input_neurons():
    spec = weightspace.trace(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (2, 1, 8, 8))
    assert spec.space("input").size == 64
    assert spec.input_shape == (1, 8, 8)
    assert spec.parameter("1.weight").axes == (Axis("1"), Axis("input"))
    assert spec.permutable_spaces == ()


# --------------------------------------------------- no symmetry where none is
@pytest.mark.parametrize("name,space", [("siren", "layers.0"), ("conv1d", "5"),
                                        ("residual_mlp_layernorm", "ups.0"),
                                        ("mlp_relu", "input"), ("mlp_relu", "4")])
def test_rescale_rejects_scaling_without_scale_symmetry(name, space, traced):
    t = traced(name)
    n = t.spec.space(space).size
    with pytest.raises(SpecError, match="scale"):
        t.spec.rescale(t.state_dict, NeuronScaling("scale", {space: torch.full((n,), 2.0)}))


def test_rescale_rejects_sign_flip_without_sign_symmetry(traced):
    t = traced("mlp_relu")
    with pytest.raises(SpecError, match="sign"):
        t.spec.rescale(t.state_dict, NeuronScaling("sign", {"0": -torch.ones(16)}))


def test_tanh_network_has_no_scale_symmetry():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    scaled = dict(sd)
    scaled["0.weight"] = sd["0.weight"] * 2
    scaled["0.bias"] = sd["0.bias"] * 2
    scaled["2.weight"] = sd["2.weight"] / 2
    # the same move on a ReLU network is a symmetry; on tanh it is not
    assert rel_err(run(model, scaled, x), run(model, sd, x)) > 1e-3
    spec = weightspace.trace(model, x)
    assert spec.space("0").symmetries == ("permutation", "sign")
    assert spec.space("0").scale_rules == ()
    assert spec.random_scaling(torch.Generator().manual_seed(0)).factors == {}
    with pytest.raises(SpecError):
        spec.rescale(sd, NeuronScaling("scale", {"0": torch.full((8,), 2.0)}))


# ---------------------------------------------------- tracing has no side effects
def test_trace_does_not_modify_the_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    randomise_buffers(model, torch.Generator().manual_seed(1))
    model.train()
    model[5].eval()
    flags = {name: m.training for name, m in model.named_modules()}
    assert flags[""] and not flags["5"] and flags["1"]
    before = copy.deepcopy(model.state_dict())
    spec = weightspace.trace(model, torch.randn(6, 4))
    assert spec.permutable_spaces
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert_state_dicts_equal(model.state_dict(), before)
    assert int(model[1].num_batches_tracked) == 7


# ---------------------------------------------------------------- hashing, JSON
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_hash_ignores_batch_size_and_values(arch, traced):
    spec = traced(arch.name).spec
    model = build(arch, seed=5)
    x1 = torch.randn(1, *arch.input_shape[1:], dtype=torch.float64)
    x4 = torch.randn(4, *arch.input_shape[1:], dtype=torch.float64)
    assert weightspace.trace(model, x1).hash == weightspace.trace(model, x4).hash == spec.hash
    assert weightspace.trace(model, x4) == spec


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_json_round_trip(arch, traced):
    spec = traced(arch.name).spec
    again = WeightSpaceSpec.from_json(spec.to_json())
    assert again == spec
    assert again.hash == spec.hash
    assert again.to_json() == spec.to_json()
    assert WeightSpaceSpec.from_json(spec.to_json(indent=2)) == spec


def test_trace_by_shape_uses_the_module_dtype():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    by_tensor = weightspace.trace(model, torch.randn(2, 4, dtype=torch.float64))
    assert weightspace.trace(model, (2, 4)) == by_tensor


def test_trace_by_shape_and_by_tensor_agree():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    assert weightspace.trace(model, (2, 3, 8, 8)) == weightspace.trace(model, torch.randn(5, 3, 8, 8))
    with pytest.raises(TraceError):
        weightspace.trace(model, (2, 3, 0, 8))
    with pytest.raises(TraceError):
        weightspace.trace(model, (2, 4, 8, 8))  # wrong channel count


def test_different_width_gives_different_hash():
    def mlp(width):
        return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 3))

    assert weightspace.trace(mlp(16), (2, 6)).hash == weightspace.trace(mlp(16), (2, 6)).hash
    assert weightspace.trace(mlp(16), (2, 6)).hash != weightspace.trace(mlp(17), (2, 6)).hash
    a = weightspace.trace(TinyResNet(widths=(4, 8)), (2, 3, 8, 8))
    b = weightspace.trace(TinyResNet(widths=(4, 6)), (2, 3, 8, 8))
    assert a.hash != b.hash and a != b


def test_from_json_rejects_garbage():
    with pytest.raises(SpecError):
        WeightSpaceSpec.from_json("{not json")
    with pytest.raises(SpecError):
        WeightSpaceSpec.from_json('{"spaces": []}')


# ------------------------------------------------------------------------ errors
class _AttentionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, h):
        return self.attn(h, h, h)[0]


class _AttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([_AttentionBlock()])
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.blocks[0](self.proj(x)))


class _CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 5)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1))


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:
            h = h * 2
        return h


def test_multihead_attention_is_unsupported():
    with pytest.raises(UnsupportedLayerError) as err:
        weightspace.trace(_AttentionNet(), (2, 5, 8))
    msg = str(err.value)
    assert "blocks.0.attn" in msg
    assert "MultiheadAttention" in msg
    assert "register_module_rule" in msg


def test_cat_of_two_branches_is_unsupported():
    with pytest.raises(UnsupportedLayerError) as err:
        weightspace.trace(_CatNet(), (2, 4))
    assert "register_function_rule" in str(err.value)
    assert "cat" in str(err.value)


def test_grouped_conv_is_unsupported():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 1))
    with pytest.raises(UnsupportedLayerError, match="groups=2"):
        weightspace.trace(model, (2, 4, 6, 6))


def test_data_dependent_control_flow_is_a_trace_error():
    with pytest.raises(TraceError):
        weightspace.trace(_DataDependent(), (2, 4))


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_check_state_dict_names_the_bad_key(change, traced):
    t = traced("mlp_relu")
    sd = t.state_dict
    t.spec.check_state_dict(sd)
    if change == "missing":
        del sd["2.bias"]
        key = "2.bias"
    elif change == "extra":
        sd["5.weight"] = torch.zeros(3)
        key = "5.weight"
    else:
        sd["2.weight"] = torch.zeros(12, 15, dtype=torch.float64)
        key = "2.weight"
    for call in (t.spec.check_state_dict, t.spec.flatten,
                 lambda s: t.spec.permute(s, t.spec.identity_permutation())):
        with pytest.raises(StateDictMismatchError, match=f"'{key}'"):
            call(sd)


# --------------------------------------------------------------- custom rules
class ChannelScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return x * self.alpha


def channel_scale_rule(ctx, node, m, args, kwargs):
    path = str(node.target)
    ctx.call_module_once(path)
    x = args[0]
    ctx.add_parameter(path, "alpha", [], "scalar", x.layer)
    return x.replace(shape=ctx.shape(node), fresh=False)


@pytest.fixture
def unregister_channel_scale():
    assert ChannelScale not in rules_mod._MODULE_RULES
    yield
    rules_mod._MODULE_RULES.pop(ChannelScale, None)


def test_register_module_rule(unregister_channel_scale):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), ChannelScale(), nn.ReLU(), nn.Linear(8, 8),
                          nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedLayerError, match="register_module_rule") as err:
        weightspace.trace(model, x)
    assert "ChannelScale" in str(err.value) and "'1'" in str(err.value)

    register_module_rule(ChannelScale, channel_scale_rule)
    spec = weightspace.trace(model, x)
    alpha = spec.parameter("1.alpha")
    assert alpha.role == "scalar" and alpha.axes == () and alpha.shape == ()
    assert [p.name for p in spec.parameters] == list(model.state_dict())
    # multiplying by a scalar commutes with every symmetry
    assert spec.space("0").symmetries == PS
    assert spec.space("3").symmetries == PG
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    y = run(model, sd, x)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        permuted = spec.permute(sd, spec.random_permutation(g))
        assert torch.equal(permuted["1.alpha"], sd["1.alpha"])
        assert rel_err(run(model, permuted, x), y) < 1e-9
    assert rel_err(run(model, spec.rescale(sd, spec.random_scaling(g)), x), y) < 1e-9


# ---------------------------------------------------------------- hypothesis
ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
    "leaky_relu": lambda: nn.LeakyReLU(0.1), "identity": nn.Identity,
}
# what each activation (applied right before a linear layer) keeps
KEEPS = {"relu": PS, "leaky_relu": PS, "identity": PSG, "tanh": PG, "gelu": P, "sigmoid": P}


def _check_random_network(model: nn.Module, x: torch.Tensor, seed: int, hidden: list[str],
                          keeps: tuple[str, ...]) -> None:
    randomise_buffers(model, torch.Generator().manual_seed(seed))
    model.eval()
    spec = weightspace.trace(model, x)
    assert [s.name for s in spec.permutable_spaces] == hidden
    assert all(s.symmetries == keeps for s in spec.permutable_spaces)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    y = run(model, sd, x)
    g = torch.Generator().manual_seed(seed)
    for _ in range(2):
        perm = spec.random_permutation(g)
        assert rel_err(run(model, spec.permute(sd, perm), x), y) < 1e-9
    for scaling in (spec.random_scaling(g), spec.random_sign_flip(g)):
        assert rel_err(run(model, spec.rescale(sd, scaling), x), y) < 1e-9
    template = GraphTemplate(spec)
    params = spec.flatten(sd)
    back = spec.unflatten(template.from_data(template.to_data(params)))
    assert_state_dicts_equal(back, sd)
    assert_state_dicts_equal(weightspace.from_graph(weightspace.to_graph(sd, spec), spec), sd)
    assert_graph_relabelled(spec, sd, perm, template)


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 12), min_size=2, max_size=5),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    bias=st.booleans(),
    norm=st.sampled_from([None, "batch", "layer"]),
    seed=st.integers(0, 2**16),
)
def test_random_mlps(widths, activation, bias, norm, seed):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    hidden = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            hidden.append(str(len(layers) - 1))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(b))
            elif norm == "layer":
                layers.append(nn.LayerNorm(b))
            layers.append(ACTIVATIONS[activation]())
    model = nn.Sequential(*layers).double()
    x = torch.randn(3, widths[0], dtype=torch.float64)
    _check_random_network(model, x, seed, hidden, KEEPS[activation])


@settings(max_examples=25, deadline=None)
@given(
    channels=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    kernels=st.lists(st.sampled_from([1, 3, 5]), min_size=3, max_size=3),
    strides=st.lists(st.sampled_from([1, 2]), min_size=3, max_size=3),
    batch_norm=st.booleans(),
    activation=st.sampled_from(["relu", "tanh"]),
    pool_head=st.booleans(),
    outputs=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_random_cnns(channels, kernels, strides, batch_norm, activation, pool_head, outputs, seed):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    hidden = []
    size = 8
    for (a, b), k, s in zip(zip(channels[:-1], channels[1:], strict=True), kernels, strides,
                            strict=False):
        hidden.append(str(len(layers)))
        layers.append(nn.Conv2d(a, b, k, stride=s, padding=k // 2))
        size = (size + 2 * (k // 2) - k) // s + 1
        if batch_norm:
            layers.append(nn.BatchNorm2d(b))
        layers.append(ACTIVATIONS[activation]())
    if pool_head:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], outputs)]
    else:
        layers += [nn.Flatten(), nn.Linear(channels[-1] * size * size, outputs)]
    model = nn.Sequential(*layers).double()
    x = torch.randn(2, channels[0], 8, 8, dtype=torch.float64)
    _check_random_network(model, x, seed, hidden, KEEPS[activation])
