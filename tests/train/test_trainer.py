"""The training loop on tiny zoos: results and output files, determinism,
a learning signal, regression, resume, early stopping, the editing task,
augmentation / mixup, and the errors of bad set-ups."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from tests.train.conftest import SIREN_DEF, TINY_MODEL, siren_row, write_zoo
from weightspace.errors import WeightspaceError
from weightspace.train import (
    Trainer,
    TrainResult,
    edit_targets,
    load_config,
    make_augmentation,
    refit_mse_floor,
    render,
    split_rows,
    train_metanetwork,
)
from weightspace.zoo import Zoo

OUTPUTS = ("config.yaml", "log.csv", "checkpoint.pt", "best.pt", "metrics.json")


def read_log(out: str | Path) -> list[dict[str, str]]:
    with open(Path(out) / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def model_weights(out: str | Path, name: str = "checkpoint.pt") -> dict[str, torch.Tensor]:
    return torch.load(Path(out) / name, weights_only=True)["model"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# ------------------------------------------------------------ classify
@pytest.mark.parametrize("model", ["gmn", "statnn"])
def test_classify_result_and_files(tiny_zoo, make_config, model):
    config = make_config(tiny_zoo, model=model, epochs=2)
    result = train_metanetwork(config)

    assert isinstance(result, TrainResult)
    assert result.config == config
    assert result.num_rows == {"train": 32, "val": 4, "test": 4}
    assert result.num_parameters > 0
    assert result.best_epoch in (1, 2)
    assert len(result.history) == 2
    assert [row["epoch"] for row in result.history] == [1, 2]
    for row in result.history:
        assert math.isfinite(row["train_loss"]) and row["lr"] >= 0
        assert {"val_loss", "val_accuracy"} <= row.keys()
    for scores in (result.val, result.test):
        assert set(scores) == {"loss", "accuracy"}
        assert 0.0 <= scores["accuracy"] <= 1.0 and math.isfinite(scores["loss"])
    # 32 training rows / batch 8: 4 steps of 8 graphs per epoch
    assert result.graphs_per_second > 0 and result.train_seconds > 0
    assert result.wall_seconds >= result.train_seconds

    out = Path(config.out)
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert load_config(out / "config.yaml") == config

    log = read_log(out)
    assert len(log) == 2
    assert [int(row["epoch"]) for row in log] == [1, 2]
    assert float(log[1]["val_accuracy"]) == pytest.approx(result.history[1]["val_accuracy"])

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["task"] == "classify" and metrics["target"] == "label"
    assert metrics["test"] == pytest.approx(result.test)
    assert metrics["val"] == pytest.approx(result.val)
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] == result.best_epoch
    assert metrics["num_rows"] == {"train": 32, "val": 4, "test": 4}
    assert metrics["config"]["model_args"] == TINY_MODEL

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    assert checkpoint["train_graphs"] == 64
    assert {"model", "optimizer", "scheduler", "best_score", "best_epoch", "config"} <= checkpoint.keys()
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch
    assert best["model"].keys() == checkpoint["model"].keys()


def test_test_scores_are_those_of_the_best_weights(tiny_zoo, make_config):
    config = make_config(tiny_zoo, epochs=2)
    result = train_metanetwork(config)
    trainer = Trainer(config.replace(out=config.out + "-eval"))
    try:
        trainer.model.load_state_dict(model_weights(config.out, "best.pt"))
        assert trainer.evaluate(trainer.test_set) == pytest.approx(result.test)
        assert trainer.evaluate(trainer.val_set) == pytest.approx(result.val)
    finally:
        trainer.zoo.close()


@pytest.mark.parametrize("model", ["gmn", "statnn"])
def test_same_seed_same_scores(tiny_zoo, make_config, model):
    first = train_metanetwork(make_config(tiny_zoo, model=model, epochs=2, seed=3))
    second = train_metanetwork(make_config(tiny_zoo, model=model, epochs=2, seed=3))
    assert first.test == second.test
    assert first.val == second.val
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    assert max_difference(model_weights(first.config.out), model_weights(second.config.out)) == 0.0


def test_other_seed_other_model(tiny_zoo, make_config):
    first = train_metanetwork(make_config(tiny_zoo, seed=0))
    second = train_metanetwork(make_config(tiny_zoo, seed=1))
    assert max_difference(model_weights(first.config.out), model_weights(second.config.out)) > 0


def test_learns_an_easy_label(scale_zoo, make_config):
    """label = scale class of the weights (x0.1 or x1.0): StatNN separates it."""
    result = train_metanetwork(make_config(scale_zoo, epochs=3, lr=1e-2, batch_size=8))
    assert result.num_rows["val"] >= 10
    assert max(row["val_accuracy"] for row in result.history) >= 0.9
    assert result.val["accuracy"] >= 0.9
    assert result.test["accuracy"] >= 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


# ------------------------------------------------------------- regress
def test_regress_float_column(tiny_zoo, make_config):
    result = train_metanetwork(make_config(tiny_zoo, task="regress", target="test_accuracy", epochs=2))
    for scores in (result.val, result.test):
        assert set(scores) == {"loss", "mse", "kendall_tau", "r2"}
        assert math.isfinite(scores["mse"]) and scores["mse"] >= 0
        assert -1.0 <= scores["kendall_tau"] <= 1.0
        assert math.isfinite(scores["r2"])
    assert {"val_kendall_tau", "val_r2", "val_mse"} <= result.history[0].keys()
    metrics = json.loads((Path(result.config.out) / "metrics.json").read_text())
    assert metrics["task"] == "regress" and metrics["target"] == "test_accuracy"
    assert metrics["test"]["kendall_tau"] == pytest.approx(result.test["kendall_tau"])


def test_regress_predictions_are_in_target_units(tiny_zoo, make_config):
    """The task standardises targets for the loss and reports unstandardised
    predictions: the mse score is on the column's own scale."""
    config = make_config(tiny_zoo, task="regress", target="test_accuracy")
    trainer = Trainer(config)
    try:
        zoo = trainer.zoo
        y = torch.from_numpy(zoo.column("test_accuracy", trainer.parts["train"]).astype(np.float64))
        assert trainer.task.mean == pytest.approx(float(y.mean()))
        assert trainer.task.std == pytest.approx(float(y.std()))
        batch = trainer.test_set.batch(np.arange(len(trainer.test_set)))
        with torch.no_grad():
            _, pred = trainer.task.loss(trainer.model, batch)
        target = batch.y.view(pred.shape).double()
        scores = trainer.evaluate(trainer.test_set)
        assert scores["mse"] == pytest.approx(float(((pred.double() - target) ** 2).mean()), rel=1e-5)
    finally:
        zoo.close()


# -------------------------------------------------------------- resume
def interrupt_after_epoch(epoch: int):
    """Patch the trainer so the run dies (like a killed job) right after
    the given epoch has written its checkpoint."""
    write_log = Trainer._write_log

    def dying(self):
        write_log(self)
        if self.epoch == epoch:
            raise KeyboardInterrupt

    return mock.patch.object(Trainer, "_write_log", dying)


def test_resume_after_interruption_is_exact(tiny_zoo, make_config):
    whole = train_metanetwork(make_config(tiny_zoo, epochs=2))

    config = make_config(tiny_zoo, epochs=2)
    with interrupt_after_epoch(1), pytest.raises(KeyboardInterrupt):
        train_metanetwork(config)
    assert len(read_log(config.out)) == 1
    assert not (Path(config.out) / "metrics.json").exists()

    resumed = train_metanetwork(config.replace(resume=True))
    assert len(resumed.history) == 2
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert max_difference(model_weights(whole.config.out), model_weights(config.out)) <= 1e-6
    assert resumed.test == pytest.approx(whole.test, abs=1e-6)
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in whole.history])
    assert len(read_log(config.out)) == 2
    assert torch.load(Path(config.out) / "checkpoint.pt", weights_only=True)["train_graphs"] == 64


def test_resume_continues_a_finished_run(tiny_zoo, make_config):
    """epochs=1, then resume with epochs=2: one more epoch, history of two.
    (The weights are not those of a 2-epoch run: the cosine schedule of the
    first run ended at epoch 1.)"""
    config = make_config(tiny_zoo, epochs=1)
    train_metanetwork(config)
    after_one = model_weights(config.out)
    resumed = train_metanetwork(config.replace(epochs=2, resume=True))
    assert len(resumed.history) == 2
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert len(read_log(config.out)) == 2
    assert max_difference(after_one, model_weights(config.out)) > 0
    metrics = json.loads((Path(config.out) / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2


def test_resume_of_a_complete_run_trains_nothing(tiny_zoo, make_config):
    config = make_config(tiny_zoo, epochs=1)
    first = train_metanetwork(config)
    again = train_metanetwork(config.replace(resume=True))
    assert len(again.history) == 1
    assert max_difference(model_weights(config.out), model_weights(first.config.out)) == 0.0
    assert again.test == first.test


def test_without_resume_starts_over(tiny_zoo, make_config):
    config = make_config(tiny_zoo, epochs=1)
    train_metanetwork(config)
    again = train_metanetwork(config)
    assert len(again.history) == 1 and len(read_log(config.out)) == 1


def test_resume_with_another_model_is_refused(tiny_zoo, make_config):
    config = make_config(tiny_zoo, model="statnn")
    train_metanetwork(config)
    with pytest.raises(ValueError, match="statnn"):
        train_metanetwork(config.replace(model="gmn", resume=True))


# Augmentation draws depend only on (seed, rank, epoch), so a resumed run with
# augmentation equals an uninterrupted one.
def test_resume_with_augmentation_is_exact(tiny_zoo, make_config):
    augment = {"noise": {"std": 0.01}}
    whole = train_metanetwork(make_config(tiny_zoo, epochs=2, augment=augment))
    config = make_config(tiny_zoo, epochs=2, augment=augment)
    with interrupt_after_epoch(1), pytest.raises(KeyboardInterrupt):
        train_metanetwork(config)
    train_metanetwork(config.replace(resume=True))
    assert max_difference(model_weights(whole.config.out), model_weights(config.out)) <= 1e-6


# ------------------------------------------------------ early stopping
def test_early_stopping(tiny_zoo, make_config):
    # a vanishing learning rate: the validation score never improves
    result = train_metanetwork(make_config(tiny_zoo, epochs=6, lr=1e-12, patience=1))
    assert len(result.history) == 2
    assert result.best_epoch == 1
    assert len(read_log(result.config.out)) == 2
    assert torch.load(Path(result.config.out) / "best.pt", weights_only=True)["epoch"] == 1
    assert json.loads((Path(result.config.out) / "metrics.json").read_text())["epochs_run"] == 2


def test_no_early_stopping_without_patience(tiny_zoo, make_config):
    result = train_metanetwork(make_config(tiny_zoo, epochs=3, lr=1e-12, patience=0))
    assert len(result.history) == 3 and result.best_epoch == 1


# ------------------------------------------------------------ failures
def test_flat_model_on_two_groups(mixed_zoo, make_config):
    with pytest.raises(ValueError, match="graph metanetwork"):
        Trainer(make_config(mixed_zoo, model="statnn", split_fractions={"train": 0.5, "val": 0.25,
                                                                         "test": 0.25}))


def test_graph_model_on_two_groups(mixed_zoo, make_config):
    result = train_metanetwork(make_config(mixed_zoo, model="gmn", split_fractions={
        "train": 0.5, "val": 0.25, "test": 0.25}))
    assert sum(result.num_rows.values()) == 24
    assert math.isfinite(result.history[0]["train_loss"])


def test_unknown_model(tiny_zoo, make_config):
    with pytest.raises(ValueError, match="unknown metanetwork"):
        train_metanetwork(make_config(tiny_zoo, model="resnet"))


def test_bad_model_argument(tiny_zoo, make_config):
    with pytest.raises(ValueError, match="hiddden"):
        train_metanetwork(make_config(tiny_zoo, model_args={"hiddden": 8}))


def test_unknown_augmentation(tiny_zoo, make_config):
    with pytest.raises(ValueError, match="rotate"):
        train_metanetwork(make_config(tiny_zoo, augment={"rotate": {}}))


def test_missing_target_column(tiny_zoo, make_config):
    with pytest.raises(ValueError, match="accuracy_of_nothing"):
        train_metanetwork(make_config(tiny_zoo, task="regress", target="accuracy_of_nothing"))


# --------------------------------------------------------------- split
def test_split_by_run_is_a_partition(tiny_zoo):
    zoo = Zoo(tiny_zoo)
    try:
        parts = split_rows(zoo, load_config(zoo=str(tiny_zoo)))
        rows = np.concatenate([parts["train"], parts["val"], parts["test"]])
        assert sorted(rows.tolist()) == list(range(40))
        assert [len(parts[k]) for k in ("train", "val", "test")] == [32, 4, 4]
        other = split_rows(zoo, load_config(zoo=str(tiny_zoo), seed=1))
        assert any(not np.array_equal(parts[k], other[k]) for k in parts)
        capped = split_rows(zoo, load_config(zoo=str(tiny_zoo), max_train_rows=5))
        assert np.array_equal(capped["train"], parts["train"][:5])
    finally:
        zoo.close()


def test_split_by_column_divides_test_rows_into_val_and_test(edit_zoo):
    zoo = Zoo(edit_zoo)
    try:
        parts = split_rows(zoo, load_config(zoo=str(edit_zoo), split="split"))
        split = zoo.column("split", np.arange(zoo.num_rows)).astype(str)
        assert set(split[parts["train"]]) == {"train"} and len(parts["train"]) == 12
        assert set(split[parts["val"]]) == {"test"} and set(split[parts["test"]]) == {"test"}
        assert len(parts["val"]) + len(parts["test"]) == 8
        assert not set(parts["val"]) & set(parts["test"])
        assert len(parts["val"]) > 0 and len(parts["test"]) > 0
        with pytest.raises(ValueError, match="no such column"):
            split_rows(zoo, load_config(zoo=str(edit_zoo), split="fold"))
    finally:
        zoo.close()


def test_empty_split_is_an_error(tiny_zoo):
    zoo = Zoo(tiny_zoo)
    try:
        with pytest.raises(ValueError, match="'val' split"):
            split_rows(zoo, load_config(zoo=str(tiny_zoo), split_fractions={"train": 1.0, "val": 0.0,
                                                                             "test": 0.0}))
    finally:
        zoo.close()


# ---------------------------------------------------------------- edit
def test_edit_task_trains(edit_zoo, make_config):
    result = train_metanetwork(make_config(edit_zoo, task="edit", model="gmn", split="split", epochs=1,
                                           batch_size=4))
    assert math.isfinite(result.history[0]["train_loss"])
    for scores in (result.val, result.test):
        assert set(scores) == {"loss", "mse", "neg_mse"}
        assert math.isfinite(scores["mse"]) and scores["mse"] > 0
        assert scores["neg_mse"] == -scores["mse"]
    metrics = json.loads((Path(result.config.out) / "metrics.json").read_text())
    assert metrics["task"] == "edit" and metrics["test"]["mse"] == pytest.approx(result.test["mse"])


def test_edit_task_untrained_model_is_the_identity(edit_zoo, make_config):
    """The equivariant head starts at zero (output INR = input INR), so the
    untrained score is the MSE between the original INRs' images and the
    edited images."""
    trainer = Trainer(make_config(edit_zoo, task="edit", model="gmn", split="split"))
    try:
        zoo = trainer.zoo
        rows = trainer.parts["test"]
        params = zoo.params(rows)
        network = SIREN_DEF.build()
        targets = edit_targets(op="dilate", size=3)
        with torch.no_grad():
            images = render(network, zoo.spec("siren"), params, targets.coords)
        splits = zoo.column("split", rows).astype(str)
        index = zoo.column("image_index", rows)
        edited = targets.lookup(splits, index)
        assert images.shape == edited.shape == (len(rows), 64, 1)
        expected = float(((images.double() - edited.double()) ** 2).mean())

        scores = trainer.evaluate(trainer.test_set)
        assert scores["mse"] == pytest.approx(expected, rel=1e-4)
        # and it is not the score against the unedited images
        original = targets.lookup(splits, index, edited=False)
        assert not torch.allclose(original, edited)
    finally:
        zoo.close()


def test_refit_floor_is_the_recipes_own_fit_error_and_far_below_the_edit():
    """With the identity edit, refitting is fitting: the floor is the mean MSE
    of the recipe's own INRs of those images (same seeds, same steps). A
    dilated image is refitted about as closely, while it is far from the
    original image."""
    from weightspace.zoo.recipes.base import Job, load_recipe

    recipe = load_recipe("digits-inr")
    job = Job(recipe.name, 0, "check", {"images": [["test", i] for i in range(3)], "views": [0],
                                        "steps": recipe.steps, "lr": recipe.lr, "seed": recipe.seed})
    rows = recipe.run(job, recipe.load_data(None))
    own = float(np.mean([r.metadata["mse"] for r in rows]))
    assert refit_mse_floor("identity", test_images=3) == pytest.approx(own, rel=1e-6)
    floor = refit_mse_floor("dilate", 3, test_images=3)
    targets = edit_targets(op="dilate", size=3)
    edit_distance = float(((targets.edited["test"][:3] - targets.original["test"][:3]) ** 2).mean())
    assert 0 < floor < 0.05 < 0.5 < edit_distance
    with pytest.raises(ValueError, match="INR recipe.*'digits-cnn'"):
        refit_mse_floor(recipe="digits-cnn")


def test_edit_targets_match_digits():
    from weightspace.data import load_digits_split

    split = load_digits_split(seed=0)
    targets = edit_targets(op="identity")
    assert targets.original["train"].shape == (len(split.x_train), 64, 1)
    assert targets.original["test"].shape == (len(split.x_test), 64, 1)
    # identity edit: the edited images are the originals; pixels row-major in [-1, 1]
    assert torch.allclose(targets.edited["test"], targets.original["test"], atol=1e-6)
    image = split.x_test[5, 0]
    lo = float(min(split.x_train.min(), split.x_test.min()))
    hi = float(max(split.x_train.max(), split.x_test.max()))
    assert torch.allclose(targets.original["test"][5, :, 0], (2 * (image - lo) / (hi - lo) - 1).reshape(-1),
                          atol=1e-6)
    dilated = edit_targets(op="dilate", size=3).edited["test"]
    assert bool((dilated >= targets.original["test"] - 1e-6).all())
    assert targets.coords.shape == (64, 2)


def test_edit_task_needs_its_columns(tiny_zoo, mixed_zoo, make_config, tmp_path):
    from tests.train.conftest import siren_row, write_zoo

    bare = write_zoo(tmp_path / "bare.h5", [
        type(row)(row.key, row.group, row.model, row.params,
                  {k: v for k, v in row.metadata.items() if k != "image_index"})
        for row in (siren_row(i) for i in range(10))])
    with pytest.raises(ValueError, match="image_index"):
        Trainer(make_config(bare, task="edit", model="gmn"))
    with pytest.raises(ValueError, match="one INR architecture"):
        Trainer(make_config(mixed_zoo, task="edit", model="gmn"))


# ------------------------------------------------- augment and mixup
def test_augment_and_mixup(tiny_zoo, make_config):
    config = make_config(tiny_zoo, model="gmn", epochs=1, augment={"permutation": {}},
                         mixup={"alpha": 0.2})
    result = train_metanetwork(config)
    assert math.isfinite(result.history[0]["train_loss"])
    assert 0.0 <= result.test["accuracy"] <= 1.0
    saved = load_config(Path(config.out) / "config.yaml")
    assert saved.augment == {"permutation": {}} and saved.mixup == {"alpha": 0.2}


def test_mixup_batches_carry_partners(tiny_zoo, make_config):
    trainer = Trainer(make_config(tiny_zoo, mixup={"alpha": 0.2}, augment={"sign_flip": {}}))
    try:
        batch = next(trainer._train_batches(0))
        assert batch.lam.shape == (8,) and bool(((batch.lam >= 0) & (batch.lam <= 1)).all())
        assert batch.y_partner.shape == batch.y.shape
        loss, _ = trainer.task.loss(trainer.model, batch)
        assert torch.isfinite(loss)
        # evaluation batches are never mixed
        assert getattr(trainer.val_set.batch(np.arange(2)), "lam", None) is None
    finally:
        trainer.zoo.close()


def test_make_augmentation():
    assert make_augmentation({}) is None
    assert make_augmentation({"permutation": {}, "noise": {"std": 0.1}}) is not None
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_augmentation({"blur": {}})


def test_train_batches_cover_each_row_once_per_epoch(tiny_zoo, make_config):
    trainer = Trainer(make_config(tiny_zoo, batch_size=8))
    try:
        rows = np.concatenate([b.row.numpy() for b in trainer._train_batches(0)])
        assert sorted(rows.tolist()) == sorted(trainer.parts["train"].tolist())
        again = np.concatenate([b.row.numpy() for b in trainer._train_batches(0)])
        other = np.concatenate([b.row.numpy() for b in trainer._train_batches(1)])
        assert np.array_equal(rows, again) and not np.array_equal(rows, other)
        assert trainer.steps_per_epoch == 4
    finally:
        trainer.zoo.close()


def _few_runs_zoo(path: Path, with_split: bool) -> Path:
    """digits-inr "tiny" in small: 3 runs of 8 INRs each, train and test
    images in every run (split='run' with 0.8/0.1/0.1 leaves a part empty)."""
    rows = [siren_row(i, run_id=f"run{i // 8}", image_index=i // 2,
                      split=("train" if i % 8 < 6 else "test") if with_split else "")
            for i in range(24)]
    return write_zoo(path, rows)


def test_too_few_runs_fall_back_to_the_zoo_split_and_say_so(tmp_path, caplog):
    path = _few_runs_zoo(tmp_path / "few.h5", with_split=True)
    with Zoo(path) as zoo, caplog.at_level("WARNING", logger="weightspace.train"):
        parts = split_rows(zoo, load_config(zoo=str(path)))
        split = zoo.column("split", np.arange(zoo.num_rows)).astype(str)
    assert all(len(parts[k]) for k in ("train", "val", "test"))
    assert set(split[parts["train"]]) == {"train"} and len(parts["train"]) == 18
    assert set(split[np.concatenate([parts["val"], parts["test"]])]) == {"test"}
    assert "using the zoo's own 'split' column" in caplog.text


def test_too_few_runs_without_a_zoo_split_name_the_fix(tmp_path):
    path = _few_runs_zoo(tmp_path / "few.h5", with_split=False)
    with Zoo(path) as zoo, pytest.raises(WeightspaceError) as caught:
        split_rows(zoo, load_config(zoo=str(path)))
    assert caught.value.parameter == "split"
    assert "24 usable rows in 3 runs" in str(caught.value)
    assert "split_fractions" in str(caught.value)


def test_unknown_metanetwork_is_reported_before_an_empty_split(tmp_path, make_config):
    path = _few_runs_zoo(tmp_path / "few.h5", with_split=False)
    with pytest.raises(WeightspaceError, match="unknown metanetwork 'gmnn'") as caught:
        train_metanetwork(make_config(path, model="gmnn"))
    assert caught.value.parameter == "model"


def test_train_cli_on_a_zoo_with_few_runs(tmp_path, capsys):
    """``weightspace train --zoo Z --model gmn --task edit ...`` on a zoo with
    few runs trains (once: "the 'test' split is empty"); a misspelt model is
    reported before the split."""
    from weightspace.cli import main

    path = _few_runs_zoo(tmp_path / "few.h5", with_split=True)
    common = ["--zoo", str(path), "--task", "edit", "--out", str(tmp_path / "run"),
              "--json", "epochs=1", "batch_size=8", "model_args.hidden=8",
              "model_args.num_layers=1", "device=cpu", "progress=false"]
    # The flag is refused by argparse (its choices are the registry's) ...
    with pytest.raises(SystemExit):
        main(["train", "--model", "gmnn", *common])
    assert "invalid choice: 'gmnn'" in capsys.readouterr().err
    # ... an override or a config's model: by the library, before the split.
    assert main(["train", *common, "model=gmnn"]) == 1
    assert "--model: unknown metanetwork 'gmnn'" in capsys.readouterr().err
    assert main(["train", "--model", "gmn", *common, "edit.op=dilate"]) == 0, \
        capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["num_rows"]["test"] > 0
