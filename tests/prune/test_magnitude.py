"""Unstructured magnitude pruning and masks kept through training
(weightspace.prune.magnitude)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import weightspace
from tests.architectures import ARCHITECTURES
from tests.prune.common import mask_total, pruned_count, state_of
from weightspace import StateDictMismatchError
from weightspace.classify import evaluate, train_classifier
from weightspace.data import load_digits_split
from weightspace.models import build_model
from weightspace.prune.magnitude import (
    MaskHandle,
    apply_masks,
    attach_masks,
    magnitude_masks,
    prunable_parameters,
    sparsity,
)

ARCH_IDS = [a.name for a in ARCHITECTURES]



def _mlp(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"in_features": 64, "hidden": (32, 32), **kwargs}
    model = build_model("mlp", **kwargs)
    return model, weightspace.trace(model, (1, 64))





# ------------------------------------------------------------ which parameters
@pytest.mark.parametrize("name", ARCH_IDS)
def test_prunable_parameters_are_exactly_the_edge_weights(traced, name):
    t = traced(name)
    names = prunable_parameters(t.spec)
    assert names == tuple(p.name for p in t.spec.parameters
                          if p.role in ("weight", "depthwise_weight"))
    assert names, "every test architecture has weights"
    masks = magnitude_masks(t.state_dict, t.spec, 0.5)
    assert tuple(masks) == names
    for key, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == t.state_dict[key].shape


def test_depthwise_weights_are_prunable_and_norm_parameters_are_not(traced):
    spec = traced("depthwise_separable").spec
    names = set(prunable_parameters(spec))
    assert "dw.weight" in names and spec.parameter("dw.weight").role == "depthwise_weight"
    assert not names & {"stem.bias", "bn0.weight", "bn0.bias", "bn0.running_mean",
                        "bn0.running_var", "bn0.num_batches_tracked"}


def test_biases_and_norm_parameters_are_never_pruned():
    model, spec = _mlp(norm="batch")
    sd = state_of(model)
    for key in sd:  # tiny biases/norm parameters would be pruned first if they were candidates
        if spec.parameter(key).role != "weight" and sd[key].is_floating_point():
            sd[key] = torch.full_like(sd[key], 1e-12)
    masks = magnitude_masks(sd, spec, 0.9)
    assert set(masks) == {k for k in sd if spec.parameter(k).role == "weight"}
    pruned = apply_masks(sd, masks)
    for key in sd:
        if key not in masks:
            assert torch.equal(pruned[key], sd[key]), key


# ------------------------------------------------------------ exact counts
@pytest.mark.parametrize("s", [0.0, 0.1, 0.37, 0.5, 0.9, 0.999])
def test_global_scope_prunes_exactly_round_s_n_of_the_smallest(s):
    model, spec = _mlp()
    sd = state_of(model)
    masks = magnitude_masks(sd, spec, s)
    n = mask_total(masks)
    assert pruned_count(masks) == round(s * n)
    kept = torch.cat([sd[k][m].abs() for k, m in masks.items()])
    dropped = torch.cat([sd[k][~m].abs() for k, m in masks.items()])
    if len(dropped) and len(kept):
        assert dropped.max() <= kept.min()


@pytest.mark.parametrize("s", [0.0, 0.25, 0.6, 0.95])
def test_layer_scope_prunes_every_parameter_to_the_same_sparsity(s):
    model, spec = _mlp()
    sd = state_of(model)
    masks = magnitude_masks(sd, spec, s, scope="layer")
    for key, mask in masks.items():
        assert int((~mask).sum()) == round(s * mask.numel()), key
        if 0 < s:
            assert sd[key][~mask].abs().max() <= sd[key][mask].abs().min(), key


def test_global_and_layer_scopes_differ_when_layers_have_different_scales():
    model, spec = _mlp()
    sd = state_of(model)
    w = sd["layers.0.weight"]
    sd["layers.0.weight"] = w.sign() * (w.abs() + 1)  # larger than every other weight
    global_masks = magnitude_masks(sd, spec, 0.25)  # fewer than the other layers hold
    layer_masks = magnitude_masks(sd, spec, 0.25, scope="layer")
    assert bool(global_masks["layers.0.weight"].all())
    assert int((~layer_masks["layers.0.weight"]).sum()) == round(0.25 * 64 * 32)
    assert pruned_count(global_masks) == pruned_count(layer_masks) == round(0.25 * mask_total(global_masks))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_ties_give_exact_counts_and_prune_in_canonical_order(scope):
    model, spec = _mlp()
    sd = {k: torch.ones_like(v) for k, v in state_of(model).items()}  # every magnitude tied
    masks = magnitude_masks(sd, spec, 0.3, scope=scope)
    # the first round(0.3 * n) weights in spec/row-major order go, globally or per layer
    groups = ([torch.cat([m.reshape(-1) for m in masks.values()])] if scope == "global"
              else [m.reshape(-1) for m in masks.values()])
    for flat in groups:
        k = round(0.3 * flat.numel())
        assert not flat[:k].any() and flat[k:].all()
    again = magnitude_masks(sd, spec, 0.3, scope=scope)
    assert all(torch.equal(masks[k], again[k]) for k in masks)


def test_partial_ties_with_few_distinct_magnitudes_are_exact():
    model, spec = _mlp()
    g = torch.Generator().manual_seed(3)
    sd = {k: torch.randint(-2, 3, v.shape, generator=g).float() for k, v in state_of(model).items()}
    for s in (0.2, 0.45, 0.8):
        masks = magnitude_masks(sd, spec, s)
        assert pruned_count(masks) == round(s * mask_total(masks))


# ------------------------------------------------------------ existing masks
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_existing_masks_stay_pruned_and_count_toward_the_target(scope):
    model, spec = _mlp()
    sd = state_of(model)
    first = magnitude_masks(sd, spec, 0.2, scope=scope)
    # rewound (dense) values at pruned positions must not matter: make them huge
    rewound = {k: torch.where(first[k], v, torch.full_like(v, 1e6)) if k in first else v
               for k, v in sd.items()}
    second = magnitude_masks(rewound, spec, 0.36, scope=scope, existing=first)
    for key in first:
        assert not bool((second[key] & ~first[key]).any()), "a pruned weight came back"
    if scope == "global":
        assert pruned_count(second) == round(0.36 * mask_total(second))
    else:
        for key, mask in second.items():
            assert int((~mask).sum()) == round(0.36 * mask.numel()), key
    # on weights that already are masked, the nested result is the one-shot result
    assert all(torch.equal(second[k], magnitude_masks(sd, spec, 0.36, scope=scope)[k])
               for k in second)


def test_existing_masks_may_cover_only_some_parameters():
    model, spec = _mlp()
    sd = state_of(model)
    partial = {"layers.3.weight": torch.zeros(32, 32, dtype=torch.bool)}  # fully pruned
    masks = magnitude_masks(sd, spec, 0.5, existing=partial)
    assert not masks["layers.3.weight"].any()
    assert pruned_count(masks) == round(0.5 * mask_total(masks))


def test_existing_masks_that_already_prune_more_are_an_error():
    model, spec = _mlp()
    sd = state_of(model)
    heavy = magnitude_masks(sd, spec, 0.6)
    with pytest.raises(ValueError, match="already prune"):
        magnitude_masks(sd, spec, 0.5, existing=heavy)


# ------------------------------------------------------------ errors
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan])
def test_sparsity_out_of_range_is_a_value_error(bad):
    model, spec = _mlp()
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_masks(state_of(model), spec, bad)


def test_bad_arguments_are_clear_errors():
    model, spec = _mlp()
    sd = state_of(model)
    with pytest.raises(TypeError, match="sparsity"):
        magnitude_masks(sd, spec, True)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(sd, spec, 0.5, scope="local")
    missing = {k: v for k, v in sd.items() if k != "layers.0.bias"}
    with pytest.raises(StateDictMismatchError, match="layers.0.bias"):
        magnitude_masks(missing, spec, 0.5)
    with pytest.raises(ValueError, match="layers.0.bias"):  # not prunable
        magnitude_masks(sd, spec, 0.5, existing={"layers.0.bias": torch.ones(32, dtype=bool)})
    with pytest.raises(ValueError, match="shape"):
        magnitude_masks(sd, spec, 0.5, existing={"layers.0.weight": torch.ones(3, dtype=bool)})
    with pytest.raises(ValueError, match="boolean"):
        magnitude_masks(sd, spec, 0.5, existing={"layers.0.weight": torch.ones(32, 64)})
    nan = dict(sd, **{"layers.3.weight": torch.full((32, 32), math.nan)})
    with pytest.raises(ValueError, match="layers.3.weight"):
        magnitude_masks(nan, spec, 0.5)
    with pytest.raises(ValueError, match="nope"):
        apply_masks(sd, {"nope": torch.ones(2, dtype=torch.bool)})


# ------------------------------------------------------------ apply / report
def test_apply_masks_returns_a_new_state_dict_with_masked_entries_zero():
    model, spec = _mlp()
    sd = state_of(model)
    sd["layers.0.weight"][0, 0] = math.inf
    original = {k: v.clone() for k, v in sd.items()}
    masks = {"layers.0.weight": torch.ones(32, 64, dtype=torch.bool)}
    masks["layers.0.weight"][0] = False
    out = apply_masks(sd, masks)
    assert list(out) == list(sd)
    assert torch.equal(out["layers.0.weight"][0], torch.zeros(64))  # no 0 * inf = NaN
    assert torch.equal(out["layers.0.weight"][1:], sd["layers.0.weight"][1:])
    assert all(torch.equal(sd[k], original[k]) for k in sd), "input modified"
    assert all(out[k].data_ptr() != sd[k].data_ptr() for k in sd)


def test_sparsity_report_counts_zeros():
    model, spec = _mlp(norm="batch")
    sd = state_of(model)
    masks = magnitude_masks(sd, spec, 0.5, scope="layer")
    report = sparsity(apply_masks(sd, masks), spec)
    weights = prunable_parameters(spec)
    assert set(report["per_parameter"]) == set(weights)
    for key in weights:
        assert report["per_parameter"][key] == pytest.approx(0.5, abs=1 / sd[key].numel())
    assert report["prunable"] == mask_total(masks)
    assert report["prunable_zero"] == pruned_count(masks)
    assert report["global"] == report["prunable_zero"] / report["prunable"]
    pruned = apply_masks(sd, masks)
    names = [n for n, _ in model.named_parameters()]  # running statistics are not counted
    assert report["total"] == sum(pruned[n].numel() for n in names)
    assert report["nonzero"] == sum(int(torch.count_nonzero(pruned[n])) for n in names)


# ------------------------------------------------------------ one-shot quality
def test_one_shot_magnitude_pruning_keeps_a_trained_digits_mlp_accurate():
    """Han et al. 2015: half of the weights of smallest magnitude carry little;
    a random half is most of the network. Dense ~94 %, magnitude at 50 % within
    ~1-2 points (3 seeds), a random mask at 50 % below ~50 %."""
    data = load_digits_split(flat=True)
    model, spec = _mlp(seed=0, hidden=(64, 64))
    train_classifier(model, data, epochs=8, seed=0)
    sd = state_of(model)
    _, dense = evaluate(model, data.x_test, data.y_test)
    masks = magnitude_masks(sd, spec, 0.5)
    _, pruned = evaluate(model, data.x_test, data.y_test, apply_masks(sd, masks))
    g = torch.Generator().manual_seed(0)
    random = {k: torch.rand(m.shape, generator=g) >= 0.5 for k, m in masks.items()}
    _, randomly_pruned = evaluate(model, data.x_test, data.y_test, apply_masks(sd, random))
    assert dense > 0.9
    assert pruned >= dense - 0.04
    assert randomly_pruned < dense - 0.25


# ------------------------------------------------------------ masks during training
def _digits_subset(n=256):
    data = load_digits_split(flat=True)
    return type(data)(data.x_train[:n], data.y_train[:n], data.x_test, data.y_test)


def test_masks_survive_adam_with_weight_decay_and_keys_do_not_change():
    model, spec = _mlp()
    keys, names = list(model.state_dict()), [n for n, _ in model.named_parameters()]
    masks = magnitude_masks(state_of(model), spec, 0.7)
    before = state_of(model)
    handle = attach_masks(model, masks)
    assert isinstance(handle, MaskHandle) and handle.attached
    for key, mask in masks.items():  # zeroed at once
        assert not model.get_parameter(key).detach()[~mask].any()
    train_classifier(model, _digits_subset(), epochs=3, lr=1e-2, weight_decay=1e-2)
    after = model.state_dict()
    assert list(after) == keys and [n for n, _ in model.named_parameters()] == names
    for key, mask in masks.items():
        assert torch.equal(after[key][~mask], torch.zeros(int((~mask).sum()))), key
        assert not torch.equal(after[key][mask], before[key][mask]), "kept weights trained"
    assert not torch.equal(after["layers.0.bias"], before["layers.0.bias"])
    handle.remove()


def test_masks_hold_against_an_optimiser_with_momentum_from_dense_training():
    """Momentum from before the masks would move pruned weights; the forward
    and state-dict hooks zero them again before anyone sees them."""
    model, spec = _mlp()
    data = _digits_subset(128)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

    def step():
        loss = nn.functional.cross_entropy(model(data.x_train), data.y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    masks = magnitude_masks(state_of(model), spec, 0.5)
    with attach_masks(model, masks) as handle:
        seen = {}

        def record(module, args, output):
            seen["w"] = module.weight.detach().clone()

        model.layers[0].register_forward_hook(record)
        for _ in range(3):
            step()
        assert not seen["w"][~masks["layers.0.weight"]].any(), "forward saw a pruned weight"
        state = model.state_dict()
        for key, mask in masks.items():
            assert not state[key][~mask].any(), key
    assert not handle.attached


def test_gradient_accumulation_over_two_forwards_works():
    model, spec = _mlp()
    data = _digits_subset(64)
    masks = magnitude_masks(state_of(model), spec, 0.5)
    attach_masks(model, masks)
    loss = (nn.functional.cross_entropy(model(data.x_train[:32]), data.y_train[:32])
            + nn.functional.cross_entropy(model(data.x_train[32:]), data.y_train[32:]))
    loss.backward()  # no "modified by an inplace operation" error
    for key, mask in masks.items():
        grad = model.get_parameter(key).grad
        assert not grad[~mask].any() and grad[mask].any(), key


def test_remove_detaches_every_hook():
    model, spec = _mlp()
    masks = magnitude_masks(state_of(model), spec, 0.5)
    hooks = lambda: sum(len(m._forward_pre_hooks) + len(m._state_dict_pre_hooks)  # noqa: E731
                        for m in model.modules()) + sum(
        len(p._backward_hooks or {}) for p in model.parameters())
    assert hooks() == 0
    handle = attach_masks(model, masks)
    assert hooks() == 3 * 2 + 3  # forward + state-dict hook per module, grad hook per weight
    handle.remove()
    handle.remove()  # harmless twice
    assert hooks() == 0 and not handle.attached
    train_classifier(model, _digits_subset(), epochs=1)
    assert model.state_dict()["layers.0.weight"][~masks["layers.0.weight"]].ne(0).any(), \
        "after remove() the pruned weights train again"


def test_attach_masks_errors_name_the_parameter():
    model, spec = _mlp(norm="batch")
    with pytest.raises(ValueError, match="layers.1.running_mean"):
        attach_masks(model, {"layers.1.running_mean": torch.ones(32, dtype=torch.bool)})
    with pytest.raises(ValueError, match="layers.99.weight"):
        attach_masks(model, {"layers.99.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        attach_masks(model, {"layers.0.weight": torch.ones(2, dtype=torch.bool)})
