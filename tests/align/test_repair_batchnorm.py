"""BatchNorm reset and REPAIR (weightspace.align)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import weightspace
from weightspace.align import activation_stats, repair, repair_points, reset_batchnorm
from weightspace.classify import evaluate
from weightspace.merge import interpolate
from weightspace.models import MLP, VGG, SmallCNN, build_model, default_input_shape, resnet20


def merged_model(factory, a, b, lam):
    model = factory()
    model.load_state_dict(interpolate(a.state_dict(), b.state_dict(), lam))
    return model.eval()


# ----------------------------------------------------------------------------- BN reset
def bn_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def perturbed_resnet(seed=0):
    torch.manual_seed(seed)
    model = resnet20(norm="batch")
    with torch.no_grad():
        for m in bn_layers(model).values():
            m.running_mean.normal_(0, 3)
            m.running_var.uniform_(0.1, 10)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.2)
    return model


def test_reset_batchnorm_matches_batch_statistics(digits_images):
    x = digits_images.x_train[:300]
    model = perturbed_resnet()
    model.train()
    model.layer2.eval()  # mixed modes must come back as they were
    modes = {name: m.training for name, m in model.named_modules()}
    momenta = {name: m.momentum for name, m in bn_layers(model).items()}

    # reference: PyTorch's own cumulative average over one batch, all BN in train mode
    reference = copy.deepcopy(model).eval()
    for m in bn_layers(reference).values():
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        reference(x)

    assert reset_batchnorm(model, x, batch_size=512) is model
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: m.momentum for name, m in bn_layers(model).items()} == momenta
    ref_layers = bn_layers(reference)
    for name, m in bn_layers(model).items():
        torch.testing.assert_close(m.running_mean, ref_layers[name].running_mean,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.running_var, ref_layers[name].running_var,
                                   atol=1e-5, rtol=1e-5)
        assert int(m.num_batches_tracked) == 1

    # the first BN by hand: statistics of conv1(x) over (N, H, W), unbiased variance
    with torch.no_grad():
        h = nn.functional.conv2d(x, model.conv1.weight, padding=1)
    torch.testing.assert_close(model.norm1.running_mean, h.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.norm1.running_var, h.var((0, 2, 3), unbiased=True),
                               atol=1e-5, rtol=1e-5)


def test_reset_batchnorm_pools_batches_and_accepts_iterables(digits_images):
    x = digits_images.x_train[:450]
    model = perturbed_resnet(1).eval()
    reset_batchnorm(model, x, batch_size=100)  # 5 batches of 90
    with torch.no_grad():
        h = nn.functional.conv2d(x, model.conv1.weight, padding=1)
    # every sample weighs the same: the statistics of all 450 samples
    torch.testing.assert_close(model.norm1.running_mean, h.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.norm1.running_var, h.var((0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert int(model.norm1.num_batches_tracked) == 5
    assert not model.training and not model.norm1.training

    again = perturbed_resnet(1).eval()
    batches = [(x[i:i + 90], None) for i in range(0, 450, 90)]  # DataLoader-style pairs
    reset_batchnorm(again, batches)
    for (name, m), m2 in zip(bn_layers(model).items(), bn_layers(again).values(), strict=True):
        torch.testing.assert_close(m.running_var, m2.running_var, msg=name)


def test_reset_batchnorm_keeps_statistics_on_error_and_ignores_models_without_bn():
    model = perturbed_resnet(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        reset_batchnorm(model, torch.randn(4, 3, 8, 8))  # wrong number of channels
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    mlp = MLP()
    assert reset_batchnorm(mlp, torch.randn(5, 64)) is mlp


# ------------------------------------------------------------------------------- REPAIR
def assert_repaired_stats(model, model_a, model_b, spec, x, lam, atol=1e-4):
    """Every corrected point has the interpolated statistics; every BatchNorm
    has the statistics of its input."""
    points = repair_points(model, spec)
    assert points
    stats = activation_stats(model, points, x)
    stats_a = activation_stats(model_a, points, x)
    stats_b = activation_stats(model_b, points, x)
    modules = dict(model.named_modules())
    for p in points:
        mean, std = stats[p.module]
        if p.kind == "batchnorm":
            bn = modules[p.module]
            torch.testing.assert_close(bn.running_mean.double(), mean, atol=atol, rtol=1e-5)
            # unbiased running variance vs the population variance: equal up to n / (n - 1)
            torch.testing.assert_close(bn.running_var.double(), std**2, atol=atol, rtol=1e-3)
            continue
        target_mean = (1 - lam) * stats_a[p.module][0] + lam * stats_b[p.module][0]
        target_std = (1 - lam) * stats_a[p.module][1] + lam * stats_b[p.module][1]
        torch.testing.assert_close(mean, target_mean, atol=atol, rtol=0, msg=p.module)
        torch.testing.assert_close(std, target_std, atol=atol, rtol=0, msg=p.module)
    return points


@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_repair_matches_interpolated_statistics_on_trained_mlps(trained_mlps, digits_flat, lam):
    a, b, spec = trained_mlps
    merged = merged_model(MLP, a, b, lam)
    before = {k: v.clone() for k, v in merged.state_dict().items()}
    state = repair(merged, a, b, spec, digits_flat.x_train, lam=lam)
    for k, v in merged.state_dict().items():  # the merged model is not modified
        assert torch.equal(v, before[k]), k
    assert list(state) == list(before)
    repaired = MLP(hidden=(64, 64))
    repaired.load_state_dict(state)
    points = assert_repaired_stats(repaired, a, b, spec, digits_flat.x_train, lam)
    assert [(p.module, p.kind) for p in points] == [("layers.0", "weight"),
                                                    ("layers.3", "weight")]


def test_repair_improves_naive_midpoint_accuracy(trained_mlps, digits_flat):
    a, b, spec = trained_mlps
    merged = merged_model(MLP, a, b, 0.5)
    _, naive = evaluate(merged, digits_flat.x_test, digits_flat.y_test)
    repaired = MLP(hidden=(64, 64))
    repaired.load_state_dict(repair(merged, a, b, spec, digits_flat.x_train))
    _, fixed = evaluate(repaired, digits_flat.x_test, digits_flat.y_test)
    assert fixed >= naive - 0.02, (naive, fixed)


def test_repair_at_an_endpoint_changes_nothing(trained_mlps, digits_flat):
    a, b, spec = trained_mlps
    state = repair(a, a, b, spec, digits_flat.x_train, lam=0.0)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "factory", "kinds"), [
    ("cnn", lambda: SmallCNN(), {"weight"}),
    ("resnet20-layernorm", lambda: resnet20(norm="layer"), {"norm"}),
    ("vgg-batchnorm", lambda: VGG(), {"batchnorm", "weight"}),
])
def test_repair_statistics_on_conv_nets(digits_images, name, factory, kinds):
    x = digits_images.x_train[:400]
    torch.manual_seed(0)
    a = factory().eval()
    torch.manual_seed(1)
    b = factory().eval()
    spec = weightspace.trace(a, (2, 1, 8, 8))
    merged = merged_model(factory, a, b, 0.3)
    repaired = factory().eval()
    repaired.load_state_dict(repair(merged, a, b, spec, x, lam=0.3, batch_size=128))
    points = assert_repaired_stats(repaired, a, b, spec, x, 0.3)
    assert {p.kind for p in points} == kinds


def test_repair_points_find_modules_by_layer_name():
    """For the built-in families every hidden layer's name is its module's path."""
    for family, kwargs in [("mlp", {}), ("cnn", {}), ("vgg", {}), ("wildcnn", {}),
                           ("resnet20", {"norm": "batch"}), ("resnet20", {"norm": "layer"}),
                           ("resnet20", {"norm": "none"}), ("mlp", {"norm": "layer"})]:
        model = build_model(family, **kwargs)
        spec = weightspace.trace(model, default_input_shape(family, **kwargs))
        modules = dict(model.named_modules())
        points = repair_points(model, spec)
        for layer in spec.layers:
            if spec.space(layer.space).role == "hidden":
                assert layer.name in modules, (family, layer.name)
        corrected = {p.layer for p in points if p.kind != "batchnorm"}
        for p in points:
            if p.kind == "weight":
                assert p.module == p.layer
        hidden = {layer.name for layer in spec.layers
                  if spec.space(layer.space).role == "hidden" and layer.norm != "batch"}
        assert corrected == hidden, family


def test_repair_refuses_a_model_that_does_not_match_the_spec(trained_mlps, digits_flat):
    a, b, spec = trained_mlps
    with pytest.raises(ValueError, match="model_b does not match the spec"):
        repair(a, a, MLP(hidden=(32, 64)), spec, digits_flat.x_train)
