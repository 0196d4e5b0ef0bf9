"""Importers of the published zoo formats: each format is written by the test
in its published layout from a reference implementation of the original
architecture, imported, rebuilt from the row's model definition, and checked
to compute the same function."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pytest
import torch

from tests.zoo import fixtures
from weightspace.models.cnn_park import ParkCNN
from weightspace.zoo.errors import ZooError
from weightspace.zoo.importers import (
    IMPORT_FORMATS,
    iter_import,
    read_cnn_wild_park,
    read_inr_folder,
    read_model_zoos,
    read_small_cnn_zoo,
)
from weightspace.zoo.rows import ZooRow

ATOL = 1e-5


def rebuild(row: ZooRow) -> torch.nn.Module:
    """The row's model with the row's weights, as a zoo reader would do it."""
    model = row.model.build().eval()
    spec = row.model.trace()
    model.load_state_dict(spec.unflatten(torch.as_tensor(row.flat(spec))))
    return model


def by_key(rows: list[ZooRow]) -> dict[str, ZooRow]:
    keys = [r.key for r in rows]
    assert len(set(keys)) == len(keys), "row keys must be unique"
    return {r.key: r for r in rows}


# ============================================================ Small CNN Zoo
RUNS = [("/tmp/zoo/mnist/4401", "relu"), ("/tmp/zoo/mnist/4402", "tanh")]


@pytest.fixture
def small_cnn_zoo(tmp_path):
    return fixtures.write_small_cnn_zoo(tmp_path / "mnist", RUNS)


def test_small_cnn_zoo_rows_compute_the_tf_network(small_cnn_zoo):
    rows = list(iter_import("small-cnn-zoo", small_cnn_zoo.folder))
    assert len(rows) == len(small_cnn_zoo.rows) == 6
    x = np.random.default_rng(1).normal(size=(5, 28, 28, 1)).astype(np.float32)
    for row, written, variables in zip(rows, small_cnn_zoo.rows, small_cnn_zoo.variables,
                                       strict=True):
        assert row.key == f"{written['modeldir']}/step{written['step']}"
        assert row.group == f"mnist_{written['config.activation']}"
        assert row.model.family == "tf_cnn"
        assert row.model.input_shape == (1, 1, 28, 28)
        assert "stride" in row.model.args and "dropout" not in row.model.args
        expected = fixtures.tf_cnn_forward(x, variables, written["config.activation"])
        with torch.no_grad():
            got = rebuild(row)(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
        # metadata: every column of metrics.csv.gz, with its type, plus run_id
        for column, value in written.items():
            assert row.metadata[column] == pytest.approx(value), column
            assert type(row.metadata[column]) is type(value), column
        assert row.metadata["run_id"] == written["modeldir"]


def test_small_cnn_zoo_groups_runs_and_filters_steps(small_cnn_zoo):
    rows = list(read_small_cnn_zoo(small_cnn_zoo.folder, steps=[86]))
    assert [r.metadata["step"] for r in rows] == [86, 86]
    assert {r.group for r in rows} == {"mnist_relu", "mnist_tanh"}
    assert {r.metadata["run_id"] for r in rows} == {m for m, _ in RUNS}
    # one model definition per group
    assert len({(r.group, r.model.to_json()) for r in rows}) == 2


def test_small_cnn_zoo_params_are_flat_and_bounded(small_cnn_zoo):
    row = next(read_small_cnn_zoo(small_cnn_zoo.folder))
    assert isinstance(row.params, np.ndarray) and row.params.shape == (4970,)
    assert row.params.dtype == np.float32


def test_small_cnn_zoo_names_a_missing_file(small_cnn_zoo):
    (small_cnn_zoo.folder / "metrics.csv.gz").unlink()
    with pytest.raises(ZooError, match=r"metrics\.csv\.gz.*missing file.*one row per checkpoint"):
        read_small_cnn_zoo(small_cnn_zoo.folder)


def test_small_cnn_zoo_refuses_a_layout_not_matching_the_weights(small_cnn_zoo):
    names = sorted(small_cnn_zoo.variables[0])
    fixtures.write_layout(small_cnn_zoo.folder / "layout.csv", small_cnn_zoo.variables[0], names,
                          shift=-1)
    with pytest.raises(ZooError, match=r"layout\.csv line \d+ \(sequential/dense/kernel:0\)"):
        read_small_cnn_zoo(small_cnn_zoo.folder)
    weights = np.load(small_cnn_zoo.folder / "weights.npy")
    np.save(small_cnn_zoo.folder / "weights.npy", np.pad(weights, ((0, 0), (0, 3))))
    fixtures.write_layout(small_cnn_zoo.folder / "layout.csv", small_cnn_zoo.variables[0], names)
    with pytest.raises(ZooError, match=r"cover columns \[0, 4970\).*4973 values"):
        read_small_cnn_zoo(small_cnn_zoo.folder)


def test_small_cnn_zoo_refuses_a_metrics_row_count_mismatch(small_cnn_zoo):
    fixtures.write_metrics(small_cnn_zoo.folder / "metrics.csv.gz", small_cnn_zoo.rows[:-1])
    with pytest.raises(ZooError, match=r"metrics\.csv\.gz has 5 rows but .*weights\.npy has 6"):
        read_small_cnn_zoo(small_cnn_zoo.folder)


def test_small_cnn_zoo_refuses_an_unknown_activation(small_cnn_zoo):
    rows = [dict(r) for r in small_cnn_zoo.rows]
    rows[2]["config.activation"] = "hard_sigmoid"
    fixtures.write_metrics(small_cnn_zoo.folder / "metrics.csv.gz", rows)
    with pytest.raises(ZooError, match=r"metrics\.csv\.gz line 4: config\.activation"):
        list(read_small_cnn_zoo(small_cnn_zoo.folder))


# ===================================================================== INRs
def coords(n: int = 50) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_dwsnets_inrs_with_foreign_absolute_paths(tmp_path):
    made = fixtures.write_dwsnets_inrs(tmp_path)
    rows = by_key(list(iter_import("inr-folder", tmp_path)))
    assert set(rows) == set(made)
    x = coords()
    for key, (split, label, inr) in made.items():
        row = rows[key]
        assert row.metadata == {"label": label, "split": split, "path": key, "run_id": key}
        assert row.group == "siren_2-16-16-1"
        assert row.model.family == "inr_siren"
        assert row.model.args["output_offset"] == 0.5 and row.model.args["w0_initial"] == 30.0
        with torch.no_grad():
            np.testing.assert_allclose(rebuild(row)(x).numpy(), inr.eval()(x).numpy(), atol=ATOL,
                                       rtol=0)


def test_relative_inr_paths_and_splits_json_as_path(tmp_path):
    made = fixtures.write_relative_inrs(tmp_path)
    rows = by_key(list(read_inr_folder(tmp_path / "fmnist_splits.json")))
    assert set(rows) == set(made)
    x = coords()
    for key, (split, label, inr) in made.items():
        assert rows[key].metadata["label"] == label and rows[key].metadata["split"] == split
        with torch.no_grad():
            np.testing.assert_allclose(rebuild(rows[key])(x).numpy(), inr(x).numpy(), atol=ATOL,
                                       rtol=0)


def test_reference_siren_keys_have_no_offset(tmp_path):
    torch.manual_seed(3)
    siren = fixtures.ReferenceSiren(hidden=8, hidden_layers=2)
    (tmp_path / "inrs").mkdir()
    torch.save(siren.state_dict(), tmp_path / "inrs" / "a.pth")
    (tmp_path / "splits.json").write_text(json.dumps({"train": {"path": ["inrs/a.pth"],
                                                                "label": [2]}}))
    (row,) = list(read_inr_folder(tmp_path))
    assert row.model.args["output_offset"] == 0.0 and row.model.args["hidden"] == [8, 8, 8]
    with torch.no_grad():
        np.testing.assert_allclose(rebuild(row)(coords()).numpy(), siren(coords()).numpy(),
                                   atol=ATOL, rtol=0)


def test_broken_inr_raises_or_is_skipped(tmp_path, caplog):
    made = fixtures.write_dwsnets_inrs(tmp_path)
    broken = sorted(made)[2]
    data = (tmp_path / broken).read_bytes()
    (tmp_path / broken).write_bytes(data[: len(data) // 2])
    with pytest.raises(ZooError, match=rf"{broken}: unreadable checkpoint"):
        list(read_inr_folder(tmp_path))
    with caplog.at_level(logging.WARNING, logger="weightspace.zoo.importers"):
        rows = list(read_inr_folder(tmp_path, on_error="skip"))
    assert {r.key for r in rows} == set(made) - {broken}
    assert broken in caplog.text and "skipped" in caplog.text


def test_inr_with_unexpected_key(tmp_path):
    made = fixtures.write_dwsnets_inrs(tmp_path)
    bad = sorted(made)[0]
    state = torch.load(tmp_path / bad, weights_only=True)
    state["seq.1.gamma"] = torch.ones(16)
    torch.save(state, tmp_path / bad)
    with pytest.raises(ZooError, match=rf"{bad}: unexpected key 'seq\.1\.gamma'"):
        list(read_inr_folder(tmp_path))


def test_inr_folder_without_splits_or_with_missing_file(tmp_path):
    made = fixtures.write_dwsnets_inrs(tmp_path)
    missing = sorted(made)[1]
    (tmp_path / missing).unlink()
    with pytest.raises(ZooError, match=r"mnist_png_\w+/checkpoints/model_final\.pth' not found"):
        list(read_inr_folder(tmp_path))
    assert len(list(read_inr_folder(tmp_path, on_error="skip"))) == len(made) - 1
    (tmp_path / "mnist_splits.json").unlink()
    with pytest.raises(ZooError, match=r"no splits JSON found.*\"path\""):
        read_inr_folder(tmp_path)


# ============================================================ CNN Wild Park
def test_cnn_wild_park_rows_compute_the_original_cnns(tmp_path):
    made = fixtures.write_cnn_wild_park(tmp_path)
    rows = by_key(list(iter_import("cnn-wild-park", tmp_path)))
    assert set(rows) == set(made)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for key, info in made.items():
        row = rows[key]
        assert row.metadata["run_id"] == info["run"]
        assert row.metadata["epoch"] == info["checkpoint"]["iteration"]
        assert row.metadata["test_accuracy"] == info["checkpoint"]["last_result"]["test/acc"]
        assert row.metadata["test_loss"] == info["checkpoint"]["last_result"]["test/loss"]
        assert json.loads(row.metadata["config.channels"]) == info["config"]["channels"]
        assert row.metadata["config.n_layers"] == info["config"]["n_layers"]
        assert all("/" not in name for name in row.metadata)
        assert row.model.input_shape == (1, 3, 32, 32)
        with torch.no_grad():
            expected = info["module"].eval()(x).numpy()
            np.testing.assert_allclose(rebuild(row)(x).numpy(), expected, atol=ATOL, rtol=0)
    # one group per distinct architecture: A (two runs), B, C
    groups = {}
    for row in rows.values():
        groups.setdefault(row.group, set()).add(row.metadata["run_id"])
    assert sorted(len(runs) for runs in groups.values()) == [1, 1, 2]


def test_park_family_loads_a_wild_park_state_dict_directly(tmp_path):
    cfg = fixtures.PARK_CONFIGS["C"]
    torch.manual_seed(0)
    reference = fixtures.ParkReference(cfg).eval()
    args = {k: v for k, v in cfg.items() if k != "n_layers"}
    model = ParkCNN(**args).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=ATOL, rtol=0)


def test_cnn_wild_park_splits_keep_runs_together(tmp_path):
    made = fixtures.write_cnn_wild_park(tmp_path)
    runs = sorted({info["run"] for info in made.values()})
    split_of_run = {run: ("train" if i < 2 else "test") for i, run in enumerate(runs)}
    table: dict = {}
    for key, info in made.items():
        entry = table.setdefault(split_of_run[info["run"]], {"path": [], "score": [], "step": []})
        entry["path"].append(f"dataset/{key}/checkpoint.pt")
        entry["score"].append(info["checkpoint"]["last_result"]["test/acc"])
        entry["step"].append(info["checkpoint"]["iteration"])
    (tmp_path / "cnn_park_splits.json").write_text(json.dumps(table))
    rows = list(read_cnn_wild_park(tmp_path, splits="cnn_park_splits.json"))
    assert {r.metadata["split"] for r in rows} == {"train", "test"}
    for row in rows:
        assert row.metadata["split"] == split_of_run[row.metadata["run_id"]]


def test_cnn_wild_park_bad_checkpoints(tmp_path, caplog):
    made = fixtures.write_cnn_wild_park(tmp_path)
    keys = sorted(made)
    # a state dict that does not fit its config
    checkpoint = dict(made[keys[0]]["checkpoint"])
    checkpoint["model"] = {**checkpoint["model"], "layers.9.weight": torch.zeros(1)}
    torch.save(checkpoint, tmp_path / keys[0] / "checkpoint.pt")
    with pytest.raises(ZooError, match=rf"{keys[0]}/checkpoint\.pt: unexpected key 'layers\.9"):
        list(read_cnn_wild_park(tmp_path))
    # a checkpoint referencing a Python class: refused, never unpickled
    checkpoint = dict(made[keys[1]]["checkpoint"])
    checkpoint["config"] = fixtures.Path("not/a/plain/container")
    torch.save(checkpoint, tmp_path / keys[1] / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, logger="weightspace.zoo.importers"):
        rows = list(read_cnn_wild_park(tmp_path, on_error="skip"))
    assert {r.key for r in rows} == set(keys[2:])
    assert "PosixPath" in caplog.text and f"{keys[1]}/checkpoint.pt" in caplog.text
    # a checkpoint without its config
    for key in keys[:2]:
        torch.save(made[key]["checkpoint"], tmp_path / key / "checkpoint.pt")
    checkpoint = dict(made[keys[2]]["checkpoint"])
    del checkpoint["config"]
    torch.save(checkpoint, tmp_path / keys[2] / "checkpoint.pt")
    with pytest.raises(ZooError, match=rf"{keys[2]}/checkpoint\.pt: missing 'config'"):
        list(read_cnn_wild_park(tmp_path, on_error="raise"))


def test_cnn_wild_park_empty_folder(tmp_path):
    with pytest.raises(ZooError, match=r"no checkpoint\.pt below it"):
        read_cnn_wild_park(tmp_path)


# =============================================================== Model Zoos
def test_model_zoos_rows_compute_the_original_cnns(tmp_path):
    made = fixtures.write_model_zoos(tmp_path)
    rows = by_key(list(iter_import("model-zoos", tmp_path)))
    assert set(rows) == set(made)
    for key, info in made.items():
        row, result, config = rows[key], info["result"], info["config"]
        assert row.metadata["run_id"] == info["run"]
        assert row.metadata["epoch"] == result["training_iteration"]
        assert row.metadata["test_accuracy"] == result["test_acc"]
        assert row.metadata["test_loss"] == result["test_loss"]
        if result["train_acc"] == -999:
            assert "train_accuracy" not in row.metadata
        else:
            assert row.metadata["train_accuracy"] == result["train_acc"]
        assert row.metadata["config.model::nlin"] == config["model::nlin"]
        assert row.metadata["config.model::channels_in"] == config["model::channels_in"]
        assert row.metadata["config.seed"] == config["seed"]
        assert "config.training::checkpoint_dir" not in row.metadata  # None: missing
        assert "model::dropout" not in json.dumps(row.model.args)
        size = 32 if config["model::type"] == "CNN3" else 28
        x = torch.randn(4, config["model::channels_in"], size, size,
                        generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            np.testing.assert_allclose(rebuild(row)(x).numpy(), info["module"].eval()(x).numpy(),
                                       atol=ATOL, rtol=0)
    groups = {r.group for r in rows.values()}
    assert groups == {"modelzoo_CNN_tanh_c1", "modelzoo_CNN3_gelu_c3"}
    tanh_runs = {r.metadata["run_id"] for r in rows.values() if r.group == "modelzoo_CNN_tanh_c1"}
    assert len(tanh_runs) == 2  # dropout 0 and 0.5: same architecture, one group


def test_model_zoos_epoch_filter(tmp_path):
    fixtures.write_model_zoos(tmp_path)
    rows = list(read_model_zoos(tmp_path, epochs=[1]))
    assert len(rows) == 3 and {r.metadata["epoch"] for r in rows} == {1}


def test_model_zoos_bad_trials(tmp_path, caplog):
    made = fixtures.write_model_zoos(tmp_path)
    runs = sorted({info["run"] for info in made.values()})
    (tmp_path / runs[0] / "result.json").unlink()
    with pytest.raises(ZooError, match=rf"{runs[0]}/result\.json: missing file"):
        list(read_model_zoos(tmp_path))
    with caplog.at_level(logging.WARNING, logger="weightspace.zoo.importers"):
        rows = list(read_model_zoos(tmp_path, on_error="skip"))
    assert {r.metadata["run_id"] for r in rows} == set(runs[1:])
    assert "result.json" in caplog.text
    # a state dict with a key the architecture does not have
    file = tmp_path / runs[1] / "checkpoint_000001" / "checkpoints"
    state = torch.load(file, weights_only=True)
    state["module_list.0.running_mean"] = torch.zeros(8)
    torch.save(state, file)
    with pytest.raises(ZooError, match=r"checkpoint_000001/checkpoints: unexpected key "
                                       r"'module_list\.0\.running_mean'"):
        list(read_model_zoos(tmp_path / runs[1]))


# ======================================================== dispatch & errors
def test_import_formats_and_option_errors(tmp_path):
    assert set(IMPORT_FORMATS) == {"small-cnn-zoo", "inr-folder", "cnn-wild-park", "model-zoos"}
    with pytest.raises(ZooError, match="unknown zoo format 'tfrecords'.*small-cnn-zoo"):
        iter_import("tfrecords", tmp_path)
    with pytest.raises(ZooError, match="no option.*bogus.*on_error"):
        iter_import("model-zoos", tmp_path, bogus=1)
    with pytest.raises(ZooError, match="no such directory"):
        iter_import("small-cnn-zoo", tmp_path / "nothing")
    with pytest.raises(ZooError, match="on_error must be"):
        read_inr_folder(tmp_path, on_error="ignore")


def test_gzip_metrics_with_quoted_fields(small_cnn_zoo):
    """Values with commas and quotes survive (csv quoting), text columns stay str."""
    rows = [dict(r) for r in small_cnn_zoo.rows]
    for r in rows:
        r["config.optimizer"] = 'adam,"beta=0.9"'
    fixtures.write_metrics(small_cnn_zoo.folder / "metrics.csv.gz", rows)
    got = list(read_small_cnn_zoo(small_cnn_zoo.folder))
    assert all(r.metadata["config.optimizer"] == 'adam,"beta=0.9"' for r in got)
    with gzip.open(small_cnn_zoo.folder / "metrics.csv.gz", "rt") as handle:
        assert handle.readline().startswith(",config.")

