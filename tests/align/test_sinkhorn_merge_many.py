"""Soft (Sinkhorn) weight matching and MergeMany."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weightspace
from tests.architectures import randomise_buffers
from tests.helpers import rel_err, run
from weightspace import StateDictMismatchError
from weightspace.align import (
    MergeManyResult,
    SinkhornResult,
    merge_many,
    sinkhorn_matching,
    soft_permute,
    weight_matching,
)
from weightspace.align.sinkhorn import sinkhorn
from weightspace.models import MLP, build_model, default_input_shape


def _sd(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def mlp():
    """A float64 MLP 10-16-12-3, its spec and an input batch."""
    torch.manual_seed(0)
    model = MLP(in_features=10, hidden=(16, 12), out_features=3).double().eval()
    spec = weightspace.trace(model, (1, 10))
    return model, spec, torch.randn(6, 10, dtype=torch.float64)


def _other_mlp(seed):
    torch.manual_seed(seed)
    return MLP(in_features=10, hidden=(16, 12), out_features=3).double().eval()


# ------------------------------------------------------------- Sinkhorn
def test_sinkhorn_normalisation_is_doubly_stochastic():
    log_alpha = torch.randn(7, 7, generator=torch.Generator().manual_seed(0)) * 3
    s = sinkhorn(log_alpha)
    assert (s >= 0).all()
    assert torch.allclose(s.sum(0), torch.ones(7), atol=1e-5)
    assert torch.allclose(s.sum(1), torch.ones(7), atol=1e-5)


@pytest.mark.parametrize("tau", [0.3, 1.0, 5.0])
def test_soft_permutations_are_doubly_stochastic(mlp, tau):
    model, spec, _ = mlp
    result = sinkhorn_matching(_sd(model), _sd(_other_mlp(1)), spec, tau=tau)
    assert isinstance(result, SinkhornResult)
    assert set(result.soft) == {s.name for s in spec.permutable_spaces}
    for name, s in result.soft.items():
        n = spec.space(name).size
        assert s.shape == (n, n) and (s >= 0).all()
        assert (s.sum(0) - 1).abs().max() < 1e-4, name
        assert (s.sum(1) - 1).abs().max() < 1e-4, name
    if tau >= 5.0:  # high temperature: close to uniform
        s = next(iter(result.soft.values()))
        assert s.max() < 5.0 / s.shape[0]


def test_gradients_flow_to_both_models(mlp):
    model, spec, _ = mlp
    sd_a = {k: v.clone().requires_grad_() for k, v in _sd(model).items()}
    sd_b = {k: v.clone().requires_grad_() for k, v in _sd(_other_mlp(2)).items()}
    result = sinkhorn_matching(sd_a, sd_b, spec, tau=0.5, iterations=3)
    assert result.objective.requires_grad
    loss = result.objective + sum((s * s).sum() for s in result.soft.values())
    loss.backward()
    for sd in (sd_a, sd_b):
        weights = [v for k, v in sd.items() if k.endswith("weight")]
        assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in weights)
        assert any(w.grad.abs().sum() > 0 for w in weights)
    # soft-permuted weights are differentiable too (e.g. for a straight-through loss)
    permuted = soft_permute(spec, sd_b, {k: v.detach() for k, v in result.soft.items()})
    assert all(v.requires_grad for k, v in permuted.items() if v.is_floating_point())


def test_hard_projection_recovers_a_known_permutation(mlp):
    model, spec, x = mlp
    sd = _sd(model)
    perm = spec.random_permutation(torch.Generator().manual_seed(3))
    permuted = spec.permute(sd, perm)
    result = sinkhorn_matching(sd, permuted, spec)
    assert result.permutation.equal(perm.inverse())
    for key, value in spec.permute(permuted, result.permutation).items():
        assert torch.equal(value, sd[key]), key
    # the soft matrices put most of each row's mass on the permutation
    for name, s in result.soft.items():
        assert torch.equal(s.argmax(1), perm.inverse()[name])
        assert s.max(1).values.min() > 0.5
    # a higher temperature spreads the mass
    softer = sinkhorn_matching(sd, permuted, spec, tau=2.0)
    assert softer.permutation.equal(perm.inverse())
    for name, s in softer.soft.items():
        assert s.max(1).values.mean() < result.soft[name].max(1).values.mean()


def test_hard_projection_on_a_builtin_cnn_and_group_norm(traced):
    t = traced("resnet_groupnorm")
    perm = t.spec.random_permutation(torch.Generator().manual_seed(5))
    result = sinkhorn_matching(t.state_dict, t.spec.permute(t.state_dict, perm), t.spec)
    assert result.permutation.equal(perm.inverse())


def test_soft_permute_with_one_hot_matrices_is_permute(mlp):
    model, spec, _ = mlp
    sd = _sd(model)
    perm = spec.random_permutation(torch.Generator().manual_seed(1))
    one_hot = {k: torch.eye(len(p), dtype=torch.float64)[p] for k, p in perm.perms.items()}
    soft = soft_permute(spec, sd, one_hot)
    hard = spec.permute(sd, perm)
    for key in sd:
        assert torch.allclose(soft[key], hard[key], atol=1e-12), key


def test_sinkhorn_errors(mlp):
    model, spec, _ = mlp
    sd = _sd(model)
    with pytest.raises(ValueError, match="tau"):
        sinkhorn_matching(sd, sd, spec, tau=0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_matching(sd, sd, spec, iterations=0)
    name = next(k for k in sd if k.endswith("weight"))
    bad = {k: v.clone() for k, v in sd.items()}
    bad[name][0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"state_b\['{name}'\]"):
        sinkhorn_matching(sd, bad, spec)
    with pytest.raises(StateDictMismatchError):
        sinkhorn_matching(sd, {k: v for k, v in sd.items() if k != name}, spec)


def test_sinkhorn_warns_when_it_does_not_converge(mlp):
    model, spec, _ = mlp
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sinkhorn_matching(_sd(model), _sd(_other_mlp(1)), spec, tau=0.02,
                          sinkhorn_iterations=20, iterations=1)


# ------------------------------------------------------------ MergeMany
@pytest.mark.parametrize(("name", "kwargs"), [("mlp", {}), ("resnet20", {"norm": "batch"}),
                                              ("vgg", {})])
def test_merging_permuted_copies_gives_back_the_model(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    randomise_buffers(model, torch.Generator().manual_seed(1))
    shape = default_input_shape(name, **kwargs)
    spec = weightspace.trace(model, shape)
    sd = _sd(model)
    g = torch.Generator().manual_seed(2)
    perms = [spec.random_permutation(g) for _ in range(4)]
    states = [spec.permute(sd, p) for p in perms]
    result = merge_many(states, spec)
    assert isinstance(result, MergeManyResult)
    assert result.converged and len(result.permutations) == 4
    # every copy lands in one common frame ...
    frames = [spec.permute(s, p) for s, p in zip(states, result.permutations, strict=True)]
    for f in frames[1:]:
        for key in sd:
            assert torch.equal(f[key], frames[0][key]), key
    # ... so the merge is the model up to a global permutation
    x = torch.randn(5, *shape[1:], generator=torch.Generator().manual_seed(3))
    assert rel_err(run(model, result.merged, x), run(model, sd, x)) < 1e-5
    assert all(result.merged[k].dtype == v.dtype for k, v in sd.items())


def test_merge_many_of_independent_models_is_deterministic_and_finite(mlp):
    model, spec, x = mlp
    states = [_sd(model)] + [_sd(_other_mlp(s)) for s in (11, 12, 13)]
    r1 = merge_many(states, spec, seed=4)
    r2 = merge_many(states, spec, seed=4)
    assert r1.converged and 1 <= r1.iterations < 100
    for a, b in zip(r1.permutations, r2.permutations, strict=True):
        assert a.equal(b)
    for key in r1.merged:
        assert torch.equal(r1.merged[key], r2.merged[key]), key
    out = run(model, r1.merged, x)
    assert torch.isfinite(out).all()
    # the merge averages the aligned models
    frames = [spec.permute(s, p) for s, p in zip(states, r1.permutations, strict=True)]
    for key in r1.merged:
        assert torch.allclose(r1.merged[key], sum(f[key] for f in frames) / 4, atol=1e-12)
    # matched models are closer to their mean than the unaligned ones
    flat = spec.flatten_many(frames)
    plain = spec.flatten_many(states)
    assert (flat - flat.mean(0)).norm() < (plain - plain.mean(0)).norm()


def test_pairwise_alignments_through_the_common_frame_are_cycle_consistent(mlp):
    model, spec, x = mlp
    states = [_sd(model)] + [_sd(_other_mlp(s)) for s in (21, 22, 23)]
    result = merge_many(states, spec, seed=1)
    n = len(states)
    for i in range(n):
        assert result.relative(i, i).equal(spec.identity_permutation())
        for j in range(n):
            for k in range(n):
                assert result.relative(j, i).then(result.relative(k, j)).equal(
                    result.relative(k, i)), (i, j, k)
    # `then` composes as spec.permute does: permuting twice is permuting once by the composite
    twice = spec.permute(spec.permute(states[1], result.relative(2, 1)), result.relative(0, 2))
    once = spec.permute(states[1], result.relative(0, 1))
    for key in once:
        assert torch.equal(twice[key], once[key]), key
    # each relative alignment is a symmetry: the function is unchanged
    assert rel_err(run(model, once, x), run(model, states[1], x)) < 1e-10
    # control: separate pairwise weight matchings are not cycle-consistent in general
    direct = {(t, s_): weight_matching(states[t], states[s_], spec).permutation
              for t in range(n) for s_ in range(n) if t != s_}
    triples = [(i, j, k) for i in range(n) for j in range(n) for k in range(n)
               if len({i, j, k}) == 3]
    broken = sum(not direct[(j, i)].then(direct[(k, j)]).equal(direct[(k, i)])
                 for i, j, k in triples)
    assert broken > 0, "independent random MLPs should break some cycles of pairwise matching"
    with pytest.raises(IndexError, match="not one of the 4"):
        result.relative(0, 4)


def test_relative_alignment_recovers_known_permutations(mlp):
    model, spec, _ = mlp
    sd = _sd(model)
    g = torch.Generator().manual_seed(5)
    states = [spec.permute(sd, spec.random_permutation(g)) for _ in range(3)]
    result = merge_many(states, spec)
    for t in range(3):
        for s_ in range(3):
            aligned = spec.permute(states[s_], result.relative(t, s_))
            for key in sd:
                assert torch.equal(aligned[key], states[t][key]), (t, s_, key)


def test_merge_many_errors(mlp):
    model, spec, _ = mlp
    sd = _sd(model)
    with pytest.raises(ValueError, match="at least two"):
        merge_many([sd], spec)
    bad = {k: v.clone() for k, v in sd.items()}
    key = next(k for k in sd if k.endswith("bias"))
    bad[key][0] = float("nan")
    with pytest.raises(ValueError, match=rf"states\[1\]\['{key}'\]"):
        merge_many([sd, bad], spec)
    with pytest.raises(StateDictMismatchError, match=key):
        merge_many([sd, {k: v for k, v in sd.items() if k != key}], spec)
