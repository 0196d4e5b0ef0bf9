"""Git Re-Basin weight matching (weightspace.align.weight_matching)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import weightspace
from tests.architectures import ARCHITECTURES, randomise_buffers
from tests.helpers import rel_err, run
from weightspace import Permutation, SpecError, StateDictMismatchError
from weightspace.align import WeightMatchingResult, align, weight_matching
from weightspace.align.assignment import solve_assignment
from weightspace.align.weight_matching import inner_objective
from weightspace.models import build_model, default_input_shape

ARCH_IDS = [a.name for a in ARCHITECTURES]

# (family, kwargs) of the built-in models; "vgg" is the registry's VGG with
# BatchNorm on 8x8 inputs (vgg11 itself needs 32x32 inputs for its 5 pools)
BUILTIN = [
    ("mlp", {}),
    ("cnn", {}),
    ("resnet20", {"norm": "batch", "width": 1}),
    ("resnet20", {"norm": "layer", "width": 1}),
    ("resnet20", {"norm": "group", "width": 1}),
    ("vgg", {"batch_norm": True}),
    ("vgg", {"batch_norm": True, "cfg": (16, "M", 32, "M")}),  # flatten block 2x2
]
BUILTIN_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}"
               for name, kw in BUILTIN]

_SPECS: dict = {}


def _sd(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _builtin(name, kwargs, seed=0, dtype=torch.float32):
    """(model in eval mode with randomised norm statistics, spec, example input)."""
    torch.manual_seed(seed)
    model = build_model(name, **kwargs).to(dtype)
    randomise_buffers(model, torch.Generator().manual_seed(seed + 100))
    model.eval()
    shape = default_input_shape(name, **kwargs)
    key = (name, tuple(sorted(kwargs.items())), dtype)
    if key not in _SPECS:
        _SPECS[key] = weightspace.trace(model, shape)
    x = torch.randn((4, *shape[1:]), generator=torch.Generator().manual_seed(seed + 7),
                    dtype=dtype)
    return model, _SPECS[key], x


def _assert_recovers(spec, sd, seed=1):
    perm = spec.random_permutation(torch.Generator().manual_seed(seed))
    permuted = spec.permute(sd, perm)
    result = weight_matching(sd, permuted, spec)
    assert isinstance(result, WeightMatchingResult)
    aligned = spec.permute(permuted, result.permutation)
    for key in sd:
        assert torch.equal(aligned[key], sd[key]), key
    assert result.permutation.equal(perm.inverse())
    assert result.converged and result.sweeps >= 1
    assert set(result.permutation) == {s.name for s in spec.permutable_spaces}
    h = result.history
    assert len(h) == result.sweeps + 1
    assert all(b >= a for a, b in zip(h, h[1:], strict=False))
    # the objective at the optimum is Σ ||W||² of the cost parameters
    assert result.objective == pytest.approx(inner_objective(spec, sd, sd, {}), rel=1e-6)
    assert h[-1] == pytest.approx(result.objective, rel=1e-6)
    return result


# ------------------------------------------------------------ recovery
@pytest.mark.parametrize(("name", "kwargs"), BUILTIN, ids=BUILTIN_IDS)
def test_recovers_a_known_permutation_of_builtin_models(name, kwargs):
    model, spec, _ = _builtin(name, kwargs)
    _assert_recovers(spec, _sd(model))


@pytest.mark.parametrize("name", ARCH_IDS)
def test_recovers_a_known_permutation_of_test_architectures(traced, name):
    t = traced(name)
    _assert_recovers(t.spec, t.state_dict, seed=3)


def test_group_norm_spaces_are_solved_on_groups(traced):
    t = traced("resnet_groupnorm")
    grouped = [s for s in t.spec.permutable_spaces if s.permutation_blocks > 1]
    assert grouped
    # an independent model: the result must still be a GroupNorm symmetry
    other = traced("resnet_groupnorm", seed=5).state_dict
    result = weight_matching(t.state_dict, other, t.spec)
    t.spec.permute(other, result.permutation)  # check_permutation passes
    for s in grouped:
        size = s.size // s.permutation_blocks
        rows = result.permutation[s.name].reshape(s.permutation_blocks, size) // size
        assert (rows == rows[:, :1]).all()


def test_solve_assignment_with_blocks_is_the_exact_group_optimum():
    rng = np.random.default_rng(0)
    cost = rng.standard_normal((6, 6))
    best, best_value = None, -np.inf
    import itertools

    for order in itertools.permutations(range(3)):
        for inner in itertools.product(itertools.permutations(range(2)), repeat=3):
            perm = np.concatenate([np.array(inner[g]) + 2 * order[g] for g in range(3)])
            value = cost[np.arange(6), perm].sum()
            if value > best_value:
                best, best_value = perm, value
    assert np.array_equal(solve_assignment(cost, blocks=3), best)


# ------------------------------------------------- function and buffers
def test_aligned_resnet_computes_the_same_function_and_permutes_bn_statistics():
    model_a, spec, x = _builtin("resnet20", {"norm": "batch"}, seed=0)
    model_b, _, _ = _builtin("resnet20", {"norm": "batch"}, seed=1)
    sd_a, sd_b = _sd(model_a), _sd(model_b)
    result = weight_matching(sd_a, sd_b, spec)
    aligned = align(sd_a, sd_b, spec)
    expected = spec.permute(sd_b, result.permutation)
    for key in aligned:
        assert torch.equal(aligned[key], expected[key])
    assert rel_err(run(model_b, aligned, x), run(model_b, sd_b, x)) < 1e-5
    # running statistics move with their channels
    for bn in ("norm1", "layer2.0.norm1", "layer3.2.norm2", "layer3.0.shortcut.1"):
        space = spec.parameter(f"{bn}.running_mean").axes[0].space
        p = result.permutation[space]
        assert not torch.equal(p, torch.arange(len(p))), space
        for stat in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(aligned[f"{bn}.{stat}"], sd_b[f"{bn}.{stat}"][p])
    # the aligned model is closer to A than B was
    flat_a = spec.flatten(sd_a)
    assert (spec.flatten(aligned) - flat_a).norm() < (spec.flatten(sd_b) - flat_a).norm()


def test_the_last_residual_stream_of_resnet20_is_permuted():
    """The stream read by ``fc`` (the rebasin package leaves it unpermuted)."""
    model, spec, x = _builtin("resnet20", {"norm": "batch"})
    sd = _sd(model)
    last = spec.parameter("fc.weight").axes[1].space
    assert spec.space(last).permutable
    readers = [p.name for p in spec.parameters
               if any(a is not None and a.space == last for a in p.axes)]
    assert len(readers) > 10  # every block of stage 3 writes the stream
    perm = spec.random_permutation(torch.Generator().manual_seed(4))
    result = weight_matching(sd, spec.permute(sd, perm), spec)
    assert last in result.permutation
    assert not torch.equal(result.permutation[last], torch.arange(spec.space(last).size))
    assert torch.equal(result.permutation[last], perm.inverse()[last])
    # with an independent B as well
    other, _, _ = _builtin("resnet20", {"norm": "batch"}, seed=3)
    result = weight_matching(sd, _sd(other), spec)
    assert not torch.equal(result.permutation[last], torch.arange(spec.space(last).size))


@pytest.mark.parametrize("name", ["vgg_bn", "resnet_bn", "norms", "functional"])
def test_aligned_independent_models_keep_their_function(traced, name):
    a, b = traced(name), traced(name, seed=9)
    aligned = align(a.state_dict, b.state_dict, a.spec)
    assert rel_err(run(b.model, aligned, b.x), run(b.model, b.state_dict, b.x)) < 1e-10


# ----------------------------------------------- independent models
@pytest.mark.parametrize(("name", "kwargs"), [BUILTIN[0], BUILTIN[2], BUILTIN[5]],
                         ids=[BUILTIN_IDS[0], BUILTIN_IDS[2], BUILTIN_IDS[5]])
def test_independent_models_monotone_terminating_deterministic(name, kwargs):
    model_a, spec, _ = _builtin(name, kwargs, seed=0)
    model_b, _, _ = _builtin(name, kwargs, seed=1)
    sd_a, sd_b = _sd(model_a), _sd(model_b)
    r1 = weight_matching(sd_a, sd_b, spec, seed=3)
    r2 = weight_matching(sd_a, sd_b, spec, seed=3)
    assert r1.converged and r1.sweeps < 100
    h = r1.history
    assert all(b >= a for a, b in zip(h, h[1:], strict=False))
    assert h[-1] > h[0]
    assert r1.permutation.equal(r2.permutation) and r1.history == r2.history
    assert r1.objective == pytest.approx(
        inner_objective(spec, sd_a, sd_b, r1.permutation.perms), rel=1e-6)  # float32
    flat_a = spec.flatten(sd_a)
    aligned = spec.permute(sd_b, r1.permutation)
    assert (spec.flatten(aligned) - flat_a).norm() < (spec.flatten(sd_b) - flat_a).norm()


def _reference_weight_matching(spec, sd_a, sd_b, seed, max_sweeps=100):
    """A direct transcription of Git Re-Basin's algorithm (full permuted copies)."""
    from weightspace.align.weight_matching import cost_terms
    from weightspace.spec.symmetry import expand_index

    terms = cost_terms(spec, False)
    spaces = [s for s in spec.permutable_spaces if terms[s.name]]
    perm = {s.name: torch.arange(s.size) for s in spec.permutable_spaces}
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        progress = False
        for i in rng.permutation(len(spaces)):
            s = spaces[i]
            cost = torch.zeros(s.size, s.size, dtype=torch.float64)
            for t in terms[s.name]:
                wb = sd_b[t.parameter]
                for axis, q, block in t.others:
                    wb = wb.index_select(axis, expand_index(perm[q], block))
                wa = sd_a[t.parameter].movedim(t.axis, 0).reshape(s.size, -1)
                cost += wa @ wb.movedim(t.axis, 0).reshape(s.size, -1).T
            c = cost.numpy()
            new = solve_assignment(c, s.permutation_blocks)
            rows = np.arange(s.size)
            old_v, new_v = c[rows, perm[s.name].numpy()].sum(), c[rows, new].sum()
            if new_v > old_v + 1e-9 * (np.abs(c[rows, new]).sum() + np.abs(
                    c[rows, perm[s.name].numpy()]).sum()):
                perm[s.name] = torch.from_numpy(new)
                progress = True
        if not progress:
            break
    return Permutation(perm)


@pytest.mark.parametrize("name", ["resnet_bn", "vgg_bn", "residual_mlp_layernorm", "norms"])
def test_matches_a_direct_reference_implementation(traced, name):
    a, b = traced(name), traced(name, seed=4)
    for seed in (0, 1):
        ours = weight_matching(a.state_dict, b.state_dict, a.spec, seed=seed)
        ref = _reference_weight_matching(a.spec, a.state_dict, b.state_dict, seed)
        assert ours.permutation.equal(ref)


def _count_incremental_updates(monkeypatch):
    """Force every solve that can update its cost incrementally to do so;
    return a list that collects the outcome of each attempt."""
    import importlib

    engine = importlib.import_module("weightspace.align._wm_engine")
    monkeypatch.setattr(engine, "_INCREMENTAL_MIN_MACS", 0)
    monkeypatch.setattr(engine, "_INCREMENTAL_MAX_ROWS", 10.0)
    outcomes: list[bool] = []
    update = engine._Matcher._update

    def counted(self, i):
        done = update(self, i)
        outcomes.append(done)
        return done

    monkeypatch.setattr(engine._Matcher, "_update", counted)
    return outcomes


@pytest.mark.parametrize("name", ["resnet_bn", "vgg_bn", "residual_mlp_layernorm", "norms"])
def test_incremental_cost_updates_match_the_reference(traced, name, monkeypatch):
    """Costs updated from the previous solve (only the rows a permutation
    moved) give exactly the permutations of recomputed products."""
    a, b = traced(name), traced(name, seed=4)
    full = [weight_matching(a.state_dict, b.state_dict, a.spec, seed=seed) for seed in (0, 1)]
    outcomes = _count_incremental_updates(monkeypatch)
    for seed, expected in zip((0, 1), full, strict=True):
        ours = weight_matching(a.state_dict, b.state_dict, a.spec, seed=seed)
        assert ours.permutation.equal(expected.permutation)
        assert ours.permutation.equal(
            _reference_weight_matching(a.spec, a.state_dict, b.state_dict, seed))
        assert ours.history == pytest.approx(expected.history, rel=1e-9)
        assert ours.objective == pytest.approx(
            inner_objective(a.spec, a.state_dict, b.state_dict, ours.permutation.perms),
            rel=1e-9)
    assert any(outcomes)


def test_incremental_cost_updates_on_float32_builtin_models(monkeypatch):
    """Partial (few rows moved) and whole-block updates on float32 weights:
    the same permutations as recomputed products, the objective to 1e-6."""
    cases = [("mlp", {}), ("resnet20", {"norm": "batch", "width": 1})]
    results = {}
    for name, kwargs in cases:
        model_a, spec, _ = _builtin(name, kwargs, seed=0)
        model_b, _, _ = _builtin(name, kwargs, seed=1)
        results[name] = (spec, _sd(model_a), _sd(model_b),
                         weight_matching(_sd(model_a), _sd(model_b), spec, seed=2))
    outcomes = _count_incremental_updates(monkeypatch)
    for spec, sd_a, sd_b, expected in results.values():
        ours = weight_matching(sd_a, sd_b, spec, seed=2)
        assert ours.permutation.equal(expected.permutation)
        assert ours.objective == pytest.approx(
            inner_objective(spec, sd_a, sd_b, ours.permutation.perms), rel=1e-6)
        # a permuted copy is still recovered exactly
        perm = spec.random_permutation(torch.Generator().manual_seed(5))
        recovered = weight_matching(sd_a, spec.permute(sd_a, perm), spec)
        assert recovered.permutation.equal(perm.inverse())
    assert sum(outcomes) >= 10


def test_a_space_on_two_axes_of_one_parameter():
    """h + relu(mix(h)): ``mix.weight`` indexes the stream on both axes."""

    class SelfMix(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.mix, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = self.inp(x)
            return self.out(h + torch.relu(self.mix(h)))

    torch.manual_seed(0)
    model = SelfMix().double()
    spec = weightspace.trace(model, torch.zeros(2, 4, dtype=torch.float64))
    stream = spec.parameter("mix.weight").axes[0].space
    assert spec.parameter("mix.weight").axes[1].space == stream
    sd = _sd(model)
    _assert_recovers(spec, sd)
    other = _sd(SelfMix().double())
    result = weight_matching(sd, other, spec)
    h = result.history
    assert all(b >= a for a, b in zip(h, h[1:], strict=False))
    assert result.objective == pytest.approx(h[-1], rel=1e-9)


# ------------------------------------------------------------ options
def test_init_max_sweeps_and_include_buffers(traced):
    t = traced("resnet_bn")
    spec, sd = t.spec, t.state_dict
    perm = spec.random_permutation(torch.Generator().manual_seed(2))
    permuted = spec.permute(sd, perm)
    # starting at the answer: one sweep confirms it
    result = weight_matching(sd, permuted, spec, init=perm.inverse())
    assert result.sweeps == 1 and result.converged and result.permutation.equal(perm.inverse())
    assert result.history[0] == pytest.approx(result.objective, rel=1e-12)
    # no sweeps: the start is returned, not converged
    result = weight_matching(sd, permuted, spec, max_sweeps=0)
    assert result.sweeps == 0 and not result.converged
    assert result.permutation.equal(spec.identity_permutation())
    # buffers add running statistics to the cost but change nothing here
    plain = weight_matching(sd, permuted, spec)
    with_buffers = weight_matching(sd, permuted, spec, include_buffers=True)
    assert with_buffers.permutation.equal(perm.inverse())
    assert with_buffers.objective > plain.objective
    assert with_buffers.objective == pytest.approx(
        inner_objective(spec, sd, sd, {}, include_buffers=True), rel=1e-9)


def test_mixed_dtypes_and_requires_grad_inputs(traced):
    t = traced("mlp_relu")
    sd32 = {k: v.float().requires_grad_() for k, v in t.state_dict.items()}
    perm = t.spec.random_permutation(torch.Generator().manual_seed(0))
    permuted = t.spec.permute(t.state_dict, perm)
    result = weight_matching(sd32, permuted, t.spec)
    assert result.permutation.equal(perm.inverse())


def test_model_without_permutable_spaces():
    model = nn.Sequential(nn.Linear(3, 2))
    spec = weightspace.trace(model, (1, 3))
    result = weight_matching(_sd(model), _sd(nn.Sequential(nn.Linear(3, 2))), spec)
    assert result.converged and result.sweeps == 0 and len(result.permutation) == 0


# ------------------------------------------------------------- errors
def test_mismatched_state_dicts_name_the_key(traced):
    t = traced("mlp_relu")
    sd = t.state_dict
    missing = {k: v for k, v in sd.items() if k != "2.weight"}
    with pytest.raises(StateDictMismatchError, match=r"'2\.weight'"):
        weight_matching(sd, missing, t.spec)
    wrong = dict(sd, **{"0.bias": torch.zeros(5, dtype=torch.float64)})
    with pytest.raises(StateDictMismatchError, match=r"'0\.bias'"):
        weight_matching(wrong, sd, t.spec)
    extra = dict(sd, foo=torch.zeros(1))
    with pytest.raises(StateDictMismatchError, match="'foo'"):
        weight_matching(sd, extra, t.spec)
    with pytest.raises(TypeError, match="state_b"):
        weight_matching(sd, [1, 2], t.spec)


@pytest.mark.parametrize("which", ["state_a", "state_b"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_parameter(traced, which, bad):
    t = traced("vgg_bn")
    sd = t.state_dict
    broken = {k: v.clone() for k, v in sd.items()}
    broken["4.weight"][1, 2, 0, 0] = bad
    args = (broken, sd) if which == "state_a" else (sd, broken)
    with pytest.raises(ValueError, match=rf"{which}\['4\.weight'\].*(NaN|infinite)"):
        weight_matching(*args, t.spec)


def test_bad_arguments(traced):
    t = traced("mlp_relu")
    sd = t.state_dict
    with pytest.raises(ValueError, match="max_sweeps"):
        weight_matching(sd, sd, t.spec, max_sweeps=-1)
    space = t.spec.permutable_spaces[0]
    with pytest.raises(SpecError, match=space.name):
        weight_matching(sd, sd, t.spec, init=Permutation({space.name: torch.arange(space.size + 1)}))
    with pytest.raises(TypeError, match="init"):
        weight_matching(sd, sd, t.spec, init={space.name: torch.arange(space.size)})
