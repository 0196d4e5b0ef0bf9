"""Structured pruning: removing neurons from every parameter that touches them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import run
from weightspace import trace
from weightspace.io import save_state_dict
from weightspace.prune import (
    PruneError,
    count_macs,
    count_spec_parameters,
    group_norms,
    load_pruned,
    neuron_importance,
    prunable_spaces,
    prune_state_dict,
    pruned_metadata,
    pruned_sizes,
    select_neurons_to_keep,
    shrink_model,
    sparsity_for_speedup,
)

# Architectures whose per-neuron computations do not mix neurons of a space:
# removing a neuron equals zeroing its outgoing weights, exactly.
EXACT = ["mlp_relu", "mlp_bn_tanh", "siren", "small_cnn", "vgg_bn", "resnet_bn",
         "depthwise_separable", "conv1d", "conv3d", "functional"]
# GroupNorm(1, C) / LayerNorm normalise over the channels they keep: the
# pruned model runs but computes something else.
NORMALISED_OVER_CHANNELS = ["resnet_layernorm", "residual_mlp_layernorm", "norms"]


def _random_keep(spec, generator, fraction=0.5):
    keep = {}
    for name in prunable_spaces(spec):
        size = spec.space(name).size
        k = max(1, int(size * fraction))
        keep[name] = torch.sort(torch.randperm(size, generator=generator)[:k]).values
    return keep


def _zero_outgoing(state, spec, keep):
    """The full network with every weight that reads a removed neuron zeroed."""
    out = dict(state)
    for p in spec.parameters:
        if p.role != "weight":
            continue
        # axis 0 is the producer's output; the others read the inputs
        for axis, a in enumerate(p.axes[1:], start=1):
            if a is None or a.space not in keep:
                continue
            removed = torch.ones(spec.space(a.space).size, dtype=torch.bool)
            removed[keep[a.space]] = False
            index = removed.nonzero().flatten()
            index = (index[:, None] * a.block + torch.arange(a.block)).flatten()
            out[p.name] = out[p.name].index_fill(axis, index, 0.0)
    return out


@pytest.mark.parametrize("name", EXACT)
def test_pruned_model_equals_zeroed_outgoing_weights(traced, name):
    t = traced(name)
    keep = _random_keep(t.spec, torch.Generator().manual_seed(1))
    assert keep, "the architecture has nothing to prune"
    small = shrink_model(t.model, t.spec, keep)
    reference = run(t.model, _zero_outgoing(t.state_dict, t.spec, keep), t.x)
    with torch.no_grad():
        got = small(t.x)
    assert torch.allclose(got, reference, atol=1e-10, rtol=1e-10)
    # the shrunk model is a real, smaller module: its spec has the new sizes
    small_spec = trace(small, t.x)
    for space, index in keep.items():
        assert small_spec.space(space).size == len(index)
    assert count_spec_parameters(small_spec) == count_spec_parameters(t.spec, pruned_sizes(t.spec, keep))
    assert count_macs(small_spec) == count_macs(t.spec, pruned_sizes(t.spec, keep))
    assert count_macs(small_spec) < count_macs(t.spec)


@pytest.mark.parametrize("name", NORMALISED_OVER_CHANNELS)
def test_channel_norms_are_resized(traced, name):
    t = traced(name)
    keep = _random_keep(t.spec, torch.Generator().manual_seed(2))
    small = shrink_model(t.model, t.spec, keep)
    with torch.no_grad():
        assert small(t.x).shape == t.model(t.x).shape


@pytest.mark.parametrize("name", ["small_cnn", "resnet_bn"])
def test_values_come_from_the_given_state_dict(traced, name):
    """With ``state_dict=``, every value of the result comes from it, also
    those of tensors that pruning leaves whole (the classifier's bias,
    BatchNorm's counter): the module passed only gives the architecture."""
    trained, other = traced(name, seed=0), traced(name, seed=1)
    keep = _random_keep(trained.spec, torch.Generator().manual_seed(3))
    expected = shrink_model(trained.model, trained.spec, keep)
    got = shrink_model(other.model, trained.spec, keep, state_dict=trained.state_dict)
    for (key, a), (_, b) in zip(expected.state_dict().items(), got.state_dict().items(),
                                strict=True):
        assert torch.equal(a, b), key
    with torch.no_grad():
        assert torch.equal(got(trained.x), expected(trained.x))


def test_model_and_inputs_are_not_modified(traced):
    t = traced("resnet_bn")
    before = t.state_dict
    shrink_model(t.model, t.spec, _random_keep(t.spec, torch.Generator().manual_seed(0)))
    for key, value in t.model.state_dict().items():
        assert torch.equal(value, before[key])


def test_residual_stream_is_pruned_across_the_whole_stream(traced):
    t = traced("resnet_bn")
    streams = [s for s in prunable_spaces(t.spec)
               if sum(layer.space == s for layer in t.spec.layers) > 1]
    assert streams
    stream = streams[0]
    keep = {stream: torch.tensor([0, 2])}
    small_state = prune_state_dict(t.state_dict, t.spec, keep)
    for p in t.spec.parameters:
        for axis, a in enumerate(p.axes):
            if a is not None and a.space == stream:
                assert small_state[p.name].shape[axis] == 2 * a.block, p.name
                assert torch.equal(small_state[p.name],
                                   t.state_dict[p.name].index_select(axis, torch.tensor([0, 2]))
                                   if a.block == 1 else small_state[p.name])


def test_importance_methods(traced):
    t = traced("vgg_bn")
    state = t.state_dict
    l1 = neuron_importance(state, t.spec, "l1")
    l2 = neuron_importance(state, t.spec, "l2")
    bn = neuron_importance(state, t.spec, "bn")
    assert set(l1) == set(l2) == set(prunable_spaces(t.spec))
    # network slimming scores the spaces with a BatchNorm; the hidden linear does not have one
    assert set(bn) == set(l1) - {"9"}
    with pytest.raises(PruneError, match="'9' has none|9 has none"):
        neuron_importance(state, t.spec, "bn", spaces=["9"])
    # L2 of the group, computed by hand for one space
    space = next(iter(l2))
    squares = torch.zeros(t.spec.space(space).size, dtype=torch.float64)
    for p in t.spec.parameters:
        if p.role in ("weight", "bias", "norm_weight", "norm_bias", "depthwise_weight"):
            for axis, a in enumerate(p.axes):
                if a is not None and a.space == space:
                    v = state[p.name].movedim(axis, 0)
                    squares += v.reshape(v.shape[0], -1).square().sum(1)
    assert torch.allclose(l2[space], squares.sqrt())
    # BN importance is |gamma| summed over the norms on the space
    gammas = [state[p.name].abs() for p in t.spec.parameters
              if p.role == "norm_weight" and p.axes[0].space == space]
    assert torch.allclose(bn[space], sum(gammas))
    # Taylor needs data; with data it scores every neuron, non-negatively
    with pytest.raises(PruneError, match="needs the model and data"):
        neuron_importance(state, t.spec, "taylor")
    targets = torch.randint(0, t.model(t.x).shape[1], (len(t.x),))
    taylor = neuron_importance(state, t.spec, "taylor", model=t.model,
                               batches=[(t.x, targets)])
    assert all((v >= 0).all() and v.shape == l1[k].shape for k, v in taylor.items())
    assert all(p.grad is None for p in t.model.parameters())


def test_taylor_matches_loss_change_of_removing_a_neuron():
    """The first-order estimate ranks neurons like the true loss change when
    the network is near-linear in the removed group (small weights)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.05)
    spec = trace(model, (1, 4))
    x, y = torch.randn(64, 4, dtype=torch.float64), torch.randint(0, 3, (64,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = neuron_importance(state, spec, "taylor", model=model, batches=[(x, y)])["0"]
    with torch.no_grad():
        base = nn.functional.cross_entropy(model(x), y)
    true = []
    for i in range(6):
        zeroed = dict(state)
        for key in ("0.weight", "0.bias"):
            zeroed[key] = zeroed[key].index_fill(0, torch.tensor([i]), 0.0)
        zeroed["2.weight"] = zeroed["2.weight"].index_fill(1, torch.tensor([i]), 0.0)
        true.append(float(nn.functional.cross_entropy(run(model, zeroed, x), y) - base))
    true = torch.tensor(true, dtype=torch.float64).square()
    # every pair of neurons whose true loss changes differ by more than 5 %
    # is ordered the same way (the group counts the incoming and outgoing
    # first-order terms, so the scale differs, not the order)
    checked = 0
    for i in range(6):
        for j in range(6):
            if true[i] > 1.05 * true[j]:
                assert scores[i] > scores[j], (i, j)
                checked += 1
    assert checked >= 10


def test_bn_importance_needs_norms(traced):
    t = traced("small_cnn")
    with pytest.raises(PruneError, match="needs norm layers"):
        neuron_importance(t.state_dict, t.spec, "bn")


def test_selection_space_and_global_scope(traced):
    t = traced("mlp_relu")
    importance = neuron_importance(t.state_dict, t.spec, "l2")
    per_space = select_neurons_to_keep(importance, t.spec, 0.5)
    for space, kept in per_space.items():
        size = t.spec.space(space).size
        assert len(kept) == size - round(0.5 * size)
        # the kept neurons are the most important ones
        assert importance[space][kept].min() >= importance[space][
            torch.tensor([i for i in range(size) if i not in kept.tolist()])].max()
    total = sum(t.spec.space(s).size for s in importance)
    global_keep = select_neurons_to_keep(importance, t.spec, 0.5, scope="global")
    assert sum(len(k) for k in global_keep.values()) == total - round(0.5 * total)
    assert all(len(k) >= 1 for k in select_neurons_to_keep(importance, t.spec, 0.99,
                                                           scope="global").values())


def test_speedup_reaches_the_target(traced):
    t = traced("vgg_bn")
    importance = neuron_importance(t.state_dict, t.spec, "l1")
    sparsity = sparsity_for_speedup(t.spec, importance, 2.0)
    keep = select_neurons_to_keep(importance, t.spec, sparsity)
    ratio = count_macs(t.spec) / count_macs(t.spec, pruned_sizes(t.spec, keep))
    assert ratio >= 2.0
    with pytest.raises(PruneError, match="cannot be reached"):
        sparsity_for_speedup(t.spec, importance, 1e6)


def test_errors_name_the_space(traced):
    t = traced("mlp_relu")
    with pytest.raises(PruneError, match="'input'.*input space"):
        prune_state_dict(t.state_dict, t.spec, {"input": torch.tensor([0])})
    space = prunable_spaces(t.spec)[0]
    with pytest.raises(PruneError, match=f"{space!r}.*no neuron"):
        prune_state_dict(t.state_dict, t.spec, {space: torch.tensor([], dtype=torch.long)})
    with pytest.raises(PruneError, match="distinct"):
        prune_state_dict(t.state_dict, t.spec, {space: torch.tensor([0, 0])})
    with pytest.raises(PruneError, match="sparsity"):
        select_neurons_to_keep({}, t.spec, 1.0)
    gn = traced("resnet_groupnorm")
    blocked = [s.name for s in gn.spec.permutable_spaces if s.permutation_blocks > 1]
    with pytest.raises(PruneError, match="GroupNorm groups"):
        prune_state_dict(gn.state_dict, gn.spec, {blocked[0]: torch.tensor([0])})


def test_group_norm_penalty_is_differentiable(traced):
    t = traced("small_cnn")
    state = {k: v.clone().requires_grad_(True) for k, v in t.state_dict.items()}
    penalty = sum(v.sum() for v in group_norms(state, t.spec, 2).values())
    penalty.backward()
    assert all(torch.isfinite(v.grad).all() for v in state.values() if v.grad is not None)


def test_pruned_checkpoint_loads_again(traced, tmp_path):
    t = traced("resnet_bn", dtype=torch.float32)
    keep = _random_keep(t.spec, torch.Generator().manual_seed(3), 0.25)
    small = shrink_model(t.model, t.spec, keep)
    path = tmp_path / "pruned.safetensors"
    save_state_dict(small.state_dict(), path, metadata=pruned_metadata(pruned_sizes(t.spec, keep)))
    loaded = load_pruned(path, t.model, t.spec)
    with torch.no_grad():
        assert torch.equal(loaded(t.x), small.eval()(t.x))
    # without its sizes the same file is a clear shape error
    plain = tmp_path / "plain.safetensors"
    save_state_dict(small.state_dict(), plain)
    with pytest.raises(PruneError, match="has shape .* saved without its sizes"):
        load_pruned(plain, t.model, t.spec)
