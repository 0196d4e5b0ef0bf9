"""Zoo recipes: finding them, their jobs, and the rows one job trains."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import yaml

from weightspace.data import load_digits_split
from weightspace.models import WildCNN, build_model, default_input_shape
from weightspace.models.activations import ACTIVATION_NAMES
from weightspace.spec import trace
from weightspace.zoo.errors import ZooError
from weightspace.zoo.recipes import (
    DigitsCNN,
    DigitsINR,
    DigitsMLP,
    DigitsWild,
    Job,
    Recipe,
    available_recipes,
    datasets_dir,
    load_recipe,
)
from weightspace.zoo.recipes.classifier import evaluate
from weightspace.zoo.recipes.digits_inr import inr_mse, psnr
from weightspace.zoo.rows import ModelDef

RECIPES = ["digits-cnn", "digits-inr", "digits-mlp", "digits-wild"]
CLASSIFIERS = ["digits-cnn", "digits-mlp", "digits-wild"]
CLASSES = {"digits-cnn": DigitsCNN, "digits-inr": DigitsINR, "digits-mlp": DigitsMLP,
           "digits-wild": DigitsWild}
COMMON_COLUMNS = {"run_id", "seed", "diverged"}
CLASSIFIER_COLUMNS = COMMON_COLUMNS | {
    "epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "activation",
    "init", "init_scale", "lr", "l2", "dropout", "optimizer", "batch_size", "train_fraction",
    "n_train", "epochs"}
WILD_COLUMNS = CLASSIFIER_COLUMNS | {"n_layers", "channels", "kernel_size", "first_stride",
                                     "residual", "n_skips"}
INR_COLUMNS = COMMON_COLUMNS | {"label", "split", "image_index", "dataset_index", "view",
                                "steps", "lr", "mse", "psnr"}
COLUMNS = {"digits-cnn": CLASSIFIER_COLUMNS, "digits-mlp": CLASSIFIER_COLUMNS,
           "digits-wild": WILD_COLUMNS, "digits-inr": INR_COLUMNS}


def _config(name: str) -> dict:
    return yaml.safe_load((datasets_dir() / f"{name}.yaml").read_text())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Recipes are deterministic on one thread (the build driver's setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_thread):
    """name -> (recipe, data, job, rows) for the first tiny job of each recipe."""
    out = {}
    for name in RECIPES:
        recipe = load_recipe(name)
        data = recipe.load_data(None)
        job = recipe.jobs("tiny")[0]
        out[name] = (recipe, data, job, recipe.run(job, data))
    return out


# ------------------------------------------------------------------ loading
def test_available_recipes_are_the_yaml_files():
    assert set(RECIPES) <= set(available_recipes())


@pytest.mark.parametrize("name", RECIPES)
def test_load_recipe_by_name_and_by_path(name, tmp_path):
    recipe = load_recipe(name)
    assert isinstance(recipe, CLASSES[name]) and isinstance(recipe, Recipe)
    assert recipe.name == name and recipe.description
    assert recipe.source == datasets_dir() / f"{name}.yaml"
    json.dumps(recipe.config)  # the driver stores it as JSON
    # a copied and edited YAML, passed by path
    config = _config(name)
    config["name"] = f"my-{name}"
    config["sizes"]["tiny"] = dict(config["sizes"]["tiny"])
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    mine = load_recipe(str(path))
    assert isinstance(mine, CLASSES[name]) and mine.name == f"my-{name}"
    assert mine.source == path
    assert [j.config for j in mine.jobs("tiny")] == [j.config for j in recipe.jobs("tiny")]


def test_unknown_recipe_lists_the_available_ones(tmp_path):
    with pytest.raises(ZooError, match="unknown recipe 'digits-foo'.*digits-cnn.*digits-wild"):
        load_recipe("digits-foo")
    with pytest.raises(ZooError, match="no such recipe file"):
        load_recipe(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrecipe: weightspace.zoo.rows:ZooRow\nsizes: {tiny: {runs: 1}}\n")
    with pytest.raises(ZooError, match="not a Recipe subclass"):
        load_recipe(bad)
    bad.write_text("[1, 2]\n")
    with pytest.raises(ZooError, match="'recipe' entry"):
        load_recipe(bad)
    with pytest.raises(ZooError, match="no size 'huge'.*tiny, small, full"):
        load_recipe("digits-cnn").jobs("huge")


# --------------------------------------------------------------------- jobs
@pytest.mark.parametrize("name", RECIPES)
def test_jobs_are_deterministic_unique_and_tiny_is_small(name):
    recipe = load_recipe(name)
    sizes = {}
    for size in ("tiny", "small", "full"):
        jobs = recipe.jobs(size)
        again = load_recipe(name).jobs(size)
        assert jobs == again
        assert [j.index for j in jobs] == list(range(len(jobs)))
        assert len({j.key for j in jobs}) == len(jobs)
        assert all(isinstance(j, Job) and j.recipe == name and "/" not in j.key for j in jobs)
        json.dumps([j.config for j in jobs])
        sizes[size] = jobs
    assert 1 <= len(sizes["tiny"]) <= 4 < len(sizes["small"]) < len(sizes["full"])
    if name in CLASSIFIERS:
        # run i does not depend on the size: the smaller sizes are prefixes
        assert sizes["full"][:len(sizes["small"])] == sizes["small"]


def test_inr_full_covers_every_digits_image():
    jobs = load_recipe("digits-inr").jobs("full")
    images = [tuple(im) for job in jobs for im in job.config["images"]]
    split = load_digits_split(seed=0)
    assert sorted(images) == sorted([("train", i) for i in range(len(split.y_train))]
                                    + [("test", i) for i in range(len(split.y_test))])
    assert len(jobs[0].config["views"]) >= 2


# ------------------------------------------------------------------ running
@pytest.mark.parametrize("name", RECIPES)
def test_rows_of_one_job(name, trained):
    recipe, data, job, rows = trained[name]
    assert rows
    keys = [row.key for row in rows]
    assert len(set(keys)) == len(keys)
    assert all(key.startswith(f"{job.key}/") for key in keys)
    specs = {}
    for row in rows:
        assert COLUMNS[name] <= set(row.metadata), COLUMNS[name] - set(row.metadata)
        assert row.metadata["run_id"] == job.key
        assert row.metadata["diverged"] is False
        assert "dropout" not in row.model.args
        if row.group not in specs:
            specs[row.group] = (row.model, row.model.trace())
        model_def, spec = specs[row.group]
        assert row.model == model_def  # one group, one model definition
        flat = row.flat(spec)
        assert flat.shape == (spec.num_parameters,) and np.isfinite(flat).all()
        # JSON round trip of the model definition (the zoo stores it as JSON)
        assert ModelDef.from_json(row.model.to_json()) == row.model
    if name in CLASSIFIERS:
        assert len({row.group for row in rows}) == 1  # one run, one architecture
        epochs = [row.metadata["epoch"] for row in rows]
        assert epochs == job.config["checkpoint_epochs"] and epochs[0] == 0
        assert [row.metadata["step"] for row in rows] == sorted(r.metadata["step"] for r in rows)


@pytest.mark.parametrize("name", RECIPES)
def test_same_job_gives_bit_identical_rows(name, trained):
    recipe, data, job, rows = trained[name]
    torch.manual_seed(12345)  # the global RNG must not matter ...
    state = torch.random.get_rng_state()
    again = recipe.run(job, data)
    assert torch.equal(torch.random.get_rng_state(), state)  # ... nor be disturbed
    assert [r.key for r in again] == [r.key for r in rows]
    for a, b in zip(rows, again, strict=True):
        assert a.metadata == b.metadata and a.group == b.group and a.model == b.model
        assert a.params.keys() == b.params.keys()
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_rebuilt_final_checkpoint_has_the_recorded_accuracy(name, trained):
    recipe, data, job, rows = trained[name]
    final = rows[-1]
    model = final.model.build()
    model.load_state_dict(final.params)
    x = data.split.x_test
    if name == "digits-mlp":
        x = x.reshape(len(x), -1)
    loss, accuracy = evaluate(model, x, data.split.y_test)
    assert accuracy == final.metadata["test_accuracy"]
    assert loss == pytest.approx(final.metadata["test_loss"], rel=1e-6)
    # the flat vector goes back to the same state dict through the spec
    spec = final.model.trace()
    restored = spec.unflatten(torch.as_tensor(final.flat(spec)))
    assert all(torch.equal(restored[k], final.params[k]) for k in final.params)
    # the run learned something (or is at least a valid probability)
    assert 0.0 <= final.metadata["test_accuracy"] <= 1.0
    assert final.metadata["epoch"] == job.config["epochs"]


def test_rebuilt_siren_has_the_recorded_psnr(trained):
    recipe, data, job, rows = trained["digits-inr"]
    from sklearn.datasets import load_digits

    digits = load_digits().images
    assert len(rows) == len(job.config["images"]) * len(job.config["views"])
    for row in rows:
        md = row.metadata
        model = row.model.build().eval()
        target = data.targets[md["split"]][md["image_index"]]
        mse = inr_mse(model, row.params, data.coords, target)
        assert psnr(mse) == pytest.approx(md["psnr"], abs=1e-4)
        # a faithful fit: it explains most of the image's variance (DWSNets'
        # initialisation fits 8x8 digits to ~33 dB in 100 steps, Sitzmann's to ~61)
        assert mse < 0.1 * float(target.var(correction=0)), (md["psnr"], float(target.var()))
        # which image it is: the split's image, the sklearn index, the label
        image = getattr(data.images.split, f"x_{md['split']}")[md["image_index"]]
        assert np.array_equal(digits[md["dataset_index"]] / 16.0, image[0].double().numpy())
        assert torch.allclose(target[:, 0], image[0].reshape(-1) * 2 - 1)
        assert md["label"] == int(getattr(data.images.split, f"y_{md['split']}")[md["image_index"]])
    assert np.mean([r.metadata["psnr"] for r in rows]) > 25.0
    # views of one image differ in their init seed, hence in their weights
    by_image = {}
    for row in rows:
        by_image.setdefault((row.metadata["split"], row.metadata["image_index"]), []).append(row)
    for views in by_image.values():  # views of an image: different init seeds, different INRs
        assert len({r.metadata["seed"] for r in views}) == len(views) == len(job.config["views"])
        for other in views[1:]:
            assert not torch.equal(views[0].params["net.0.weight"], other.params["net.0.weight"])


def test_inr_init_does_not_depend_on_the_job_blocking():
    config = _config("digits-inr")
    config["training"] = {"steps": 5, "lr": 1e-3}
    a = DigitsINR({**config, "sizes": {"tiny": {"train_images": 4, "test_images": 0, "views": 1,
                                                "images_per_job": 4}}})
    b = DigitsINR({**config, "sizes": {"tiny": {"train_images": 4, "test_images": 0, "views": 1,
                                                "images_per_job": 2}}})
    data = a.load_data(None)
    rows_a = a.run(a.jobs("tiny")[0], data)
    rows_b = b.run(b.jobs("tiny")[1], data)
    assert rows_a[2].metadata["seed"] == rows_b[0].metadata["seed"]
    assert rows_a[2].metadata["image_index"] == rows_b[0].metadata["image_index"] == 2


def test_inr_shared_init_starts_every_image_of_a_view_from_the_same_weights():
    config = _config("digits-inr")
    config["training"] = {"steps": 0, "lr": 1e-3, "shared_init": True}
    recipe = DigitsINR({**config, "sizes": {"tiny": {"train_images": 3, "test_images": 0, "views": 2,
                                                     "images_per_job": 3}}})
    rows = recipe.run(recipe.jobs("tiny")[0], recipe.load_data(None))
    by_view: dict = {}
    for row in rows:
        by_view.setdefault(row.metadata["view"], []).append(row)
    for views in by_view.values():  # steps=0: the stored weights are the initial ones
        assert len({r.metadata["seed"] for r in views}) == 1
        assert all(torch.equal(v.params["net.0.weight"], views[0].params["net.0.weight"]) for v in views)
    assert not torch.equal(by_view[0][0].params["net.0.weight"], by_view[1][0].params["net.0.weight"])


def _inr_recipe(**training) -> DigitsINR:
    config = _config("digits-inr")
    config["training"] = {"steps": 0, "lr": 1e-3, **training}
    return DigitsINR({**config, "sizes": {"tiny": {"train_images": 3, "test_images": 0, "views": 1,
                                                   "images_per_job": 3}}})


def test_inr_dwsnets_init_zeroes_biases_and_bounds_every_weight_by_its_fan_in():
    recipe = _inr_recipe(init="dwsnets")
    rows = recipe.run(recipe.jobs("tiny")[0], recipe.load_data(None))
    default = _inr_recipe(init="siren").run(recipe.jobs("tiny")[0], recipe.load_data(None))
    w0 = recipe.w0
    for row, other in zip(rows, default, strict=True):
        assert row.metadata["seed"] == other.metadata["seed"]  # same seed, other scheme
        for key, value in row.params.items():  # steps=0: the stored weights are the initial ones
            if key.endswith("bias"):
                assert torch.count_nonzero(value) == 0, key
            else:
                bound = math.sqrt(6.0 / value.shape[1]) / w0
                assert value.abs().max() <= bound, key
                assert value.abs().max() > 0.5 * bound, key  # uniform over the range, not tiny
        # Sitzmann's first layer is U(-1/n_in, 1/n_in) with random biases: a different start
        assert torch.count_nonzero(other.params["net.0.bias"]) > 0


def test_inr_recipe_defaults_to_dwsnets_init_and_a_config_without_the_key_to_siren():
    assert load_recipe("digits-inr").init == "dwsnets"
    assert _inr_recipe().init == "siren"  # as zoos built before the option were


def test_inr_dwsnets_init_still_fits_the_image():
    recipe = _inr_recipe(init="dwsnets", steps=100)
    rows = recipe.run(recipe.jobs("tiny")[0], recipe.load_data(None))
    assert all(row.metadata["psnr"] > 20.0 for row in rows), [r.metadata["psnr"] for r in rows]


def test_inr_unknown_init_is_refused_naming_the_option():
    with pytest.raises(ZooError, match=r"training\.init is 'xavier'.*siren.*dwsnets"):
        _inr_recipe(init="xavier")


def test_a_diverged_run_is_flagged_not_dropped():
    config = copy.deepcopy(_config("digits-mlp"))
    config["sampling"].update(lr=1.0e8, optimizer="sgd", init={"normal": [10.0, 10.0]},
                              train_fraction=0.1)
    config["training"] = {"epochs": 1, "checkpoint_epochs": [0, 1]}
    recipe = DigitsMLP(config)
    rows = recipe.run(recipe.jobs("tiny")[0], recipe.load_data(None))
    assert [r.metadata["diverged"] for r in rows] == [False, True]


# --------------------------------------------------------------- user data
def _write_npz(path, channels=3, side=6, classes=4, n_train=24, n_test=12, layout="nchw"):
    g = np.random.default_rng(0)
    shape = {"nchw": (channels, side, side), "nhw": (side, side), "flat": (side * side,)}[layout]
    np.savez(path,
             x_train=g.random((n_train, *shape), dtype=np.float32),
             y_train=np.arange(n_train) % classes,
             x_test=g.random((n_test, *shape), dtype=np.float32),
             y_test=np.arange(n_test) % classes)
    return path


@pytest.mark.parametrize("name", RECIPES)
def test_user_npz_is_used(name, tmp_path):
    path = _write_npz(tmp_path / "mine.npz")
    config = copy.deepcopy(_config(name))
    if name == "digits-inr":
        config["training"]["steps"] = 20
        config["sizes"]["tiny"] = {"train_images": 2, "test_images": 1, "views": 1,
                                   "images_per_job": 3}
    else:
        config["training"] = {"epochs": 1, "checkpoint_epochs": [0, 1]}
    recipe = CLASSES[name](config)
    data = recipe.load_data(path)
    rows = recipe.run(recipe.jobs("tiny")[0], data)
    assert rows
    model = rows[0].model
    if name == "digits-inr":
        assert model.args["out_features"] == 3 and rows[0].group == "siren-c3"
        assert [r.metadata["dataset_index"] for r in rows] == [-1, -1, -1]
        assert [r.metadata["split"] for r in rows] == ["train", "train", "test"]
    elif name == "digits-mlp":
        assert model.args["in_features"] == 108 and model.args["out_features"] == 4
        assert model.input_shape == (1, 108)
    else:
        assert model.args["in_channels"] == 3 and model.args["num_classes"] == 4
        assert model.input_shape == (1, 3, 6, 6)
    if name != "digits-inr":
        assert rows[0].group.endswith("-in3x6x6-out4")
        assert rows[0].metadata["n_train"] <= 24
    spec = model.trace()
    assert all(r.flat(spec).shape == (spec.num_parameters,) for r in rows)


@pytest.mark.parametrize("layout", ["nhw", "flat"])
def test_user_npz_layouts(layout, tmp_path):
    path = _write_npz(tmp_path / "grey.npz", layout=layout, side=5)
    data = load_recipe("digits-cnn").load_data(path)
    assert data.split.x_train.shape == (24, 1, 5, 5) and data.source == str(path)


def test_bad_npz_names_the_file(tmp_path):
    recipe = load_recipe("digits-cnn")
    missing = tmp_path / "missing_arrays.npz"
    np.savez(missing, x_train=np.zeros((3, 8, 8)), y_train=np.zeros(3))
    with pytest.raises(ValueError, match="missing_arrays.npz"):
        recipe.load_data(missing)
    odd = tmp_path / "odd_shape.npz"
    np.savez(odd, x_train=np.zeros((3, 7)), y_train=np.zeros(3),
             x_test=np.zeros((2, 7)), y_test=np.zeros(2))
    with pytest.raises(ValueError, match="odd_shape.npz.*square"):
        recipe.load_data(odd)
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not a zip")
    for name in RECIPES:
        with pytest.raises(ValueError, match="garbage.npz"):
            load_recipe(name).load_data(garbage)
    with pytest.raises(ValueError, match="nothing_here.npz"):
        recipe.load_data(tmp_path / "nothing_here.npz")


# ------------------------------------------------------------------ wildcnn
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "sigmoid", "silu", "leaky_relu"])
def test_wildcnn_traces_and_round_trips(residual, activation):
    assert activation in ACTIVATION_NAMES
    torch.manual_seed(0)
    model = WildCNN(n_layers=4, channels=[8, 16, 16, 16], kernel_size=5, stride=[2, 1, 1, 1],
                    residual=residual, activation=activation).eval()
    spec = trace(model, (1, 1, 8, 8))
    sd = model.state_dict()
    flat = spec.flatten(sd)
    assert flat.numel() == sum(p.numel() for p in model.parameters()) == spec.num_parameters
    back = spec.unflatten(flat)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # a random permutation of the hidden neurons keeps the function
    x = torch.randn(5, 1, 8, 8)
    permuted = spec.permute(sd, spec.random_permutation(torch.Generator().manual_seed(1)))
    out = torch.func.functional_call(model, permuted, (x,))
    assert torch.allclose(out, model(x), atol=1e-5)
    assert model.skips == ((False, False, True, True) if residual else (False,) * 4)


def test_wildcnn_residual_spec_ties_the_stream():
    model = WildCNN(n_layers=5, channels=[8, 8, 16, 16, 16], kernel_size=3, residual=True)
    spec = trace(model, (1, 1, 8, 8))
    assert model.skips == (False, True, False, True, True)

    def space(param, axis=0):
        return spec.parameter(param).axes[axis].space

    # conv1 adds onto conv0's output: one space; same for conv3/conv4 onto conv2
    assert space("convs.1.weight") == space("convs.0.weight") == space("convs.1.weight", 1)
    assert space("convs.3.weight") == space("convs.4.weight") == space("convs.2.weight")
    assert space("convs.2.weight") != space("convs.0.weight")
    assert space("classifier.weight", 1) == space("convs.4.weight")
    assert len(spec.permutable_spaces) == 2
    plain = trace(WildCNN(n_layers=5, channels=[8, 8, 16, 16, 16], residual=False), (1, 1, 8, 8))
    assert len(plain.permutable_spaces) == 5


def test_wildcnn_arguments_and_registry():
    model = build_model("wildcnn", n_layers=2, channels=4, kernel_size=7, in_channels=3,
                        num_classes=5)
    assert default_input_shape("wildcnn", in_channels=3) == (1, 3, 8, 8)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    # no skip where the stride or the padding changes the shape
    assert WildCNN(n_layers=3, channels=4, stride=[1, 2, 1], residual=True).skips == (
        False, False, True)
    assert WildCNN(n_layers=2, channels=4, padding=0, residual=True).skips == (False, False)
    with pytest.raises(ValueError, match="channels has 2 entries but n_layers=3"):
        WildCNN(n_layers=3, channels=[4, 4])
    with pytest.raises(ValueError, match="n_layers"):
        WildCNN(n_layers=0)


def test_wild_groups_mean_one_model_definition():
    recipe = load_recipe("digits-wild")
    data = recipe.load_data(None)
    seen: dict[str, ModelDef] = {}
    specs: dict[str, tuple[str, str]] = {}
    for job in recipe.jobs("small"):
        model_def = recipe.model_def(job.config, data)
        group = recipe.group(job.config, data)
        assert seen.setdefault(group, model_def) == model_def
        assert group.startswith(f"wild-{job.config['activation']}-L{job.config['n_layers']}-")
        if group not in specs:
            specs[group] = (model_def.trace().hash, model_def.args["activation"])
    assert len(seen) > 10  # a wild park: many architectures
    assert len(set(specs.values())) == len(specs)  # and one name per architecture
    # a sampled residual=True without any possible skip is the plain network
    config = {"activation": "relu", "n_layers": 3, "channels": [8, 16, 24], "kernel_size": 3,
              "first_stride": 1, "residual": True}
    assert recipe.model_def(config, data).args["residual"] is False
    assert recipe.group(config, data) == "wild-relu-L3-c8.16.24-k3-s1-plain"
    assert {job.config["residual"] for job in recipe.jobs("small")} == {False, True}
    assert len({job.config["activation"] for job in recipe.jobs("small")}) == 6
    sample = next(iter(seen.values()))
    assert math.prod(sample.input_shape) == 64
