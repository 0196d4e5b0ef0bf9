"""Activation sites, capture hooks, eval mode and channel moments
(weightspace.activations)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weightspace
from weightspace.activations import (
    ActivationSite,
    ChannelMoments,
    CrossMoments,
    activation_sites,
    batches_on_device,
    capture,
    channel_samples,
    eval_mode,
    first_tensor,
    input_batches,
)
from weightspace.errors import WeightspaceError


def small_conv_net() -> nn.Sequential:
    """conv → BatchNorm → ReLU → conv → ReLU → conv → GroupNorm → ReLU →
    flatten → linear → ReLU → linear, in float64."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
        nn.Conv2d(5, 3, 3, padding=1), nn.GroupNorm(1, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(3 * 6 * 6, 7), nn.ReLU(), nn.Linear(7, 2),
    ).double()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        net[1].running_mean.normal_(0, 2)
        net[1].running_var.uniform_(0.5, 3)
    return net.eval()


@pytest.fixture(scope="module")
def conv_net():
    net = small_conv_net()
    spec = weightspace.trace(net, torch.zeros(2, 2, 6, 6, dtype=torch.float64))
    x = torch.randn(40, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return net, spec, x


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- sites
def test_pre_activation_sites_of_a_conv_net(conv_net):
    net, spec, _ = conv_net
    sites = activation_sites(net, spec)
    assert [(s.layer, s.module, s.kind, s.channel_dim, s.hook) for s in sites] == [
        ("0", "1", "batchnorm", 1, "output"),  # conv followed by a BatchNorm: the BN
        ("3", "3", "weight", 1, "output"),  # no norm: the conv itself
        ("5", "6", "norm", 1, "output"),  # GroupNorm with a per-channel affine
        ("9", "9", "weight", -1, "output"),  # hidden linear layer; the output layer has none
    ]
    assert all(s.space == spec.layer(s.layer).space for s in sites)


def test_consumer_input_sites_skip_the_flatten(conv_net):
    net, spec, _ = conv_net
    sites = activation_sites(net, spec, place="consumer_input")
    # layer "5" feeds the linear "9" through a flatten: its channels are not one axis there
    assert [(s.layer, s.module, s.channel_dim, s.hook) for s in sites] == [
        ("input", "0", 1, "input"), ("0", "3", 1, "input"), ("3", "5", 1, "input"),
        ("9", "11", -1, "input")]
    with pytest.raises(WeightspaceError, match="place must be one of") as err:
        activation_sites(net, spec, place="post_activation")
    assert err.value.parameter == "place"


# --------------------------------------------------------------------------- moments
def direct_values(net: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The value at each pre-activation site, computed layer by layer."""
    with torch.no_grad():
        bn = net[1](net[0](x))
        conv = net[3](net[2](bn))
        group = net[6](net[5](net[4](conv)))
        linear = net[9](net[8](net[7](group)))
    return {"1": bn, "3": conv, "6": group, "9": linear}


def test_moments_equal_a_direct_computation(conv_net):
    net, spec, x = conv_net
    sites = activation_sites(net, spec)
    with capture(net, sites, record="moments") as seen:
        for batch in torch.split(x, 7):  # uneven batches: 5 of 7 and one of 5
            net(batch)
    direct = direct_values(net, x)
    for site in sites:
        value = direct[site.module]
        axes = [d for d in range(value.dim()) if d != site.channel_dim % value.dim()]
        moments = seen.moments[site]
        assert moments.count == value.numel() // value.shape[site.channel_dim]
        assert moments.mean.dtype == torch.float64
        torch.testing.assert_close(moments.mean, value.mean(axes), atol=1e-6, rtol=0)
        torch.testing.assert_close(moments.variance(unbiased=True),
                                   value.var(axes, unbiased=True), atol=1e-6, rtol=0)
        torch.testing.assert_close(moments.std(), value.std(axes, unbiased=False),
                                   atol=1e-6, rtol=0)


def test_channel_moments_of_a_large_mean_do_not_cancel():
    x = 1e8 + torch.randn(3000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    moments = ChannelMoments()
    for part in torch.split(x.float(), 1000):  # float32 values, float64 accumulation
        moments.update(part, channel_dim=1)
    reference = x.float().double()
    torch.testing.assert_close(moments.variance(unbiased=False), reference.var(0, unbiased=False),
                               atol=1e-6, rtol=1e-9)
    with pytest.raises(RuntimeError, match="no values"):
        ChannelMoments().variance(unbiased=True)


def test_cross_moments_give_correlation_and_inner_products():
    g = torch.Generator().manual_seed(0)
    za = torch.randn(200, 3, dtype=torch.float64, generator=g)
    zb = torch.cat([za[:, [2, 0]] * 3 + 1, torch.randn(200, 1, dtype=torch.float64,
                                                        generator=g)], dim=1)
    moments = CrossMoments(3)
    for a, b in zip(torch.split(za, 64), torch.split(zb, 64), strict=True):
        moments.update(a, b)
    assert moments.count == 200
    expected = torch.corrcoef(torch.cat([za, zb], dim=1).T)[:3, 3:]
    torch.testing.assert_close(moments.correlation(), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(moments.inner(), za.T @ zb / 200, atol=1e-10, rtol=0)
    constant = CrossMoments(1)
    constant.update(torch.ones(5, 1), torch.randn(5, 1))
    assert float(constant.correlation()) == 0.0


def test_channel_samples_count_every_position():
    value = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    samples = channel_samples(value, 1)
    assert samples.shape == (8, 3)
    torch.testing.assert_close(samples[:, 1], value[:, 1].reshape(-1))


# --------------------------------------------------------------------------- capture
def test_values_are_recorded_per_call_and_keep_gradients(conv_net):
    net, spec, x = conv_net
    site = activation_sites(net, spec, place="consumer_input")[-1]  # input of the last linear
    inputs = x[:3].clone().requires_grad_(True)
    with capture(net, [site]) as seen:
        out = net(inputs)
        net(x[:2])
        assert [v.shape[0] for v in seen.values[site]] == [3, 2]
        first = seen.values[site][0]
        seen.clear()
        assert seen.values[site] == []
    assert first.requires_grad  # not detached: probe features train through it
    expected = net[10](net[9](net[8](net[7](net[6](net[5](net[4](net[3](net[2](net[1](
        net[0](inputs)))))))))))
    torch.testing.assert_close(first, expected)
    assert out.shape == (3, 2)


def test_hooks_are_removed_after_an_exception(conv_net):
    net, spec, x = conv_net
    before = hook_count(net)
    sites = activation_sites(net, spec) + activation_sites(net, spec, place="consumer_input")
    with pytest.raises(RuntimeError, match="inside the block"):
        with capture(net, sites, record="moments") as seen:
            assert hook_count(net) == before + len(sites)
            net(x[:4])
            raise RuntimeError("inside the block")
    assert hook_count(net) == before
    assert seen.moments[sites[0]].count > 0
    # an error raised by a hook during the forward pass removes them too (the input
    # site's moments were started with 2 channels and now get 3)
    with pytest.raises(RuntimeError, match="must match the size"):
        with capture(net, sites, record="moments"):
            net[:3](x[:2])
            net(torch.zeros(2, 3, 6, 6, dtype=torch.float64))  # 3 channels, not 2
    assert hook_count(net) == before


def test_unknown_module_and_record_are_rejected(conv_net):
    net, _, _ = conv_net
    before = hook_count(net)
    good = ActivationSite("0", "weight", 1)
    with pytest.raises(WeightspaceError, match="no module 'nope'") as err:
        with capture(net, [good, ActivationSite("nope", "weight", 1)]):
            pass
    assert err.value.parameter == "sites"
    assert hook_count(net) == before  # the hook of the first site was removed again
    with pytest.raises(WeightspaceError, match="record must be") as err:
        with capture(net, [good], record="everything"):
            pass
    assert err.value.parameter == "record"


def test_stop_early_skips_the_later_layers(conv_net):
    net, spec, x = conv_net
    sites = activation_sites(net, spec)
    calls = []
    handle = net[11].register_forward_hook(lambda *args: calls.append(1))
    try:
        with capture(net, sites[:2], record="moments", stop_early=True) as seen:
            assert seen.run(net, x[:5]) is None
            assert seen.run(net, x[5:10]) is None
        with capture(net, sites[:2], stop_early=False) as whole:
            assert whole.run(net, x[:5]).shape == (5, 2)
    finally:
        handle.remove()
    assert calls == [1]  # only the run without stop_early reached the last layer
    assert seen.moments[sites[0]].count == 10 * 6 * 6
    seen.check_all_seen("test")


def test_check_all_seen_names_the_silent_module(conv_net):
    net, spec, x = conv_net
    sites = activation_sites(net, spec)
    with capture(net, sites) as seen:
        net[0](x[:2])  # only the first conv runs
    with pytest.raises(RuntimeError, match=r"test: module '1' \(layer '0'\) was not called"):
        seen.check_all_seen("test")


# ------------------------------------------------------------------------- eval mode
def test_eval_mode_restores_mixed_training_flags():
    net = small_conv_net().train()
    net[1].eval()
    net[6].eval()
    modes = {name: m.training for name, m in net.named_modules()}
    with eval_mode(net) as model:
        assert model is net
        assert not any(m.training for m in net.modules())
    assert {name: m.training for name, m in net.named_modules()} == modes
    with pytest.raises(KeyError):
        with eval_mode(net):
            net[9].train()  # changed inside the block: restored as well
            raise KeyError("boom")
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert torch.is_grad_enabled()


# ------------------------------------------------------------------------------ data
def test_input_batches_and_first_tensor():
    x = torch.randn(10, 3)
    batches = input_batches(x, 4)
    assert [len(b) for b in batches] == [4, 3, 3]  # nearly equal: no batch of one sample
    pairs = [(x[:6], torch.zeros(6)), x[6:]]
    assert [len(b) for b in input_batches(pairs, 4)] == [6, 4]
    assert first_tensor((x, None)) is x
    with pytest.raises(TypeError, match="got an item of type str"):
        first_tensor("x")
    for bad, parameter in ((0, "batch_size"), (True, "batch_size")):
        with pytest.raises(WeightspaceError, match="batch_size") as err:
            input_batches(x, bad)
        assert err.value.parameter == parameter
    for empty in (x[:0], [], torch.tensor(1.0)):
        with pytest.raises(WeightspaceError) as err:
            input_batches(empty, 4)
        assert err.value.parameter == "inputs"
    net = nn.Linear(3, 2).double()
    assert all(b.device == net.weight.device for b in batches_on_device(batches, net))
