"""Weight-space mixup: the mixing rule, seeding, the alignment hook, and the
dataset's mixed batches with partner targets."""

from __future__ import annotations

import pytest
import torch

from tests.zoo.zoo_helpers import make_zoo
from weightspace.zoo import Zoo, ZooGraphDataset
from weightspace.zoo.mixup import WeightMixup


@pytest.fixture()
def zoo(tmp_path):
    with Zoo(make_zoo(tmp_path / "zoo.h5", mlp=12, siren=6)) as opened:
        yield opened


def test_mixing_rule_and_seed(zoo):
    spec = zoo.spec("mlp")
    params = zoo.params(list(range(12)))
    mixed = WeightMixup(alpha=0.4)(params, spec, torch.Generator().manual_seed(0))
    lam = mixed.lam.double().unsqueeze(1)
    expected = lam * params.double() + (1 - lam) * params[mixed.partner].double()
    torch.testing.assert_close(mixed.params.double(), expected, rtol=1e-6, atol=1e-7)
    assert ((mixed.lam > 0) & (mixed.lam <= 1)).all() and (mixed.lam < 1).any()
    again = WeightMixup(alpha=0.4)(params, spec, torch.Generator().manual_seed(0))
    assert torch.equal(again.params, mixed.params) and torch.equal(again.partner, mixed.partner)
    state = torch.random.get_rng_state()
    WeightMixup()(params, spec, torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    untouched = WeightMixup(p=0.0)(params, spec, torch.Generator().manual_seed(0))
    assert torch.equal(untouched.params, params) and (untouched.lam == 1).all()


def test_alignment_hook(zoo):
    spec = zoo.spec("mlp")
    params = zoo.params(list(range(6)))
    calls = []

    def align_to_reference(reference, partner, spec_):
        calls.append((reference.shape, partner.shape, spec_.hash))
        return reference.clone()  # a perfect aligner of identical networks

    mixed = WeightMixup(align=align_to_reference)(params, spec, torch.Generator().manual_seed(0))
    assert calls == [(params.shape, params.shape, spec.hash)]
    torch.testing.assert_close(mixed.params, params)


def test_errors():
    with pytest.raises(ValueError, match="alpha must be positive"):
        WeightMixup(alpha=0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        WeightMixup(p=2)


def test_dataset_mixed_batches(zoo):
    data = ZooGraphDataset(zoo, target="label", mixup=WeightMixup(alpha=1.0), seed=5)
    positions = [0, 13, 1, 2, 14, 3]
    batch = data.batch(positions)
    assert batch.lam.shape == (6,) and batch.y_partner.shape == (6,)
    rows = data.rows[positions]
    groups = zoo.column("group", rows)
    partners = batch.partner_row.numpy()
    assert (zoo.column("group", partners) == groups).all()  # same architecture
    assert torch.equal(batch.y_partner, data._targets[torch.from_numpy(partners)])
    mlp_graphs = [i for i, g in enumerate(groups) if g == "mlp"]
    params = data.templates["mlp"].from_batch(
        type(batch).from_data_list([batch.get_example(i) for i in mlp_graphs]))
    lam = batch.lam[mlp_graphs].double().unsqueeze(1)
    own = zoo.params(rows[mlp_graphs]).double()
    other = zoo.params(partners[mlp_graphs]).double()
    torch.testing.assert_close(params.double(), lam * own + (1 - lam) * other,
                               rtol=1e-6, atol=1e-7)
    assert (batch.lam < 1).any()
    assert not hasattr(data[0], "lam")  # single items are never mixed
