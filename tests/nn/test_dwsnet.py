"""DWSNet: symmetry, the full equivariant basis, training and unsupported architectures."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import weightspace
from tests.nn.conftest import fit
from weightspace import GraphTemplate, WeightSpaceSpec
from weightspace.models.cnn import SmallCNN
from weightspace.models.mlp import MLP
from weightspace.models.siren import SIREN
from weightspace.nn.dwsnet import DWSLayer, DWSNet, MLPWeightSpace
from weightspace.spec.symmetry import Permutation, permutation_index

TOL = 1e-5


def _spec(name: str) -> WeightSpaceSpec:
    if name == "siren":  # 2-32-32-1, sine
        return weightspace.trace(SIREN(), torch.zeros(1, 2))
    if name == "mlp3":  # ReLU, 3 hidden layers
        return weightspace.trace(MLP(5, (8, 7, 6), 3), torch.zeros(1, 5))
    if name == "mlp1":  # one hidden layer (M = 2 weight layers)
        return weightspace.trace(MLP(3, (6,), 2), torch.zeros(1, 3))
    if name == "mlp_nobias":
        return weightspace.trace(MLP(4, (6, 5), 2, bias=False), torch.zeros(1, 4))
    raise KeyError(name)


SPECS = {name: _spec(name) for name in ("siren", "mlp3", "mlp1", "mlp_nobias")}
ARCHS = list(SPECS)


def _model(spec: WeightSpaceSpec, head: str, seed: int = 0, **kwargs) -> DWSNet:
    torch.manual_seed(seed)
    kwargs = {"hidden_channels": 6, "num_layers": 3, **kwargs}
    model = DWSNet(GraphTemplate.for_spec(spec), 4, head=head, **kwargs).double().eval()
    if model.residual:
        # the residual head starts at zero (the identity map), which is
        # trivially equivariant; randomise it so the tests see the whole network
        with torch.no_grad():
            for p in model.layers[-1].parameters():
                p.normal_(0.0, 0.3)
    return model


def _params(spec: WeightSpaceSpec, batch: int = 3, seed: int = 1) -> Tensor:
    return torch.randn(batch, spec.num_parameters, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max().detach() / b.abs().max().detach().clamp_min(1.0))


def _permute_fixed_space(spec: WeightSpaceSpec, params: Tensor, role: str) -> Tensor:
    """Permute the (non-permutable) input or output neurons by a cyclic shift:
    not a symmetry of the MLP, so DWSNet need not respect it."""
    space = next(s for s in spec.spaces if s.role == role)
    shift = torch.roll(torch.arange(space.size), 1)
    entries = spec.split_parameters(params)
    for p in spec.parameters:
        for axis, a in enumerate(p.axes):
            if a is not None and a.space == space.name:
                entries[p.name] = entries[p.name].index_select(axis + 1, shift)
    return spec.join_parameters(entries)


# ------------------------------------------------------------------ symmetry
@pytest.mark.parametrize("arch", ARCHS)
def test_invariant_head_is_invariant_to_hidden_permutations(arch):
    spec = SPECS[arch]
    model = _model(spec, "invariant")
    params = _params(spec)
    out = model(params)
    assert out.shape == (3, 4)
    for k in range(3):
        perm = spec.random_permutation(torch.Generator().manual_seed(k))
        permuted = spec.permute_flat(params, perm)
        assert not torch.equal(permuted, params)
        assert _max_diff(model(permuted), out) < TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_equivariant_head_is_equivariant_to_hidden_permutations(arch):
    spec = SPECS[arch]
    model = _model(spec, "equivariant")
    params = _params(spec)
    out = model(params)
    assert out.shape == params.shape
    for k in range(3):
        perm = spec.random_permutation(torch.Generator().manual_seed(k))
        assert _max_diff(model(spec.permute_flat(params, perm)), spec.permute_flat(out, perm)) < TOL


# SIREN has a single output neuron: nothing to reorder there
@pytest.mark.parametrize(("arch", "role"), [("siren", "input"), ("mlp3", "input"), ("mlp3", "output")])
def test_permuting_fixed_neurons_changes_the_output(arch, role):
    spec = SPECS[arch]
    params = _params(spec)
    moved = _permute_fixed_space(spec, params, role)
    assert not torch.equal(moved, params)

    invariant = _model(spec, "invariant")
    assert _max_diff(invariant(moved), invariant(params)) > 1e-3

    # the equivariant head does not commute with it either (the fixed-index
    # terms give every input/output neuron its own coefficients)
    equivariant = _model(spec, "equivariant")
    expected = _permute_fixed_space(spec, equivariant(params), role)
    assert _max_diff(equivariant(moved), expected) > 1e-3


@pytest.mark.parametrize("head", ["invariant", "equivariant"])
def test_graph_batch_input_equals_flat_input(head):
    spec = SPECS["mlp3"]
    model = _model(spec, head)
    params = _params(spec)
    batch = GraphTemplate.for_spec(spec).to_batch(params)
    assert torch.allclose(model(batch), model(params), atol=1e-12)


# ----------------------------------------------------------- the full basis
def _orbit_count(num: int, generators: list[Tensor], pairs: bool) -> int:
    """Number of orbits of the group generated by ``generators`` (flat index
    permutations) on indices (``pairs=False``) or on index pairs."""
    parent = list(range(num * num if pairs else num))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for g in generators:
        g = g.tolist()
        for i in range(len(parent)):
            j = g[i // num] * num + g[i % num] if pairs else g[i]
            parent[find(i)] = find(j)
    return len({find(i) for i in range(len(parent))})


def _generators(spec: WeightSpaceSpec) -> list[Tensor]:
    """Flat index maps of a transposition and a full cycle of every hidden
    space (together they generate the symmetry group)."""
    out = []
    for s in spec.permutable_spaces:
        swap = torch.arange(s.size)
        swap[[0, 1]] = swap[[1, 0]]
        for p in (swap, torch.roll(torch.arange(s.size), 1)):
            out.append(permutation_index(spec, Permutation({s.name: p})))
    return out


@pytest.mark.parametrize("hidden", [(3, 3), (3, 4, 3)])
def test_dws_layer_spans_every_equivariant_linear_map(hidden):
    """The maps a 1->1-channel DWS layer can express are exactly the
    equivariant ones: their span has the dimension of the commutant (the
    number of orbits of index pairs) and every one commutes with the group;
    the biases span the invariant vectors."""
    spec = weightspace.trace(MLP(2, hidden, 2), torch.zeros(1, 2))
    space = MLPWeightSpace.from_spec(spec)
    layer = DWSLayer(space, 1, 1).double()
    num = spec.num_parameters
    basis_inputs = space.to_features(torch.eye(num, dtype=torch.float64))
    generators = _generators(spec)

    params = {n: torch.zeros_like(p) for n, p in layer.named_parameters()}
    weights = [n for n in params if n.endswith("weight")]
    biases = [n for n in params if n.endswith("bias")]

    def image(values: Tensor, names: list[str], inputs: list[Tensor]) -> Tensor:
        """The layer's output in parameter layout when ``names`` hold
        ``values`` and every other parameter is zero (linear in ``values``)."""
        chunks = dict(zip(names, values.split([params[n].numel() for n in names]), strict=True))
        full = {n: chunks[n].view_as(p) if n in chunks else p for n, p in params.items()}
        return space.to_parameters(torch.func.functional_call(layer, full, (inputs,)))

    # every map of the family: column k is the map (row i: image of the i-th
    # unit vector) for the k-th unit direction of the layer's weights
    num_weights = sum(params[n].numel() for n in weights)
    maps = torch.func.jacfwd(image)(torch.zeros(num_weights, dtype=torch.float64), weights, basis_inputs)
    maps = maps.reshape(num, num, num_weights)
    for g in generators:
        assert torch.equal(maps[g][:, g], maps)
    assert torch.linalg.matrix_rank(maps.reshape(num * num, -1)) == _orbit_count(num, generators, pairs=True)

    zero = space.to_features(torch.zeros(1, num, dtype=torch.float64))
    num_biases = sum(params[n].numel() for n in biases)
    vectors = torch.func.jacfwd(image)(torch.zeros(num_biases, dtype=torch.float64), biases, zero)[0]
    for g in generators:
        assert torch.equal(vectors[g], vectors)
    assert torch.linalg.matrix_rank(vectors) == _orbit_count(num, generators, pairs=False)


# ----------------------------------------------------------------- training
def test_invariant_head_learns_to_regress_the_mean_weight():
    spec = SPECS["siren"]
    torch.manual_seed(0)
    shift = torch.rand(64, 1)
    params = torch.randn(64, spec.num_parameters) * 0.5 + shift
    target = params.mean(1, keepdim=True)
    model = DWSNet(GraphTemplate.for_spec(spec), 1, hidden_channels=8, num_layers=2)
    losses = fit(model, params, target, torch.nn.functional.mse_loss, steps=40)
    assert losses[-1] < 0.1 * losses[0]


def test_invariant_head_learns_which_distribution_the_weights_came_from():
    spec = SPECS["mlp3"]
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (64,))
    params = torch.randn(64, spec.num_parameters) * (0.5 + labels[:, None].float())
    model = DWSNet(GraphTemplate.for_spec(spec), 2, hidden_channels=8, num_layers=2)
    losses = fit(model, params, labels, torch.nn.functional.cross_entropy, steps=30)
    assert losses[-1] < 0.5 * losses[0]
    assert (model(params).argmax(1) == labels).float().mean() > 0.9


def test_equivariant_head_learns_an_equivariant_map():
    spec = SPECS["mlp3"]
    torch.manual_seed(0)
    params = torch.randn(32, spec.num_parameters)
    target = -2.0 * params  # an equivariant map (the "tie every index" term)
    model = DWSNet(GraphTemplate.for_spec(spec), 1, hidden_channels=8, num_layers=2, head="equivariant")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model(params), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("head", ["invariant", "equivariant"])
@pytest.mark.parametrize("arch", ["siren", "mlp3"])
def test_gradients_reach_every_parameter(arch, head):
    spec = SPECS[arch]
    model = _model(spec, head, hidden_channels=4, num_layers=3).float()
    torch.manual_seed(0)
    model(torch.randn(4, spec.num_parameters)).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------ normalisation
def test_fit_normalisation_standardises_and_keeps_invariance():
    spec = SPECS["siren"]
    model = _model(spec, "invariant")
    params = _params(spec, batch=8) * 3.0 + 1.0
    before = model(params)
    model.fit_normalisation(params)
    assert not torch.allclose(model.entry_std, torch.ones_like(model.entry_std))
    for x in model.features(params):
        assert abs(float(x.mean())) < 1e-9
        assert abs(float(x.std(correction=0)) - 1.0) < 1e-9
    after = model(params)
    assert not torch.allclose(after, before)
    perm = spec.random_permutation(torch.Generator().manual_seed(0))
    assert _max_diff(model(spec.permute_flat(params, perm)), after) < TOL


def test_missing_biases_give_zero_features_and_no_output_entries():
    spec = SPECS["mlp_nobias"]
    space = MLPWeightSpace.from_spec(spec)
    assert [t.parameter is None for t in space.tensors] == [False, True] * 3
    params = _params(spec)
    features = space.to_features(params)
    assert all(not f.any() for f, t in zip(features, space.tensors, strict=True) if t.parameter is None)
    assert torch.equal(space.to_parameters(features), params)


def test_feature_layout():
    space = MLPWeightSpace.from_spec(SPECS["mlp3"])  # 5 -> 8 -> 7 -> 6 -> 3
    shapes = [tuple(f.shape) for f in space.to_features(_params(SPECS["mlp3"], batch=2))]
    assert shapes == [(2, 8, 5), (2, 8, 1), (2, 7, 8, 1), (2, 7, 1), (2, 6, 7, 1), (2, 6, 1),
                      (2, 6, 3), (2, 3)]


# ------------------------------------------------------ unsupported inputs
def test_conv_network_is_rejected():
    spec = weightspace.trace(SmallCNN(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"plain MLPs.*'features\.0' is a 'conv2d' layer"):
        DWSNet(GraphTemplate.for_spec(spec), 2)


def test_residual_mlp_with_layernorm_is_rejected(traced):
    spec = traced("residual_mlp_layernorm").spec
    with pytest.raises(ValueError, match=r"plain MLPs.*'norms\.0' is a 'layer_norm' layer"):
        DWSNet(GraphTemplate.for_spec(spec), 2)


def test_mlp_with_batchnorm_is_rejected(traced):
    spec = traced("mlp_bn_tanh").spec
    with pytest.raises(ValueError, match=r"plain MLPs.*layer '0' carries a 'batch"):
        DWSNet(GraphTemplate.for_spec(spec), 2)


def test_bad_arguments_are_rejected():
    template = GraphTemplate.for_spec(SPECS["mlp1"])
    with pytest.raises(ValueError, match="head="):
        DWSNet(template, 2, head="graph")
    with pytest.raises(ValueError, match="num_layers"):
        DWSNet(template, 2, num_layers=0)
    with pytest.raises(TypeError, match="GraphTemplate"):
        DWSNet(SPECS["mlp1"], 2)


@pytest.mark.parametrize("arch", ["siren", "mlp3"])
def test_untrained_residual_head_is_the_identity_and_learns_changes(arch):
    spec = SPECS[arch]
    params = _params(spec)
    torch.manual_seed(0)
    model = DWSNet(GraphTemplate.for_spec(spec), 1, hidden_channels=6, num_layers=2,
                   head="equivariant").double().fit_normalisation(params)
    assert torch.equal(model(params), params)
    # a change in units of each tensor's spread reaches the output once trained
    target = params * 1.5
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(params), target)
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * first
    # residual=False: the head's output is the new parameters themselves
    plain = DWSNet(GraphTemplate.for_spec(spec), 1, hidden_channels=6, num_layers=2, head="equivariant",
                   residual=False).double()
    assert not plain.residual and (plain(params) - params).abs().max() > 1e-2
