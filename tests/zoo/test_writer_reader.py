"""Writer and reader: exact round trips, metadata columns, selection, chunked
streaming, graphs, and the file read with plain h5py."""

from __future__ import annotations

import json
import zlib

import h5py
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from tests.zoo.zoo_helpers import MLP_DEF, SIREN_DEF, make_zoo, mlp_row, siren_row
from weightspace.graph import GraphTemplate
from weightspace.zoo import Zoo, ZooError, ZooRow, ZooWriter


@pytest.fixture()
def zoo_path(tmp_path):
    return make_zoo(tmp_path / "zoo.h5")


def test_rows_round_trip_exactly(zoo_path):
    with Zoo(zoo_path) as zoo:
        assert len(zoo) == 18
        assert list(zoo.groups) == ["mlp", "siren"]
        for i in range(12):
            index = int(zoo.select(key=f"run{i:03d}/epoch0")[0])
            expected = mlp_row(i).params
            got = zoo.state_dict(index)
            assert list(got) == list(expected)
            for name in expected:
                assert torch.equal(got[name], expected[name]), name
        index = int(zoo.select(key="inr004/view0")[0])
        model = zoo.model(index)
        torch.manual_seed(5004)
        reference = SIREN_DEF.build()
        x = torch.rand(5, 2)
        assert torch.equal(model(x), reference(x))


def test_metadata_columns(zoo_path):
    with Zoo(zoo_path) as zoo:
        assert zoo.columns == ["epoch", "label", "optimizer", "run_id", "test_accuracy", "psnr"]
        assert zoo.group("mlp").columns["optimizer"] == "str"
        assert zoo.group("mlp").columns["epoch"] == "int"
        np.testing.assert_array_equal(zoo.column("label"), [i % 3 for i in range(12)]
                                      + [i % 3 for i in range(6)])
        psnr = zoo.column("psnr")
        assert np.isnan(psnr[:12]).all() and psnr[12:].tolist() == [20.0 + i for i in range(6)]
        assert zoo.column("optimizer")[12:].tolist() == [""] * 6
        assert zoo.row_metadata(1) == {"key": "run001/epoch0", "group": "mlp", "finite": True,
                                       "epoch": 0, "label": 1, "optimizer": "adam",
                                       "run_id": "run001", "test_accuracy": 0.1}


def test_select(zoo_path):
    with Zoo(zoo_path) as zoo:
        assert zoo.select(label=1).tolist() == [1, 4, 7, 10, 13, 16]
        assert zoo.select(group="siren", label=[0, 2]).tolist() == [12, 14, 15, 17]
        assert zoo.select(lambda m: m["test_accuracy"] >= 0.5).tolist() == [5, 6, 7, 8, 9]
        with pytest.raises(ZooError, match="no column 'nope'"):
            zoo.select(nope=1)
        with pytest.raises(ZooError, match="no group 'cnn'"):
            zoo.select(group="cnn")


def test_last_checkpoint(tmp_path):
    path = tmp_path / "runs.h5"
    with ZooWriter(path) as writer:
        writer.extend(mlp_row(10 * run + epoch, run=run, epoch=epoch)
                      for run in range(3) for epoch in (0, 2, 1))
    with Zoo(path) as zoo:
        last = zoo.select(last_checkpoint=True)
        assert [zoo.row_metadata(int(i))["key"] for i in last] == [
            "run000/epoch2", "run001/epoch2", "run002/epoch2"]


def test_params_batches_and_streaming(zoo_path):
    with Zoo(zoo_path, cache_bytes=1) as zoo:
        block = zoo.params([3, 1, 2])
        assert block.shape == (3, 51)
        assert torch.equal(block[0], zoo.params(3))
        with pytest.raises(ZooError, match="several groups"):
            zoo.params([0, 15])
        seen = []
        for chunk in zoo.iter_chunks(np.array([17, 0, 5, 6, 13]), chunk_rows=2):
            assert chunk.params.shape[0] == len(chunk.indices) <= 2
            for i, row in zip(chunk.indices, chunk.params, strict=True):
                assert torch.equal(torch.from_numpy(row), zoo.params(int(i)))
            seen += chunk.indices.tolist()
        assert seen == [0, 5, 6, 13, 17]
        with pytest.raises(IndexError, match="row 18 is out of range"):
            zoo.params(18)


def test_graphs_match_per_sample_conversion(zoo_path):
    with Zoo(zoo_path) as zoo:
        templates = zoo.templates()
        order = [13, 0, 14, 1, 2]
        batch = zoo.graphs(order)
        expected = Batch.from_data_list([
            templates[zoo.locate(i)[0].name].to_data(zoo.params(i)) for i in order])
        assert sorted(batch.keys()) == sorted(expected.keys())
        for key in expected.keys():
            assert torch.equal(batch[key], expected[key]), key
        graphs = batch.to_data_list()
        assert [g.num_nodes for g in graphs] == [g.num_nodes for g in expected.to_data_list()]
        # The inverse: graph -> parameters of its row.
        restored = GraphTemplate.common([zoo.spec(13), zoo.spec(0)])[0].from_data(graphs[0])
        assert torch.equal(restored, zoo.params(13))


def test_plain_h5py_reads_everything(zoo_path):
    """Self-describing: no weightspace needed to read numbers, layout and checksums."""
    with h5py.File(zoo_path, "r") as handle:
        assert handle.attrs["format"] == "weightspace.zoo"
        assert handle.attrs["format_version"] == 1
        group = handle["mlp"]
        n = int(group.attrs["num_rows"])
        params = group["params"][:n]
        names = json.loads(group.attrs["parameter_names"])
        offsets = json.loads(group.attrs["parameter_offsets"])
        shapes = json.loads(group.attrs["parameter_shapes"])
        reference = mlp_row(0).params
        for name, (start, stop), shape in zip(names, offsets, shapes, strict=True):
            value = params[0, start:stop].reshape(shape)
            np.testing.assert_array_equal(value, reference[name].numpy())
        for row, checksum in zip(params, group["checksum"][:n], strict=True):
            assert zlib.crc32(row.astype("<f4").tobytes()) == checksum
        assert group["meta/optimizer"].asstr()[1] == "adam"
        assert json.loads(group.attrs["model"])["family"] == "mlp"
        assert group["params"].compression == "gzip"
        json.loads(group.attrs["spec"])


def test_resume_appends_and_skips_known_keys(tmp_path):
    path = make_zoo(tmp_path / "zoo.h5", mlp=5, siren=0)
    with ZooWriter(path, duplicates="skip") as writer:
        assert writer.num_rows == 5 and writer.has("run004/epoch0")
        added = writer.extend(mlp_row(i) for i in range(8))
        assert added == 3
    with Zoo(path) as zoo:
        assert zoo.column("key").tolist() == [f"run{i:03d}/epoch0" for i in range(8)]
    with ZooWriter(path) as writer, pytest.raises(ZooError, match="already has a row"):
        writer.append(mlp_row(2))


def test_column_kinds_widen_and_missing_values(tmp_path):
    path = tmp_path / "zoo.h5"
    with ZooWriter(path, commit_rows=1) as writer:
        writer.append(ZooRow("a", "mlp", MLP_DEF, mlp_row(0).params, {"n": 1, "flag": True}))
        writer.append(ZooRow("b", "mlp", MLP_DEF, mlp_row(1).params, {"n": 2.5}))
        writer.append(ZooRow("c", "mlp", MLP_DEF, mlp_row(2).params, {"n": 3, "late": "x"}))
    with Zoo(path) as zoo:
        group = zoo.group("mlp")
        assert group.columns == {"n": "float", "flag": "float", "late": "str"}
        assert zoo.column("n").tolist() == [1.0, 2.5, 3.0]
        assert zoo.column("flag")[0] == 1.0 and np.isnan(zoo.column("flag")[1:]).all()
        assert zoo.column("late").tolist() == ["", "", "x"]
    with ZooWriter(path) as writer, pytest.raises(ZooError, match="column 'late' of group 'mlp' holds str"):
        writer.append(ZooRow("d", "mlp", MLP_DEF, mlp_row(3).params, {"late": 1.0}))


def test_bad_rows_are_refused_before_writing(tmp_path):
    path = make_zoo(tmp_path / "zoo.h5", mlp=2, siren=0)
    before = path.read_bytes()
    with ZooWriter(path) as writer:
        with pytest.raises(ZooError, match=r"row 'short'.*50 parameters.*51 per row"):
            writer.append(ZooRow("short", "mlp", MLP_DEF, torch.zeros(50)))
        with pytest.raises(ZooError, match="group 'mlp' holds"):
            writer.append(ZooRow("other", "mlp", SIREN_DEF, siren_row(0).params))
        with pytest.raises(ZooError, match="must be an int, float, str or bool"):
            ZooRow("x", "mlp", MLP_DEF, torch.zeros(51), {"bad": [1, 2]})
    assert path.read_bytes() == before


def test_nonfinite_rows_flagged_or_refused(tmp_path):
    bad = dict(mlp_row(0).params)
    bad["layers.3.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    path = tmp_path / "zoo.h5"
    with ZooWriter(path) as writer:
        writer.append(mlp_row(1))
        writer.append(ZooRow("nan", "mlp", MLP_DEF, bad))
    with Zoo(path) as zoo:
        assert zoo.column("finite").tolist() == [True, False]
        assert zoo.select().tolist() == [0]
        assert zoo.select(finite=None).tolist() == [0, 1]
    with ZooWriter(tmp_path / "strict.h5", nonfinite="error") as writer, \
            pytest.raises(ZooError, match="NaN/Inf weights .* 'layers.3.bias'"):
        writer.append(ZooRow("nan", "mlp", MLP_DEF, bad))


def test_not_a_zoo(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(ZooError, match="not a weightspace zoo"):
        Zoo(path)
    with pytest.raises(ZooError, match="no such zoo file"):
        Zoo(tmp_path / "missing.h5")
