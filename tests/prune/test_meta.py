"""Metanetwork-guided structured pruning (Meta-Pruning via Graph Metanetworks)."""

from __future__ import annotations

import pytest
import torch

from weightspace import trace
from weightspace.classify import evaluate, train_classifier
from weightspace.data import load_digits_split
from weightspace.io import save_state_dict
from weightspace.models.cnn import SmallCNN
from weightspace.prune import PruneError, count_macs
from weightspace.prune.meta import (
    MetaPruner,
    group_lasso,
    load_meta_pruner,
    meta_prune,
    meta_train,
    output_logits,
    save_meta_pruner,
    training_notes,
)

CHANNELS = (8, 8)
NUM_NETWORKS = 5


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


@pytest.fixture(scope="module")
def zoo(digits):
    """A handful of trained SmallCNNs 8-8 on digits (about a second): the
    architecture, a module of it, its spec and ``[N, P]`` parameters."""
    torch.set_num_threads(1)
    model = SmallCNN(1, CHANNELS, activation="relu")
    spec = trace(model, torch.zeros(1, 1, 8, 8))
    rows = []
    for seed in range(NUM_NETWORKS):
        torch.manual_seed(seed)
        network = SmallCNN(1, CHANNELS, activation="relu")
        train_classifier(network, digits, epochs=8, lr=1e-2, seed=seed)  # ~80% test accuracy
        rows.append(spec.flatten(network.state_dict()))
    return model, spec, torch.stack(rows)


def _small_pruner(spec, seed=0, mode="edit"):
    return MetaPruner(spec, hidden=16, num_layers=2, fourier=4, seed=seed, mode=mode)


def _leave_identity(pruner, std=0.3):
    """Random output layers, so that equivariance tests mean something."""
    head = pruner.gmn.decoder if pruner.mode == "edit" else pruner.gate
    for p in head.parameters():
        torch.nn.init.normal_(p, std=std)


@pytest.mark.parametrize("mode", ["edit", "gate"])
def test_starts_at_the_identity(zoo, mode):
    _, spec, rows = zoo
    pruner = _small_pruner(spec, mode=mode).fit_normalisation(rows)
    out = pruner(rows)
    assert out.shape == rows.shape and out.dtype == rows.dtype
    assert (out - rows).abs().max() < 1e-6
    # construction does not touch the global random state; the same seed gives the same pruner
    state = torch.random.get_rng_state()
    again = _small_pruner(spec)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(again.parameters(), _small_pruner(spec).parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["edit", "gate"])
def test_is_permutation_equivariant(zoo, mode):
    _, spec, rows = zoo
    pruner = _small_pruner(spec, mode=mode).double().eval()
    params = rows.double()
    pruner.fit_normalisation(params)
    torch.manual_seed(3)
    _leave_identity(pruner)
    out = pruner(params)
    assert not torch.allclose(out, params)
    for k in range(2):
        perm = spec.random_permutation(torch.Generator().manual_seed(10 + k))
        lhs = pruner(spec.permute_flat(params, perm))
        rhs = spec.permute_flat(out, perm)
        # float64 message passing: the error is summation-order rounding, far below 1e-5
        assert (lhs - rhs).abs().max() < 1e-5 * rhs.abs().max()


def test_functional_forward_matches_the_modules(zoo, digits):
    model, spec, rows = zoo
    x = digits.x_test[:16]
    logits = output_logits(model.eval(), spec, rows[:2], x)
    for b in range(2):
        network = SmallCNN(1, CHANNELS, activation="relu")
        network.load_state_dict(spec.unflatten(rows[b]))
        with torch.no_grad():
            assert torch.allclose(logits[b], network.eval()(x), atol=1e-5)


# (mode, sparsity weight, largest group-lasso ratio output / input): measured 0.73-0.79
# (edit) and 0.57-0.64 (gate) with a mean accuracy loss of 0.05 and 0.07
@pytest.mark.parametrize("mode, weight, ratio", [("edit", 0.1, 0.85), ("gate", 0.05, 0.7)])
def test_meta_training_makes_outputs_group_sparse(zoo, digits, mode, weight, ratio):
    model, spec, rows = zoo
    pruner = _small_pruner(spec, mode=mode)
    history = meta_train(pruner, rows, spec, model, digits, epochs=40, batch_size=3, lr=3e-3,
                         sparsity_weight=weight, seed=0)
    assert len(history) == 40 and not pruner.training
    assert history[-1]["group_lasso"] < history[0]["group_lasso"]
    with torch.no_grad():
        out = pruner(rows)
    before, after = group_lasso(spec, rows), group_lasso(spec, out)
    assert (after < ratio * before).all(), (before, after)
    accuracy = [[evaluate(model, digits.x_test, digits.y_test, spec.unflatten(r))[1]
                 for r in params] for params in (rows, out)]
    input_accuracy, output_accuracy = (sum(a) / len(a) for a in accuracy)
    assert output_accuracy > input_accuracy - 0.12, accuracy
    # deterministic per seed
    again = _small_pruner(spec)
    meta_train(again, rows, spec, model, digits, epochs=2, batch_size=3, seed=5)
    other = _small_pruner(spec)
    meta_train(other, rows, spec, model, digits, epochs=2, batch_size=3, seed=5)
    assert torch.equal(again(rows), other(rows))


def test_save_and_load_round_trip(zoo, tmp_path):
    _, spec, rows = zoo
    pruner = _small_pruner(spec, mode="gate").fit_normalisation(rows)
    _leave_identity(pruner, std=0.1)
    path = save_meta_pruner(pruner, tmp_path / "pruner.safetensors", training={"epochs": 3})
    loaded = load_meta_pruner(path)
    assert loaded.config == pruner.config and loaded.spec == spec
    assert loaded.is_normalisation_fitted and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(rows), pruner.eval()(rows))
    assert training_notes(path) == {"epochs": 3}
    # a plain checkpoint is not a pruner
    plain = save_state_dict({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(PruneError, match="not a saved meta-pruner"):
        load_meta_pruner(plain)


def test_meta_prune_reaches_the_speedup(zoo, digits):
    model, spec, rows = zoo
    pruner = _small_pruner(spec).fit_normalisation(rows)
    state = spec.unflatten(rows[0])
    small, report = meta_prune(pruner, model, spec, state, speedup=2.0, data=digits,
                               finetune_epochs=1, lr=3e-3)
    # an untrained pruner is the identity: its output network is the input network
    assert report["accuracy_metanet"] == report["accuracy_before"]
    assert report["speedup"] >= 2.0 and report["macs_after"] * 2 <= report["macs_before"]
    small_spec = trace(small, torch.zeros(1, 1, 8, 8))
    assert count_macs(small_spec) == report["macs_after"]
    assert small_spec.num_parameters < spec.num_parameters
    _, accuracy = evaluate(small, digits.x_test, digits.y_test)
    assert accuracy == report["accuracy_finetuned"]
    assert all(p.shape == q.shape for p, q in zip(model.parameters(), pruner.spec.unflatten(
        rows[0]).values(), strict=True))  # the model itself is untouched
    with pytest.raises(PruneError, match="another architecture"):
        other = trace(SmallCNN(1, (4, 4)), torch.zeros(1, 1, 8, 8))
        meta_prune(pruner, SmallCNN(1, (4, 4)), other, SmallCNN(1, (4, 4)).state_dict(), 2.0,
                   digits)


def test_group_lasso_and_its_adaptive_weighting(zoo):
    _, spec, rows = zoo
    from weightspace.prune import group_norms

    norms = group_norms(spec.unflatten(rows[0]), spec)
    plain = sum(n.sum() for n in norms.values())
    assert torch.allclose(group_lasso(spec, rows[:1])[0], plain)
    # DepGraph weighting: the weakest neuron of a space counts 2**alpha times, the strongest once
    alpha = 3.0
    expected = 0.0
    for n in norms.values():
        scaled = (n.max() - n) / (n.max() - n.min())
        expected = expected + (2 ** (alpha * scaled) * n).sum()
    weighted = group_lasso(spec, rows[:1], alpha=alpha)[0]
    assert torch.allclose(weighted, expected)
    assert plain < weighted < 2 ** alpha * plain
    params = rows[:1].clone().requires_grad_(True)
    group_lasso(spec, params, alpha=alpha).sum().backward()
    assert params.grad is not None and params.grad.abs().sum() > 0


def test_sparsity_ramp_starts_without_the_penalty(zoo, digits):
    model, spec, rows = zoo
    # λ ramps from 0 over the whole run: the first epoch's pressure is far below the full λ's,
    # so the outputs stay less sparse after the same training
    common = dict(epochs=6, batch_size=5, lr=3e-3, sparsity_weight=0.2, seed=0)
    ramped, constant = _small_pruner(spec), _small_pruner(spec)
    meta_train(ramped, rows, spec, model, digits, sparsity_ramp=1.0, **common)
    meta_train(constant, rows, spec, model, digits, **common)
    with torch.no_grad():
        assert group_lasso(spec, ramped(rows)).mean() > group_lasso(spec, constant(rows)).mean()
    with pytest.raises(PruneError, match="sparsity_ramp"):
        meta_train(_small_pruner(spec), rows, spec, model, digits, epochs=1, sparsity_ramp=1.5)
