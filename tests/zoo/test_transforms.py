"""Weight-space augmentations: symmetries keep the function, perturbations
have the advertised statistics, batches draw per row, seeds reproduce."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import weightspace
from tests.architectures import ARCHITECTURES
from tests.helpers import rel_err, run
from weightspace.models import MLP, SIREN, Sine, SmallCNN
from weightspace.spec import Permutation, WeightSpaceSpec
from weightspace.zoo.transforms import (
    Compose,
    GaussianNoise,
    RandomApply,
    RandomPermutation,
    RandomScaling,
    RandomSignFlip,
    SirenBiasShift,
    WeightDropout,
    WeightTransform,
)

ARCH_IDS = [a.name for a in ARCHITECTURES]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Net:
    """A model with its spec, an input batch and its flat parameters."""

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        self.model = model.eval()
        self.x = x
        self.spec: WeightSpaceSpec = weightspace.trace(model, x)
        self.flat = self.spec.flatten(model.state_dict())

    def output(self, flat: Tensor) -> Tensor:
        """The model's output with ``flat`` loaded the way a user would."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.spec.unflatten(flat), strict=True)
        with torch.no_grad():
            return model(self.x)

    def batch(self, rows: int = 4) -> Tensor:
        """``rows`` different networks of this architecture."""
        noise = torch.randn(rows, self.spec.num_parameters, generator=_gen(99), dtype=self.flat.dtype)
        return self.flat + 0.1 * noise


def _relu_mlp() -> Net:
    torch.manual_seed(0)
    return Net(MLP(5, (16, 12), 3, activation="relu"), torch.randn(32, 5))


def _tanh_mlp() -> Net:
    torch.manual_seed(1)
    return Net(MLP(5, (16, 12), 3, activation="tanh"), torch.randn(32, 5))


def _cnn() -> Net:
    torch.manual_seed(2)
    return Net(SmallCNN(1, (8, 8, 8), num_classes=4), torch.randn(6, 1, 8, 8))


def _siren() -> Net:
    # float64: w0 = 30 amplifies the rounding of every weight of a float32 SIREN;
    # w0_initial differs from w0 so that a wrong per-space w0 would show
    torch.manual_seed(3)
    model = SIREN(2, (16, 16), 1, w0=30.0, w0_initial=20.0).double()
    return Net(model, torch.rand(64, 2, dtype=torch.float64) * 2 - 1)


@pytest.fixture(scope="module")
def nets() -> dict[str, Net]:
    return {"relu_mlp": _relu_mlp(), "tanh_mlp": _tanh_mlp(), "cnn": _cnn(), "siren": _siren()}


def _siren_w0(net: Net) -> dict[str, float]:
    return {"net.0": net.model.w0_initial, "net.2": net.model.w0}


def _assert_preserves_function(net: Net, out: Tensor, tol: float) -> None:
    expected = net.output(net.flat)
    for row in out.reshape(-1, net.spec.num_parameters):
        assert rel_err(net.output(row), expected) < tol


def _changed(a: Tensor, b: Tensor, spec: WeightSpaceSpec) -> set[str]:
    """Names of the parameters that differ between two flat vectors."""
    return {p.name for p in spec.parameters
            if not torch.equal(a[..., slice(*spec.offsets[p.name])],
                               b[..., slice(*spec.offsets[p.name])])}


# ------------------------------------------------------ function preservation
SYMMETRY_CASES = [
    ("relu_mlp", RandomPermutation()),
    ("cnn", RandomPermutation()),
    ("tanh_mlp", RandomPermutation()),
    ("siren", RandomPermutation()),
    ("relu_mlp", RandomScaling()),
    ("cnn", RandomScaling(0.25, 4.0)),
    ("tanh_mlp", RandomSignFlip()),
    ("siren", RandomSignFlip()),
    ("siren", SirenBiasShift(w0={"net.0": 20.0, "net.2": 30.0}, max_periods=2)),
    ("siren", Compose([RandomPermutation(), RandomSignFlip(),
                       SirenBiasShift(w0={"net.0": 20.0, "net.2": 30.0})])),
    ("relu_mlp", Compose([RandomScaling(), RandomPermutation(), RandomSignFlip()])),
]


@pytest.mark.parametrize("name,transform", SYMMETRY_CASES,
                         ids=[f"{n}-{t!r}".replace("\n", "") for n, t in SYMMETRY_CASES])
def test_symmetries_preserve_the_function_and_change_the_weights(name, transform, nets):
    net = nets[name]
    out = transform(net.flat.expand(3, -1), net.spec, _gen(0))
    _assert_preserves_function(net, out, 1e-5)
    # not a no-op: every row moved, and each row differently
    for row in out:
        assert not torch.allclose(row, net.flat)
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_symmetries_preserve_every_test_architecture(arch, traced):
    """Residual streams, BatchNorm buffers, GroupNorm groups (a permutation
    splitting a group changes the output), flattened conv→linear blocks."""
    t = traced(arch.name)
    flat = t.spec.flatten(t.state_dict)
    expected = run(t.model, t.state_dict, t.x)
    for transform in (RandomPermutation(), RandomScaling(0.25, 4.0), RandomSignFlip()):
        out = transform(flat.expand(2, -1), t.spec, _gen(1))
        for row in out:
            assert rel_err(run(t.model, t.spec.unflatten(row), t.x), expected) < 1e-9, transform
    moved = RandomPermutation()(flat, t.spec, _gen(2))
    assert not torch.equal(moved, flat)


def test_scaling_leaves_spaces_without_the_symmetry_unchanged(nets):
    tanh, siren, relu = nets["tanh_mlp"], nets["siren"], nets["relu_mlp"]
    for net in (tanh, siren):
        out = RandomScaling(0.25, 4.0)(net.batch(), net.spec, _gen(0))
        assert torch.equal(out, net.batch())
    # the ReLU MLP: both hidden layers and their readers move, nothing else
    out = RandomScaling()(relu.flat, relu.spec, _gen(0))
    assert _changed(out, relu.flat, relu.spec) == {
        "layers.0.weight", "layers.0.bias", "layers.3.weight", "layers.3.bias", "layers.6.weight"}
    # one factor per neuron: rows of the producer times f, columns of the reader over f
    sd, new = relu.spec.unflatten(relu.flat), relu.spec.unflatten(out)
    f0 = new["layers.0.bias"] / sd["layers.0.bias"]
    f2 = new["layers.3.bias"] / sd["layers.3.bias"]
    for f in (f0, f2):
        assert ((f > 0.5 - 1e-6) & (f < 2.0 + 1e-6)).all() and f.std() > 0.1
    assert torch.allclose(new["layers.0.weight"], sd["layers.0.weight"] * f0[:, None])
    assert torch.allclose(new["layers.3.weight"], sd["layers.3.weight"] * f2[:, None] / f0)
    assert torch.allclose(new["layers.6.weight"], sd["layers.6.weight"] / f2)


def test_sign_flip_leaves_relu_spaces_unchanged_and_follows_p(nets):
    relu, tanh = nets["relu_mlp"], nets["tanh_mlp"]
    assert torch.equal(RandomSignFlip()(relu.batch(), relu.spec, _gen(0)), relu.batch())
    assert torch.equal(RandomSignFlip(p=0.0)(tanh.flat, tanh.spec, _gen(0)), tanh.flat)
    everything = tanh.spec.unflatten(RandomSignFlip(p=1.0)(tanh.flat, tanh.spec, _gen(0)))
    sd = tanh.spec.unflatten(tanh.flat)
    assert torch.equal(everything["layers.0.weight"], -sd["layers.0.weight"])
    assert torch.equal(everything["layers.3.weight"], sd["layers.3.weight"])  # flipped twice
    assert torch.equal(everything["layers.6.weight"], -sd["layers.6.weight"])
    assert torch.equal(everything["layers.6.bias"], sd["layers.6.bias"])


# ------------------------------------------------------------ SIREN shifts
@pytest.mark.parametrize("half_periods", [True, False])
def test_siren_bias_shift_moves_biases_by_periods(half_periods, nets):
    net = nets["siren"]
    w0 = _siren_w0(net)
    transform = SirenBiasShift(w0=w0, max_periods=2, half_periods=half_periods)
    out = transform(net.flat.expand(8, -1), net.spec, _gen(5))
    _assert_preserves_function(net, out, 1e-9)
    sd = net.spec.unflatten(net.flat)
    seen = set()
    for row in out:
        new = net.spec.unflatten(row)
        for space, reader in (("net.0", "net.2.weight"), ("net.2", "net.4.weight")):
            halves = (new[f"{space}.bias"] - sd[f"{space}.bias"]) / (math.pi / w0[space])
            k = halves.round()
            assert torch.allclose(halves, k, atol=1e-9)
            assert (k.abs() <= 4).all()
            seen |= set(k.long().tolist())
            # a half-period shift negates exactly the reader's columns of that neuron
            odd = (k % 2 != 0).double()
            assert torch.equal(new[reader], sd[reader] * (1 - 2 * odd))
        assert torch.equal(new["net.0.weight"], sd["net.0.weight"])
    if half_periods:
        assert seen == set(range(-4, 5))
    else:
        assert seen == {-4, -2, 0, 2, 4}


def test_siren_bias_shift_needs_the_right_w0(nets):
    net = nets["siren"]
    # a single w0 of 30 is wrong for the first layer (w0_initial = 20) ...
    out = SirenBiasShift(w0=30.0, half_periods=False)(net.flat, net.spec, _gen(0))
    assert rel_err(net.output(out), net.output(net.flat)) > 1e-3
    # ... and right for a SIREN whose layers all use 30
    torch.manual_seed(0)
    plain = Net(SIREN(2, (8,)).double(), net.x)
    out = SirenBiasShift()(plain.flat.expand(3, -1), plain.spec, _gen(0))
    _assert_preserves_function(plain, out, 1e-9)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.LayerNorm])
def test_siren_bias_shift_after_a_norm_shifts_the_norm_bias(norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), norm(8), Sine(7.0), nn.Linear(8, 2)).double()
    with torch.no_grad():  # non-trivial affine parameters
        model[1].weight.add_(torch.randn(8, dtype=torch.float64))
        model[1].bias.add_(torch.randn(8, dtype=torch.float64))
    net = Net(model, torch.randn(16, 3, dtype=torch.float64))
    out = SirenBiasShift(w0=7.0)(net.flat.expand(4, -1), net.spec, _gen(0))
    _assert_preserves_function(net, out, 1e-9)
    assert _changed(out, net.flat.expand(4, -1), net.spec) == {"1.bias", "3.weight"}


def test_siren_bias_shift_float32_is_preserving_up_to_rounding():
    torch.manual_seed(0)
    net = Net(SIREN(2, (16, 16), 1), torch.rand(64, 2) * 2 - 1)
    out = SirenBiasShift(max_periods=3)(net.flat.expand(4, -1), net.spec, _gen(0))
    _assert_preserves_function(net, out, 1e-4)


def test_siren_bias_shift_errors_name_what_is_wrong(nets):
    relu = nets["relu_mlp"]
    with pytest.raises(ValueError, match=r"sine.*relu \(layers\.0, layers\.3\)"):
        SirenBiasShift()(relu.flat, relu.spec)
    siren = nets["siren"]
    with pytest.raises(ValueError, match=r"missing \['net\.2'\].*not sine spaces \['net\.4'\]"):
        SirenBiasShift(w0={"net.0": 30.0, "net.4": 30.0})(siren.flat, siren.spec)
    for bad in (dict(w0=0.0), dict(w0={"net.0": -1.0}), dict(max_periods=-1),
                dict(max_periods=1.5), dict(max_periods=0)):
        with pytest.raises(ValueError):
            SirenBiasShift(**bad)


# -------------------------------------------------------------- batches
ALL_TRANSFORMS = [
    RandomPermutation(), RandomScaling(), RandomSignFlip(), GaussianNoise(0.1),
    GaussianNoise(0.1, relative=True), WeightDropout(0.3),
    SirenBiasShift(w0={"net.0": 20.0, "net.2": 30.0}),
    RandomApply(GaussianNoise(0.1), p=0.5),
    Compose([RandomPermutation(), GaussianNoise(0.1)]),
]


BATCH_CASES = [(name, t) for name in ("siren", "relu_mlp", "tanh_mlp") for t in ALL_TRANSFORMS
               if name == "siren" or not isinstance(t, SirenBiasShift)]


@pytest.mark.parametrize("name,transform", BATCH_CASES,
                         ids=[f"{n}-{t!r}".replace("\n", "") for n, t in BATCH_CASES])
def test_batches_draw_per_row_reproducibly_without_touching_the_input(name, transform, nets):
    net = nets[name]
    same = net.flat.expand(16, -1).clone()
    before = same.clone()
    out = transform(same, net.spec, _gen(7))
    assert torch.equal(same, before)  # input untouched
    assert out.shape == same.shape and out.dtype == same.dtype
    assert out.data_ptr() != same.data_ptr()
    assert torch.equal(out, transform(same, net.spec, _gen(7)))  # same seed, same result
    symmetry_applies = not (
        (isinstance(transform, RandomScaling) and name != "relu_mlp")
        or (isinstance(transform, RandomSignFlip) and name == "relu_mlp"))
    if symmetry_applies:
        assert len({tuple(row.tolist()) for row in out}) > 4  # rows got their own draws
        assert not torch.equal(out, transform(same, net.spec, _gen(8)))
    # a single vector is the one-row batch
    assert torch.equal(transform(net.flat, net.spec, _gen(3)),
                       transform(net.flat[None], net.spec, _gen(3))[0])


def test_non_contiguous_and_float64_inputs(nets):
    net = nets["relu_mlp"]
    wide = net.batch(6).double()
    transposed = wide.t().contiguous().t()  # same values, column-major strides
    for transform in (RandomPermutation(), RandomScaling(), GaussianNoise(0.1)):
        out = transform(transposed, net.spec, _gen(0))
        assert out.dtype == torch.float64
        assert torch.equal(out, transform(wide, net.spec, _gen(0)))


def test_random_permutation_is_a_gather_of_spec_permute_flat(nets):
    """Each row is spec.permute_flat with some valid permutation: recover it
    from the first layer's biases (distinct values) and compare."""
    net = nets["relu_mlp"]
    batch = net.batch(5)
    out = RandomPermutation()(batch, net.spec, _gen(0))
    for row, new in zip(batch, out, strict=True):
        sd, nsd = net.spec.unflatten(row), net.spec.unflatten(new)
        perm = {}
        for space in ("layers.0", "layers.3"):
            match = nsd[f"{space}.bias"][:, None] == sd[f"{space}.bias"][None, :]
            perm[space] = match.long().argmax(dim=1)
        assert torch.equal(new, net.spec.permute_flat(row, Permutation(perm)))


# ---------------------------------------------------------- perturbations
def test_gaussian_noise_statistics(traced):
    torch.manual_seed(0)
    net = Net(MLP(32, (64, 64), 10), torch.randn(4, 32))  # 7 000 parameters
    rows = net.batch(8)
    noise = GaussianNoise(std=0.01)(rows, net.spec, _gen(0)) - rows
    assert abs(noise.mean().item()) < 1e-4
    assert noise.std().item() == pytest.approx(0.01, rel=0.03)
    # relative: each tensor's noise scales with that tensor's own spread
    rows[:, slice(*net.spec.offsets["layers.3.weight"])] *= 100
    noise = GaussianNoise(std=0.1, relative=True)(rows, net.spec, _gen(0)) - rows
    for name in ("layers.0.weight", "layers.3.weight", "layers.6.weight"):
        part = slice(*net.spec.offsets[name])
        ratio = noise[:, part].std(dim=1) / rows[:, part].std(dim=1)
        assert ratio.min().item() > 0.09 and ratio.max().item() < 0.11, name
    # buffers (running statistics, num_batches_tracked) are left alone
    t = traced("resnet_bn")
    flat = t.spec.flatten(t.state_dict)
    out = GaussianNoise(0.1)(flat, t.spec, _gen(0))
    moved = _changed(out, flat, t.spec)
    assert moved == {p.name for p in t.spec.parameters if not p.is_buffer}
    # a one-element tensor has no spread to be relative to
    tiny = Net(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), torch.randn(2, 3))
    out = GaussianNoise(0.5, relative=True)(tiny.flat, tiny.spec, _gen(0))
    assert _changed(out, tiny.flat, tiny.spec) == {"0.weight", "0.bias", "2.weight"}


@pytest.mark.parametrize("rescale", [True, False])
def test_weight_dropout_zeroes_a_fraction_p(rescale, traced):
    torch.manual_seed(0)
    net = Net(MLP(32, (64, 64), 10), torch.randn(4, 32))
    rows = net.batch(8)
    out = WeightDropout(p=0.2, rescale=rescale)(rows, net.spec, _gen(0))
    dropped = out == 0
    n = dropped.numel()
    assert abs(dropped.float().mean().item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    kept = rows[~dropped] / (0.8 if rescale else 1.0)
    assert torch.allclose(out[~dropped], kept)
    assert torch.equal(WeightDropout(p=0.0)(rows, net.spec, _gen(0)), rows)
    t = traced("resnet_bn")  # buffers are never dropped
    flat = t.spec.flatten(t.state_dict)
    out = WeightDropout(p=0.5)(flat, t.spec, _gen(0))
    for p in t.spec.parameters:
        if p.is_buffer:
            assert torch.equal(out[slice(*t.spec.offsets[p.name])],
                               flat[slice(*t.spec.offsets[p.name])])


# ------------------------------------------------------------ combinators
class _AddOne(WeightTransform):
    """Adds 1 to every value: shows which rows a combinator passed on."""

    def forward(self, params, spec, generator):
        return params + 1


def test_compose_applies_in_order_with_one_generator(nets):
    net = nets["relu_mlp"]
    rows = net.batch(4)
    first, second = RandomPermutation(), GaussianNoise(0.1)
    g = _gen(0)
    expected = second(first(rows, net.spec, g), net.spec, g)
    assert torch.equal(Compose([first, second])(rows, net.spec, _gen(0)), expected)
    g = _gen(0)
    other_order = first(second(rows, net.spec, g), net.spec, g)
    assert not torch.equal(Compose([second, first])(rows, net.spec, _gen(0)), expected)
    assert torch.equal(Compose([second, first])(rows, net.spec, _gen(0)), other_order)
    empty = Compose([])(rows, net.spec)
    assert torch.equal(empty, rows) and empty.data_ptr() != rows.data_ptr()
    with pytest.raises(TypeError, match="item 1 is a int"):
        Compose([first, 3])


def test_random_apply_decides_per_row(nets):
    net = nets["relu_mlp"]
    rows = net.batch(400)
    out = RandomApply(_AddOne(), p=0.3)(rows, net.spec, _gen(0))
    applied = (out == rows + 1).all(dim=1)
    untouched = (out == rows).all(dim=1)
    assert bool((applied ^ untouched).all())
    assert 0.22 < applied.float().mean().item() < 0.38
    assert torch.equal(RandomApply(_AddOne(), p=0.0)(rows, net.spec, _gen(0)), rows)
    assert torch.equal(RandomApply(_AddOne(), p=1.0)(rows, net.spec, _gen(0)), rows + 1)
    single = RandomApply(_AddOne(), p=1.0)(net.flat, net.spec, _gen(0))
    assert torch.equal(single, net.flat + 1)
    with pytest.raises(ValueError):
        RandomApply(_AddOne(), p=1.5)
    with pytest.raises(TypeError):
        RandomApply("noise", p=0.5)


# ------------------------------------------------------------ errors, repr
def test_wrong_inputs_are_rejected_with_the_numbers(nets):
    net = nets["relu_mlp"]
    P = net.spec.num_parameters
    for transform in (RandomPermutation(), GaussianNoise(), Compose([RandomSignFlip()])):
        with pytest.raises(ValueError, match=rf"{P - 1} values.*{P} parameters"):
            transform(torch.zeros(P - 1), net.spec)
        with pytest.raises(ValueError, match=r"\[P\] or \[B, P\].*\[2, 2, "):
            transform(torch.zeros(2, 2, P), net.spec)
        with pytest.raises(ValueError, match="floating-point"):
            transform(torch.zeros(P, dtype=torch.long), net.spec)
        with pytest.raises(TypeError, match="list"):
            transform([0.0] * P, net.spec)
    for make in (lambda: RandomScaling(0.0, 1.0), lambda: RandomScaling(2.0, 1.0),
                 lambda: RandomSignFlip(-0.1), lambda: GaussianNoise(-1.0),
                 lambda: WeightDropout(1.0), lambda: WeightDropout(-0.1)):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(TypeError, match="abstract"):
        WeightTransform()  # forward() must be implemented by a subclass


def test_reprs():
    assert repr(RandomPermutation()) == "RandomPermutation()"
    assert repr(RandomScaling()) == "RandomScaling(low=0.5, high=2.0)"
    assert repr(RandomSignFlip(0.25)) == "RandomSignFlip(p=0.25)"
    assert repr(WeightDropout()) == "WeightDropout(p=0.1, rescale=True)"
    assert repr(SirenBiasShift({"net.0": 20})) == (
        "SirenBiasShift(w0={'net.0': 20.0}, max_periods=1, half_periods=True)")
    assert repr(Compose([RandomPermutation(), RandomApply(GaussianNoise(), 0.5)])) == (
        "Compose([\n    RandomPermutation(),\n    RandomApply(\n"
        "        GaussianNoise(std=0.01, relative=False),\n        p=0.5,\n    ),\n])")


# ------------------------------------------------------------- hypothesis
@settings(max_examples=12, deadline=None)
@given(
    in_features=st.integers(1, 4),
    hidden=st.lists(st.integers(1, 6), min_size=0, max_size=3),
    out_features=st.integers(1, 3),
    activation=st.sampled_from(["relu", "tanh", "sin", "gelu"]),
    seed=st.integers(0, 2**16),
)
def test_random_permutation_preserves_random_mlps(in_features, hidden, out_features,
                                                  activation, seed):
    torch.manual_seed(seed)
    model = MLP(in_features, hidden, out_features, activation=activation).double()
    net = Net(model, torch.randn(7, in_features, dtype=torch.float64))
    out = RandomPermutation()(net.batch(3), net.spec, _gen(seed))
    for before, after in zip(net.batch(3), out, strict=True):
        assert rel_err(net.output(after), net.output(before)) < 1e-12
        # a permutation only reorders values
        assert torch.equal(after.sort().values, before.sort().values)
