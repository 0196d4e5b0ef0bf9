"""FlatMLP: the MLP on flat parameters, the baseline that ignores symmetry."""

from __future__ import annotations

import pytest
import torch

import weightspace
from weightspace import GraphTemplate
from weightspace.models.siren import SIREN
from weightspace.nn.flat_mlp import FlatMLP, make_mlp


@pytest.fixture(scope="module")
def siren():
    torch.manual_seed(0)
    models = [SIREN(hidden=(16, 16)).double() for _ in range(4)]
    spec = weightspace.trace(models[0], torch.zeros(1, 2, dtype=torch.float64))
    return spec, spec.flatten_many([m.state_dict() for m in models])


def _model(spec, head="invariant", **kwargs):
    torch.manual_seed(0)
    return FlatMLP(GraphTemplate.for_spec(spec), 3, hidden=32, head=head, **kwargs).double()


def test_shapes(siren):
    spec, params = siren
    assert _model(spec)(params).shape == (4, 3)
    assert _model(spec)(params[0]).shape == (1, 3)
    assert _model(spec, "equivariant")(params).shape == (4, spec.num_parameters)
    assert len(_model(spec, num_layers=1).mlp) == 1


def test_equivariant_head_starts_at_identity(siren):
    spec, params = siren
    assert torch.equal(_model(spec, "equivariant")(params), params)


@pytest.mark.parametrize("head", ["invariant", "equivariant"])
def test_is_not_permutation_symmetric(head, siren):
    """The point of the baseline: a permuted network (the same function) gets
    a different output."""
    spec, params = siren
    model = _model(spec, head)
    if head == "equivariant":  # move away from the exact identity start
        torch.nn.init.normal_(model.mlp[-1].weight, std=0.1)
    out = model(params)
    perm = spec.random_permutation(torch.Generator().manual_seed(0))
    permuted_out = model(spec.permute_flat(params, perm))
    expected = out if head == "invariant" else spec.permute_flat(out, perm)
    assert (permuted_out - expected).abs().max() > 1e-3


def test_batch_input_equals_flat_input(siren):
    spec, params = siren
    model = _model(spec)
    template = GraphTemplate.for_spec(spec)
    torch.testing.assert_close(model(template.to_batch(params)), model(params), rtol=0, atol=0)
    # float32 inputs are cast to the model's dtype
    torch.testing.assert_close(model(params.float()), model(params.float().double()))


def test_bad_arguments(siren):
    spec, _ = siren
    with pytest.raises(ValueError, match="head='both'"):
        FlatMLP(GraphTemplate.for_spec(spec), 3, head="both")
    with pytest.raises(ValueError, match="num_layers"):
        make_mlp(4, 8, 2, num_layers=0)
    with pytest.raises(TypeError, match="GraphTemplate"):
        FlatMLP(spec, 3)
    with pytest.raises(weightspace.StateDictMismatchError, match="shape"):
        _model(spec)(torch.zeros(2, 5, dtype=torch.float64))


@pytest.mark.parametrize("head", ["invariant", "equivariant"])
def test_trains_and_gradient_reaches_every_parameter(head, siren):
    spec, _ = siren
    torch.manual_seed(1)
    params = torch.randn(16, spec.num_parameters, dtype=torch.float64)
    if head == "invariant":
        target = params[:, :3] * 2
    else:
        target = params * 0.5
    model = _model(spec, head, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(params), target)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < 0.7 * losses[0]
    model.zero_grad()
    torch.nn.functional.mse_loss(model(params), target).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
