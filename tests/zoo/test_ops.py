"""zoo info, verify (checksums, damaged chunks, short columns), merge and export."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from tests.zoo.zoo_helpers import make_zoo, mlp_row
from weightspace.io import load_metadata, load_state_dict
from weightspace.zoo import Zoo, ZooError, ZooWriter
from weightspace.zoo.ops import export_zoo, format_info, merge_zoos, verify_zoo, zoo_info


@pytest.fixture()
def zoo_path(tmp_path):
    return make_zoo(tmp_path / "zoo.h5")


def test_info(zoo_path):
    info = zoo_info(zoo_path)
    assert info["rows"] == 18 and info["format_version"] == 1
    mlp = info["groups"][0]
    assert (mlp["name"], mlp["rows"], mlp["parameters"]) == ("mlp", 12, 51)
    assert mlp["columns"]["test_accuracy"]["min"] == 0.0
    assert mlp["columns"]["test_accuracy"]["max"] == pytest.approx(0.9)
    assert mlp["columns"]["optimizer"]["most_common"] == {"adam": 6, "sgd": 6}
    text = format_info(info)
    assert "group mlp: 12 rows x 51 float32 parameters" in text
    json.dumps(info)


def test_verify_finds_damaged_rows(zoo_path, tmp_path):
    assert verify_zoo(zoo_path).ok
    damaged = tmp_path / "damaged.h5"
    shutil.copyfile(zoo_path, damaged)
    with h5py.File(damaged, "r+") as handle:
        # Rewrite row 3's stored bytes without updating its checksum.
        handle["mlp/params"][3, 0] += 1.0
    report = verify_zoo(damaged)
    assert not report.ok
    assert [(b.group, b.row, b.key, b.reason) for b in report.bad_rows] == [
        ("mlp", 3, "run003/epoch0", "checksum mismatch")]


def test_verify_reports_corrupt_chunk_bytes(zoo_path, tmp_path):
    damaged = tmp_path / "damaged.h5"
    shutil.copyfile(zoo_path, damaged)
    with h5py.File(damaged, "r") as handle:
        info = handle["siren/params"].id.get_chunk_info(0)
    data = bytearray(damaged.read_bytes())
    middle = info.byte_offset + info.size // 2
    data[middle: middle + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    report = verify_zoo(damaged)
    assert {b.group for b in report.bad_rows} == {"siren"}
    assert report.bad_rows and all(b.key.startswith("inr") for b in report.bad_rows)


def test_verify_reports_short_columns(zoo_path):
    with h5py.File(zoo_path, "r+") as handle:
        column = handle["mlp/meta/label"]
        column.resize((5,))
    report = verify_zoo(zoo_path)
    assert report.problems == ["group 'mlp': column 'label' has 5 values for 12 rows"]
    with Zoo(zoo_path) as zoo, pytest.raises(ZooError, match="meta/label has 5 values for 12"):
        zoo.column("label")


def test_truncated_file_is_a_clear_error(zoo_path, tmp_path):
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(zoo_path.read_bytes()[:2000])
    with pytest.raises(ZooError, match="truncated.h5: cannot be opened as HDF5"):
        Zoo(truncated)
    with pytest.raises(ZooError, match="truncated.h5"):
        verify_zoo(truncated)


def test_merge_shards(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    with ZooWriter(a) as writer:
        writer.extend(mlp_row(i) for i in range(0, 10, 2))
    with ZooWriter(b) as writer:
        writer.extend(mlp_row(i) for i in range(1, 10, 2))
        writer.append(mlp_row(4))  # also in a: identical, kept once
    merged = tmp_path / "merged.h5"
    assert merge_zoos([a, b], merged) == 10
    with Zoo(merged) as zoo:
        assert sorted(zoo.column("key")) == [mlp_row(i).key for i in range(10)]
        index = int(zoo.select(key="run007/epoch0")[0])
        assert torch.equal(zoo.params(index), Zoo(b).params(3))
    assert verify_zoo(merged).ok
    with pytest.raises(ZooError, match="exists"):
        merge_zoos([a, b], merged)


def test_merge_conflicting_rows_writes_nothing(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    with ZooWriter(a) as writer:
        writer.append(mlp_row(0))
    row = mlp_row(1)
    with ZooWriter(b) as writer:
        writer.append(type(row)(mlp_row(0).key, "mlp", row.model, row.params, {}))
    with pytest.raises(ZooError, match="run000/epoch0.*different weights"):
        merge_zoos([a, b], tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_export_rows_to_checkpoints(zoo_path, tmp_path):
    paths = export_zoo(zoo_path, tmp_path / "out", index=[0, 13])
    assert [p.relative_to(tmp_path / "out").as_posix() for p in paths] == [
        "mlp/run000__epoch0.safetensors", "siren/inr001__view0.safetensors"]
    state = load_state_dict(paths[0])
    expected = mlp_row(0).params
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    metadata = load_metadata(paths[0])
    assert metadata["weightspace.key"] == "run000/epoch0"
    assert json.loads(metadata["weightspace.metadata"])["optimizer"] == "sgd"
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [e["key"] for e in index] == ["run000/epoch0", "inr001/view0"]
    np.testing.assert_allclose(index[1]["metadata"]["psnr"], 21.0)
