"""Running B networks from flat parameters (weightspace.functional)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import weightspace
from tests.architectures import ARCHITECTURES, build, example_input
from weightspace.functional import batched_call, batched_forward

ARCHS = {a.name: a for a in ARCHITECTURES}


def _networks(arch, count=3):
    models = [build(arch, seed=10 + k) for k in range(count)]
    spec = weightspace.trace(models[0], example_input(arch))
    params = torch.stack([spec.flatten(m.state_dict()) for m in models])
    return models, spec, params


@pytest.mark.parametrize("name", ["mlp_relu", "siren", "vgg_bn", "resnet_bn", "norms"])
def test_equals_a_loop_of_ordinary_forwards(name):
    arch = ARCHS[name]
    models, spec, params = _networks(arch)
    x = example_input(arch)
    # another instance: its own weights must not matter
    out = batched_forward(build(arch, seed=99), spec, params, x)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models])
    assert out.shape == expected.shape
    assert (out - expected).abs().max() <= 1e-6 * expected.abs().max().clamp_min(1.0)


def test_is_differentiable_in_the_parameters():
    arch = ARCHS["small_cnn"]
    _, spec, params = _networks(arch, count=2)
    params = params.clone().requires_grad_(True)
    batched_forward(build(arch), spec, params, example_input(arch)).square().sum().backward()
    weights = [p.name for p in spec.parameters if not p.is_buffer]
    grads = spec.split_parameters(params.grad)
    assert all(grads[name].abs().sum() > 0 for name in weights)


def test_batched_call_stacks_tuples_with_shared_arguments():
    arch = ARCHS["mlp_relu"]
    models, spec, params = _networks(arch)
    module = build(arch)
    x = example_input(arch)

    def both(state, inputs, scale):
        out = torch.func.functional_call(module, state, (inputs,))
        return out, out * scale

    out, scaled = batched_call(both, spec, params, x, torch.tensor(2.0, dtype=x.dtype))
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models])
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    assert torch.allclose(scaled, 2 * expected, rtol=0, atol=1e-12)


class _ReadsAWeight(nn.Linear):
    """A forward vmap cannot batch (``.item()`` of a batched weight)."""

    def forward(self, x):
        return super().forward(x) * (1.0 + 0.0 * self.weight.sum().item())


def test_falls_back_to_a_loop_when_vmap_cannot_batch_the_forward(caplog):
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(3, 2)).double() for _ in range(3)]
    spec = weightspace.trace(models[0], torch.zeros(1, 3, dtype=torch.float64))
    params = torch.stack([spec.flatten(m.state_dict()) for m in models])
    x = torch.randn(4, 3, dtype=torch.float64)
    with caplog.at_level(logging.DEBUG, logger="weightspace.functional"):
        out = batched_forward(nn.Sequential(_ReadsAWeight(3, 2)).double(), spec, params, x)
    assert "looping" in caplog.text
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models])
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
