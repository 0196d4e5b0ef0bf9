"""ZooGraphDataset and the run-keeping splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from tests.zoo.zoo_helpers import make_zoo, mlp_row
from weightspace.zoo import Zoo, ZooError, ZooWriter
from weightspace.zoo.dataset import ZooGraphDataset, split_by_column, split_by_run
from weightspace.zoo.transforms import Compose, GaussianNoise, RandomPermutation


@pytest.fixture()
def zoo(tmp_path):
    with Zoo(make_zoo(tmp_path / "zoo.h5")) as opened:
        yield opened


def test_split_by_run_keeps_runs_together(tmp_path):
    path = tmp_path / "runs.h5"
    with ZooWriter(path) as writer:
        writer.extend(mlp_row(10 * run + epoch, run=run, epoch=epoch)
                      for run in range(40) for epoch in range(3))
    with Zoo(path) as zoo:
        parts = split_by_run(zoo, seed=1)
        assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(120))
        runs = {name: set(zoo.column("run_id", rows)) for name, rows in parts.items()}
        assert not runs["train"] & runs["val"] and not runs["train"] & runs["test"]
        assert not runs["val"] & runs["test"]
        assert 84 <= len(parts["train"]) <= 102 and len(parts["test"]) >= 6
        assert {k: v.tolist() for k, v in split_by_run(zoo, seed=1).items()} == {
            k: v.tolist() for k, v in parts.items()}
        assert split_by_run(zoo, seed=2)["test"].tolist() != parts["test"].tolist()


def test_split_by_column(zoo):
    parts = split_by_column(zoo, "optimizer", zoo.select(group="mlp"))
    assert parts["adam"].tolist() == [1, 3, 5, 7, 9, 11]


def test_items_and_targets(zoo):
    data = ZooGraphDataset(zoo, target="label")
    assert len(data) == 18 and data.num_classes == 3
    graph = data[13]
    assert graph.y.tolist() == [1]  # row 13 is inr001: label 1 % 3
    assert graph.row.tolist() == [13] and graph.arch.tolist() == [1]
    regression = ZooGraphDataset(zoo, zoo.select(group="mlp"), target="test_accuracy")
    assert regression[2].y.dtype == torch.float32
    assert regression[2].y.shape == (1, 1)  # PyG's graph-regression convention
    assert regression[2].y.item() == pytest.approx(0.2)
    strings = ZooGraphDataset(zoo, zoo.select(group="mlp"), target="optimizer")
    assert strings.classes == ["adam", "sgd"] and strings[1].y.tolist() == [0]
    with pytest.raises(ZooError, match="'psnr' is missing"):
        ZooGraphDataset(zoo, target="psnr")
    with pytest.raises(ZooError, match="no column 'nope'"):
        ZooGraphDataset(zoo, target="nope")


def test_batches_equal_per_sample_graphs(zoo):
    data = ZooGraphDataset(zoo, target="label")
    positions = [0, 13, 5, 17, 2]
    batch = data.batch(positions)
    expected = Batch.from_data_list([data[i] for i in positions])
    for key in expected.keys():
        assert torch.equal(batch[key], expected[key]), key
    seen = [int(r) for b in data.loader(batch_size=4, shuffle=True) for r in b.row]
    assert sorted(seen) == list(range(18))
    loader = DataLoader(data, batch_size=5, shuffle=True, num_workers=2)
    assert sorted(int(r) for b in loader for r in b.row) == list(range(18))


def test_augmentation_is_applied_per_row_and_seeded(zoo):
    transform = Compose([RandomPermutation(), GaussianNoise(0.0)])
    data = ZooGraphDataset(zoo, zoo.select(group="mlp"), target="label",
                           weight_transform=transform, seed=3)
    template = data.templates["mlp"]
    batch = data.batch([0, 1, 2])
    params = template.from_batch(batch)
    spec = zoo.spec("mlp")
    expected = transform(zoo.params([0, 1, 2]), spec, torch.Generator().manual_seed(3))
    assert torch.equal(params, expected)
    assert not torch.equal(params, zoo.params([0, 1, 2]))
    # A permuted network computes the same function.
    model = zoo.model(0)
    x = torch.randn(7, 4)
    permuted = spec.unflatten(params[0])
    with torch.no_grad():
        reference = model(x)
        model.load_state_dict(permuted)
        torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-6)
