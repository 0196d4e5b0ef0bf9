"""The build driver: shards + merge, worker processes, resume after a
failure, and refusing to mix zoos."""

from __future__ import annotations

import numpy as np
import pytest

from weightspace.zoo import Zoo, ZooError, build_zoo, merge_zoos
from weightspace.zoo.build import parse_shard
from weightspace.zoo.recipes import load_recipe


def rows_by_key(path) -> dict[str, np.ndarray]:
    with Zoo(path) as zoo:
        return {str(k): zoo.params(i).numpy() for i, k in enumerate(zoo.column("key"))}


def assert_same_rows(a, b) -> None:
    rows_a, rows_b = rows_by_key(a), rows_by_key(b)
    assert sorted(rows_a) == sorted(rows_b)
    for key in rows_a:
        np.testing.assert_array_equal(rows_a[key], rows_b[key], err_msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "mlp.h5"
    result = build_zoo("digits-mlp", path, size="tiny", progress=False)
    assert result.jobs_run == 4 and result.rows_written == result.rows_in_zoo == 20
    return path


def test_shards_merge_to_the_full_build(reference, tmp_path):
    shards = []
    for i in range(3):
        shard = tmp_path / f"shard{i}.h5"
        build_zoo("digits-mlp", shard, size="tiny", shard=(i, 3), progress=False)
        shards.append(shard)
    with Zoo(shards[0]) as zoo:
        assert sorted(set(zoo.column("run_id"))) == ["run00000", "run00003"]
        assert zoo.attrs["shard"] == "0/3"
    merged = tmp_path / "merged.h5"
    merge_zoos(shards, merged)
    assert_same_rows(reference, merged)
    with Zoo(merged) as zoo:
        assert "shard" not in zoo.attrs and zoo.attrs["recipe"] == "digits-mlp"


def test_two_workers_give_the_same_rows(reference, tmp_path):
    path = tmp_path / "workers.h5"
    result = build_zoo("digits-mlp", path, size="tiny", workers=2, progress=False)
    assert result.workers == 2 and result.rows_written == 20
    assert_same_rows(reference, path)


def test_resume_after_a_failed_job(reference, tmp_path):
    recipe = load_recipe("digits-mlp")
    original_run = recipe.run

    def failing_run(job, data):
        if job.index == 2:
            raise RuntimeError("out of memory (simulated)")
        return original_run(job, data)

    recipe.run = failing_run
    path = tmp_path / "resumed.h5"
    with pytest.raises(RuntimeError, match="simulated"):
        build_zoo(recipe, path, size="tiny", progress=False)
    with Zoo(path) as zoo:  # the runs finished before the failure are in the file
        assert sorted(set(zoo.column("run_id"))) == ["run00000", "run00001"]
    result = build_zoo("digits-mlp", path, size="tiny", progress=False)
    assert (result.jobs_skipped, result.jobs_run) == (2, 2)
    assert_same_rows(reference, path)
    again = build_zoo("digits-mlp", path, size="tiny", progress=False)
    assert again.jobs_run == 0 and again.rows_written == 0


def test_refuses_to_mix_zoos(reference, tmp_path):
    path = tmp_path / "mixed.h5"
    path.write_bytes(reference.read_bytes())
    with pytest.raises(ZooError, match="recipe='digits-mlp'.*recipe='digits-cnn'"):
        build_zoo("digits-cnn", path, size="tiny", progress=False)
    with pytest.raises(ZooError, match="size='tiny'.*size='small'"):
        build_zoo("digits-mlp", path, size="small", progress=False)
    assert_same_rows(reference, path)


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ZooError, match="shard") as caught:
            parse_shard(bad)
        assert caught.value.parameter == "shard"
