"""Training and evaluating the small classifiers used by alignment, merging
and pruning."""

from __future__ import annotations

import torch

from weightspace.classify import evaluate, load_split, train_classifier
from weightspace.models import build_model


def test_training_learns_digits_and_is_seeded():
    data = load_split("digits", (1, 64))
    assert data.x_train.shape[1:] == (64,)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = train_classifier(build_model("mlp", hidden=[32]), data, epochs=10, seed=1)
        results.append(model.state_dict())
        loss, acc = evaluate(model, data.x_test, data.y_test)
        assert acc > 0.9 and loss < 0.4
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_evaluate_with_another_state_dict_and_mode_restored():
    data = load_split("digits", (1, 1, 8, 8))
    assert data.x_train.shape[1:] == (1, 8, 8)
    torch.manual_seed(0)
    model = build_model("cnn").train()
    other = build_model("cnn").state_dict()
    loss_other, acc_other = evaluate(model, data.x_test, data.y_test, other)
    reference = build_model("cnn")
    reference.load_state_dict(other)
    assert (loss_other, acc_other) == evaluate(reference, data.x_test, data.y_test)
    assert model.training
