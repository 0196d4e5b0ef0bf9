"""Permutations, scalings and sign flips of neuron spaces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weightspace
from tests.architectures import ARCHITECTURES
from tests.helpers import assert_state_dicts_equal, rel_err, run
from weightspace import NeuronScaling, Permutation, SpecError
from weightspace.spec import symmetry as symmetry_mod

ARCH_IDS = [a.name for a in ARCHITECTURES]


def _perm(spaces: dict[str, list[int]]) -> Permutation:
    return Permutation({k: torch.tensor(v) for k, v in spaces.items()})


@pytest.fixture(scope="module")
def tiny():
    """A 2 -> 3 -> 4 -> 2 ReLU MLP: hidden spaces "0" (size 3) and "2" (size 4)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4), nn.ReLU(),
                          nn.Linear(4, 2)).double().eval()
    spec = weightspace.trace(model, torch.randn(5, 2, dtype=torch.float64))
    assert [(s.name, s.size) for s in spec.permutable_spaces] == [("0", 3), ("2", 4)]
    return model, spec


def _sd(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ algebra
def test_inverse_then_and_equal_on_explicit_permutations():
    p = Permutation({"0": torch.tensor([1, 2, 0]), "2": torch.tensor([3, 0, 1, 2])})
    inv = p.inverse()
    assert torch.equal(inv["0"], torch.tensor([2, 0, 1]))
    assert torch.equal(inv["2"], torch.tensor([1, 2, 3, 0]))
    q = Permutation({"0": torch.tensor([0, 2, 1])})  # "2" absent: identity
    pq = p.then(q)
    assert torch.equal(pq["0"], torch.tensor([1, 0, 2]))  # p[q]
    assert torch.equal(pq["2"], torch.tensor([3, 0, 1, 2]))
    qp = q.then(p)
    assert torch.equal(qp["0"], torch.tensor([2, 1, 0]))  # q[p]
    assert torch.equal(qp["2"], torch.tensor([3, 0, 1, 2]))
    identity = Permutation({"0": torch.arange(3), "2": torch.arange(4)})
    assert p.then(inv).equal(identity) and inv.then(p).equal(identity)
    assert identity.equal(Permutation({}))  # absent spaces are the identity
    assert not p.equal(q) and not pq.equal(qp)
    assert p.equal(Permutation({"2": torch.tensor([3, 0, 1, 2]), "0": torch.tensor([1, 2, 0])}))
    assert p["0"].dtype == torch.long and len(p) == 2 and "0" in p and "4" not in p


def test_permute_follows_the_documented_convention(tiny):
    model, spec = tiny
    sd = _sd(model)
    p = _perm({"0": [1, 2, 0], "2": [3, 0, 1, 2]})
    out = spec.permute(sd, p)
    # W'[i] = W[perm[i]] on the output axis, columns follow the input space
    assert torch.equal(out["0.weight"], sd["0.weight"][[1, 2, 0]])
    assert torch.equal(out["0.bias"], sd["0.bias"][[1, 2, 0]])
    assert torch.equal(out["2.weight"], sd["2.weight"][[3, 0, 1, 2]][:, [1, 2, 0]])
    assert torch.equal(out["2.bias"], sd["2.bias"][[3, 0, 1, 2]])
    assert torch.equal(out["4.weight"], sd["4.weight"][:, [3, 0, 1, 2]])
    assert torch.equal(out["4.bias"], sd["4.bias"])


def test_composition_and_inverse_are_exact(tiny):
    model, spec = tiny
    sd = _sd(model)
    p = _perm({"0": [1, 2, 0], "2": [3, 0, 1, 2]})
    q = _perm({"0": [0, 2, 1], "2": [2, 3, 1, 0]})
    assert_state_dicts_equal(spec.permute(spec.permute(sd, p), q), spec.permute(sd, p.then(q)))
    assert_state_dicts_equal(spec.permute(spec.permute(sd, p), p.inverse()), sd)
    assert_state_dicts_equal(spec.permute(sd, spec.identity_permutation()), sd)
    # the order matters: p.then(q) != q.then(p) here, and so do the results
    assert not torch.equal(spec.permute(sd, p.then(q))["2.weight"],
                           spec.permute(sd, q.then(p))["2.weight"])


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_algebra_on_every_architecture(arch, traced):
    t = traced(arch.name)
    spec, sd = t.spec, t.state_dict
    g = torch.Generator().manual_seed(3)
    p, q = spec.random_permutation(g), spec.random_permutation(g)
    assert_state_dicts_equal(spec.permute(spec.permute(sd, p), q), spec.permute(sd, p.then(q)))
    assert_state_dicts_equal(spec.permute(spec.permute(sd, p), p.inverse()), sd)
    assert p.then(p.inverse()).equal(spec.identity_permutation())
    # the flat view: one gather, for [P] and [N, P]
    flat = spec.flatten(sd)
    assert torch.equal(spec.permute_flat(flat, p), spec.flatten(spec.permute(sd, p)))
    sd2 = traced(arch.name, seed=1).state_dict
    many = spec.flatten_many([sd, sd2])
    expected = torch.stack([spec.flatten(spec.permute(sd, p)), spec.flatten(spec.permute(sd2, p))])
    assert torch.equal(spec.permute_flat(many, p), expected)


def test_permute_does_not_modify_its_input(traced):
    t = traced("resnet_bn")
    sd = t.state_dict
    before = {k: v.clone() for k, v in sd.items()}
    out = t.spec.permute(sd, t.spec.random_permutation(torch.Generator().manual_seed(0)))
    assert_state_dicts_equal(sd, before)
    for k in sd:  # new tensors, also where nothing moved
        assert out[k].data_ptr() != sd[k].data_ptr() or out[k].numel() == 0


# ------------------------------------------------------- explicit permutation
def test_swapping_two_neurons_of_mlp_relu(traced):
    t = traced("mlp_relu")
    sd = t.state_dict
    order = torch.arange(16)
    order[[0, 1]] = torch.tensor([1, 0])
    out = t.spec.permute(sd, Permutation({"0": order}))
    expected = {k: v.clone() for k, v in sd.items()}
    expected["0.weight"][[0, 1]] = sd["0.weight"][[1, 0]]
    expected["0.bias"][[0, 1]] = sd["0.bias"][[1, 0]]
    expected["2.weight"][:, [0, 1]] = sd["2.weight"][:, [1, 0]]
    assert_state_dicts_equal(out, expected)
    for key in ("0.weight", "0.bias", "2.weight"):
        assert not torch.equal(out[key], sd[key])


def test_batch_norm_buffers_move_with_their_channels(traced):
    t = traced("resnet_bn")
    sd = t.state_dict
    p = t.spec.random_permutation(torch.Generator().manual_seed(7))
    out = t.spec.permute(sd, p)
    stream, proj = p["conv1"], p["layer2.0.conv2"]
    for key, perm in [("bn1.running_mean", stream), ("bn1.running_var", stream),
                      ("bn1.weight", stream), ("layer1.1.bn2.running_mean", stream),
                      ("layer1.0.bn1.running_var", p["layer1.0.conv1"]),
                      ("layer2.0.shortcut.1.running_mean", proj),
                      ("layer2.0.bn2.running_var", proj)]:
        assert torch.equal(out[key], sd[key][perm]), key
        assert not torch.equal(out[key], sd[key]), key
    assert torch.equal(out["conv1.weight"], sd["conv1.weight"][stream])
    assert torch.equal(out["layer2.0.shortcut.0.weight"],
                       sd["layer2.0.shortcut.0.weight"][proj][:, stream])
    assert torch.equal(out["bn1.num_batches_tracked"], sd["bn1.num_batches_tracked"])


# -------------------------------------------------------------- GroupNorm
@pytest.mark.parametrize("name", ["resnet_groupnorm", "norms"])
def test_random_permutation_respects_groupnorm_groups(name, traced):
    spec = traced(name).spec
    g = torch.Generator().manual_seed(0)
    swapped_groups = shuffled_within = False
    for _ in range(20):
        perm = spec.random_permutation(g)
        for s in spec.permutable_spaces:
            p = perm[s.name]
            assert sorted(p.tolist()) == list(range(s.size))
            if s.permutation_blocks == 1:
                continue
            group = s.size // s.permutation_blocks
            images = p.reshape(s.permutation_blocks, group) // group
            assert (images == images[:, :1]).all(), "a group was split"
            swapped_groups |= not torch.equal(images[:, 0], torch.arange(s.permutation_blocks))
            shuffled_within |= not torch.equal(p % group, torch.arange(s.size) % group)
    assert swapped_groups and shuffled_within


def test_permutation_splitting_a_group_is_rejected(traced, monkeypatch):
    t = traced("resnet_groupnorm")
    spec, sd = t.spec, t.state_dict
    split = Permutation({"conv1": torch.tensor([0, 2, 1, 3])})  # groups {0,1},{2,3}
    with pytest.raises(SpecError, match="GroupNorm"):
        spec.permute(sd, split)
    with pytest.raises(SpecError, match="GroupNorm"):
        spec.permute_flat(spec.flatten(sd), split)
    ok = Permutation({"conv1": torch.tensor([3, 2, 0, 1])})  # maps groups onto groups
    assert rel_err(run(t.model, spec.permute(sd, ok), t.x), run(t.model, sd, t.x)) < 1e-9
    # the restriction is needed: applied anyway, the split permutation changes the output
    monkeypatch.setattr(symmetry_mod, "check_permutation", lambda spec, perm: None)
    assert rel_err(run(t.model, spec.permute(sd, split), t.x), run(t.model, sd, t.x)) > 1e-6


def test_invalid_permutations_are_rejected(traced):
    t = traced("mlp_relu")
    spec, sd = t.spec, t.state_dict
    bad = {
        "input space": Permutation({"input": torch.tensor([1, 0, 2, 3, 4, 5])}),
        "output space": Permutation({"4": torch.tensor([1, 0, 2])}),
        "wrong length": Permutation({"0": torch.arange(15)}),
        "too long": Permutation({"0": torch.arange(17)}),
        "not a permutation": Permutation({"0": torch.zeros(16, dtype=torch.long)}),
        "2-d": Permutation({"0": torch.arange(16).reshape(4, 4)}),
        "unknown space": Permutation({"nope": torch.arange(3)}),
    }
    for what, perm in bad.items():
        with pytest.raises(SpecError):
            spec.permute(sd, perm)
        with pytest.raises(SpecError):
            spec.permute_flat(spec.flatten(sd), perm)
        assert what


# ---------------------------------------------------------------- scalings
SCALABLE = ["mlp_relu", "resnet_bn", "vgg_bn", "functional", "residual_mlp_layernorm", "norms"]


def _assert_inverse_undoes(spec, sd, s: NeuronScaling) -> None:
    assert s.factors
    scaled = spec.rescale(sd, s)
    assert any(not torch.allclose(scaled[k], sd[k]) for k in sd)
    back = spec.rescale(scaled, s.inverse())
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype
        assert torch.allclose(back[k], sd[k], rtol=1e-12, atol=1e-12), k


@pytest.mark.parametrize("name", SCALABLE)
def test_scaling_inverse_undoes_rescale(name, traced):
    t = traced(name)
    g = torch.Generator().manual_seed(0)
    factors = {s.name: torch.rand(s.size, generator=g, dtype=torch.float64) * 3.75 + 0.25
               for s in t.spec.spaces if "scale" in s.symmetries}
    _assert_inverse_undoes(t.spec, t.state_dict, NeuronScaling("scale", factors))


def test_random_scaling_inverse_undoes_rescale(traced):
    t = traced("mlp_relu")
    s = t.spec.random_scaling(torch.Generator().manual_seed(0), low=0.25, high=4.0)
    _assert_inverse_undoes(t.spec, t.state_dict, s)


def test_sign_flip_is_its_own_inverse(traced):
    t = traced("siren")
    f = t.spec.random_sign_flip(torch.Generator().manual_seed(0))
    assert set(f.factors) == {"layers.0", "layers.1"}
    assert all(set(v.tolist()) <= {-1.0, 1.0} for v in f.factors.values())
    flipped = t.spec.rescale(t.state_dict, f)
    assert_state_dicts_equal(t.spec.rescale(flipped, f), t.state_dict)
    assert_state_dicts_equal(t.spec.rescale(flipped, f.inverse()), t.state_dict)


def test_explicit_scaling_moves_rows_and_columns(traced):
    t = traced("mlp_relu")
    sd = t.state_dict
    factors = torch.linspace(0.5, 2.0, 16, dtype=torch.float64)
    out = t.spec.rescale(sd, NeuronScaling("scale", {"0": factors}))
    assert torch.equal(out["0.weight"], sd["0.weight"] * factors[:, None])
    assert torch.equal(out["0.bias"], sd["0.bias"] * factors)
    assert torch.allclose(out["2.weight"], sd["2.weight"] / factors[None, :], rtol=1e-15)
    for key in ("2.bias", "4.weight", "4.bias"):
        assert torch.equal(out[key], sd[key])


@pytest.mark.parametrize("bad", [-1.0, 0.0])
def test_non_positive_scale_factors_are_rejected(bad, traced):
    t = traced("mlp_relu")
    factors = torch.ones(16, dtype=torch.float64)
    factors[3] = bad
    with pytest.raises(SpecError, match="positive"):
        t.spec.rescale(t.state_dict, NeuronScaling("scale", {"0": factors}))


def test_bad_scalings_are_rejected(traced):
    t = traced("mlp_relu")
    with pytest.raises(SpecError):
        NeuronScaling("shift", {})
    with pytest.raises(SpecError):  # wrong length
        t.spec.rescale(t.state_dict, NeuronScaling("scale", {"0": torch.ones(15)}))
    with pytest.raises(SpecError):
        t.spec.random_scaling(low=2.0, high=1.0)
    with pytest.raises(SpecError):
        t.spec.random_scaling(low=0.0, high=1.0)


# ------------------------------------------------------------------ batches
BATCH_ARCHS = ("vgg_bn", "resnet_groupnorm", "small_cnn", "functional", "siren")


@pytest.mark.parametrize("name", BATCH_ARCHS)
def test_a_batch_of_permutations_acts_row_by_row(name, traced):
    t = traced(name)
    spec = t.spec
    perms = [spec.random_permutation(torch.Generator().manual_seed(seed)) for seed in range(3)]
    batch = Permutation({s.name: torch.stack([p[s.name] for p in perms])
                         for s in spec.permutable_spaces})
    assert batch.batch_size == 3 and perms[0].batch_size is None
    index = symmetry_mod.permutation_index(spec, batch)
    assert index.shape == (3, spec.num_parameters)
    params = torch.randn(3, spec.num_parameters, dtype=torch.float64)
    moved = spec.permute_flat(params, batch)
    for b, perm in enumerate(perms):
        assert torch.equal(index[b], symmetry_mod.permutation_index(spec, perm))
        assert torch.equal(moved[b], spec.permute_flat(params[b], perm))
        assert batch.row(b).equal(perm)
    # algebra row by row: inverse and composition
    assert torch.equal(spec.permute_flat(moved, batch.inverse()), params)
    twice = batch.then(batch)
    for b, perm in enumerate(perms):
        assert twice.row(b).equal(perm.then(perm))


def test_random_batches_are_valid_and_respect_groups(traced):
    spec = traced("resnet_groupnorm").spec
    batch = spec.random_permutation(torch.Generator().manual_seed(0), batch_size=5)
    assert batch.batch_size == 5
    symmetry_mod.check_permutation(spec, batch)  # groups map onto groups in every row
    assert any(s.permutation_blocks > 1 for s in spec.permutable_spaces)
    rows = {s.name: batch[s.name] for s in spec.permutable_spaces}
    assert any(not torch.equal(v[0], v[1]) for v in rows.values())  # independent rows


def test_invalid_batches_name_the_space(traced):
    spec = traced("mlp_relu").spec
    with pytest.raises(SpecError, match="input space"):
        symmetry_mod.permutation_index(spec, Permutation({"input": torch.arange(6)[None]}))
    with pytest.raises(SpecError, match=r"expected \[16\] \(or \[B, 16\]"):
        symmetry_mod.permutation_index(spec, Permutation({"0": torch.arange(15)[None]}))
    bad = torch.arange(16).repeat(2, 1)
    bad[1, 0] = 1
    with pytest.raises(SpecError, match="not a permutation"):
        symmetry_mod.check_permutation(spec, Permutation({"0": bad}))
    with pytest.raises(SpecError, match="mixes single and batched"):
        Permutation({"0": torch.arange(16), "2": torch.arange(16)[None]})
    with pytest.raises(SpecError, match="single permutation"):
        spec.permute(traced("mlp_relu").state_dict, spec.random_permutation(batch_size=2))


@pytest.mark.parametrize("kind", ["scale", "sign"])
def test_a_batch_of_scalings_acts_row_by_row(kind, traced):
    t = traced("mlp_relu" if kind == "scale" else "siren")
    spec = t.spec
    g = torch.Generator().manual_seed(0)
    draw = spec.random_scaling if kind == "scale" else spec.random_sign_flip
    batch = draw(g, batch_size=4)
    assert batch.batch_size == 4 and batch.factors
    params = spec.flatten(t.state_dict).double().repeat(4, 1)
    out = spec.rescale_flat(params, batch)
    for b in range(4):
        row = NeuronScaling(kind, {k: v[b] for k, v in batch.factors.items()})
        expected = spec.flatten(spec.rescale(t.state_dict, row)).double()
        assert torch.allclose(out[b], expected, rtol=1e-6, atol=0)
        assert torch.equal(spec.rescale_flat(params[b], row), out[b])
    assert torch.allclose(spec.rescale_flat(out, batch.inverse()), params, rtol=1e-12, atol=1e-12)
