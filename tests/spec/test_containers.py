"""The spec as a container: flat parameter view, lookups, summary."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.architectures import ARCHITECTURES
from tests.helpers import assert_state_dicts_equal
from weightspace import SpecError, StateDictMismatchError

ARCH_IDS = [a.name for a in ARCHITECTURES]
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_flatten_unflatten_round_trip(arch, dtype, traced):
    t = traced(arch.name, dtype)
    sd = t.state_dict
    flat = t.spec.flatten(sd)
    assert flat.shape == (t.spec.num_parameters,) and flat.dtype == dtype == t.spec.dtype
    back = t.spec.unflatten(flat)
    assert_state_dicts_equal(back, sd)
    for p in t.spec.parameters:
        assert str(back[p.name].dtype) == f"torch.{p.dtype}"
        if p.name.endswith("num_batches_tracked"):
            assert back[p.name].dtype == torch.int64 and int(back[p.name]) == 7
    # new tensors: writing to the result touches neither the vector nor the state dict
    flat_before = flat.clone()
    for v in back.values():
        v.zero_()
    assert torch.equal(flat, flat_before)
    assert_state_dicts_equal(t.state_dict, sd)


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_flat_order_is_the_state_dict_order(arch, traced):
    t = traced(arch.name)
    sd = t.state_dict
    spec = t.spec
    assert [p.name for p in spec.parameters] == list(sd)
    assert list(spec.offsets) == list(sd)
    ends = list(itertools.accumulate(v.numel() for v in sd.values()))
    starts = [0, *ends[:-1]]
    assert list(spec.offsets.values()) == list(zip(starts, ends, strict=True))
    assert spec.num_parameters == ends[-1] == sum(v.numel() for v in sd.values())
    flat = spec.flatten(sd)
    for key, (start, end) in spec.offsets.items():
        assert torch.equal(flat[start:end], sd[key].reshape(-1).to(flat.dtype)), key
        assert spec.parameter(key).shape == tuple(sd[key].shape)
        assert spec.parameter(key).numel == sd[key].numel()


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_unflatten_matrix(arch, traced):
    spec = traced(arch.name).spec
    sds = [traced(arch.name, seed=s).state_dict for s in (0, 1)]
    many = spec.flatten_many(sds)
    assert many.shape == (2, spec.num_parameters)
    assert not torch.equal(many[0], many[1])
    out = spec.unflatten(many)
    assert list(out) == list(sds[0])
    for key, value in out.items():
        assert value.shape == (2, *sds[0][key].shape)
        assert value.dtype == sds[0][key].dtype
        for i in range(2):
            assert torch.equal(value[i], sds[i][key]), key
    assert spec.flatten_many([]).shape == (0, spec.num_parameters)
    # an extra leading axis works the same way
    deep = spec.unflatten(many.reshape(1, 2, -1))
    assert all(v.shape[:2] == (1, 2) for v in deep.values())


def test_flatten_to_another_dtype(traced):
    t = traced("resnet_bn")
    flat32 = t.spec.flatten(t.state_dict, torch.float32)
    assert flat32.dtype == torch.float32
    assert torch.equal(flat32, t.spec.flatten(t.state_dict).float())
    assert t.spec.unflatten(flat32)["conv1.weight"].dtype == torch.float64


@pytest.mark.parametrize("delta", [-1, 1])
def test_unflatten_rejects_wrong_length(delta, traced):
    spec = traced("vgg_bn").spec
    n = spec.num_parameters + delta
    with pytest.raises(StateDictMismatchError, match=str(n)):
        spec.unflatten(torch.zeros(n, dtype=torch.float64))
    with pytest.raises(StateDictMismatchError):
        spec.unflatten(torch.zeros(3, n, dtype=torch.float64))


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_summary_mentions_every_space_layer_and_parameter(arch, traced):
    spec = traced(arch.name).spec
    text = spec.summary()
    lines = text.splitlines()
    for s in spec.spaces:
        assert any(line.split() and line.split()[0] == s.name for line in lines), s.name
    for p in spec.parameters:
        assert p.name in text
    for layer in spec.layers:
        assert layer.name in text
    assert spec.hash[:12] in text


def test_lookups(traced):
    spec = traced("resnet_bn").spec
    assert spec.space("conv1").size == 4
    assert spec.parameter("linear.weight").shape == (5, 8)
    assert spec.layer("layer2.0.shortcut.0").space == "layer2.0.conv2"
    assert [layer.name for layer in spec.input_layers] == ["input"]
    assert [layer.name for layer in spec.output_layers] == ["linear"]
    for lookup in (spec.space, spec.parameter, spec.layer):
        with pytest.raises(SpecError):
            lookup("nope")
    assert hash(spec) == hash(traced("resnet_bn", seed=1).spec)
