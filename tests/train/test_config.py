"""TrainConfig: YAML, keyword values and key=value overrides (in that order
of precedence), validation, and the config.yaml round trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from weightspace.train import TrainConfig, apply_overrides, load_config, save_config


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({
        "zoo": "zoo.h5", "model": "gmn", "epochs": 5, "lr": 0.01,
        "model_args": {"hidden": 32, "num_layers": 2},
        "mixup": {"alpha": 0.4}, "seed": 7,
    }))
    return path


def test_defaults():
    config = load_config()
    assert config == TrainConfig()
    assert config.task == "classify" and config.target == "label" and config.model == "gmn"
    assert config.mixup is None and config.augment == {} and config.resume is False


def test_yaml_is_read(config_file):
    config = load_config(config_file)
    assert (config.zoo, config.model, config.epochs, config.lr, config.seed) == ("zoo.h5", "gmn", 5, 0.01, 7)
    assert config.model_args == {"hidden": 32, "num_layers": 2}
    assert config.mixup == {"alpha": 0.4}
    # settings the file leaves out keep their defaults
    assert config.batch_size == TrainConfig().batch_size


def test_precedence_yaml_then_values_then_overrides(config_file):
    config = load_config(config_file, overrides=["epochs=3", "model_args.hidden=16",
                                                 "augment={permutation: {}}", "mixup=null"],
                         epochs=9, model="statnn", seed=11)
    assert config.epochs == 3            # override beats keyword value beats YAML
    assert config.model == "statnn"      # keyword value beats YAML
    assert config.seed == 11
    assert config.lr == 0.01             # YAML beats default
    # a dotted override changes one entry of the mapping and keeps the others
    assert config.model_args == {"hidden": 16, "num_layers": 2}
    assert config.augment == {"permutation": {}}
    assert config.mixup is None


def test_override_values_are_yaml_scalars():
    config = load_config(overrides=["lr=0.001", "resume=true", "patience=2", "device=cpu",
                                    "split_fractions={train: 0.5, val: 0.25, test: 0.25}",
                                    "augment.siren_bias_shift={p: 0.5}", "edit={op: erode, size: 5}"])
    assert config.lr == pytest.approx(1e-3) and isinstance(config.lr, float)
    assert config.resume is True and config.patience == 2 and config.device == "cpu"
    assert config.split_fractions == {"train": 0.5, "val": 0.25, "test": 0.25}
    assert config.augment == {"siren_bias_shift": {"p": 0.5}}
    assert config.edit == {"op": "erode", "size": 5}


# A dotted override of a setting whose default is a mapping changes one entry
# and keeps the others (split_fractions.train=0.7 keeps val and test).
@pytest.mark.parametrize("override, field_name, expected", [
    ("split_fractions.train=0.7", "split_fractions", {"train": 0.7, "val": 0.1, "test": 0.1}),
    ("edit.size=5", "edit", {"op": "dilate", "size": 5}),
])
def test_dotted_override_keeps_default_entries(override, field_name, expected):
    assert getattr(load_config(overrides=[override]), field_name) == expected


def test_override_creates_nested_mapping():
    values = apply_overrides({}, ["model_args.hidden=8", "model_args.num_layers=1"])
    assert values == {"model_args": {"hidden": 8, "num_layers": 1}}


@pytest.mark.parametrize("override", ["foo=1", "foo.bar=1"])
def test_unknown_override_names_it(override):
    with pytest.raises(ValueError, match="'foo'"):
        load_config(overrides=[override])


@pytest.mark.parametrize("override", ["epochs", "=3", "epochs:3"])
def test_override_without_equals(override):
    with pytest.raises(ValueError, match="key=value"):
        load_config(overrides=[override])


def test_override_into_non_mapping():
    with pytest.raises(ValueError, match="not a mapping"):
        load_config(overrides=["model_args.hidden=8", "model_args.hidden.x=1"])


def test_exponent_without_dot_is_a_float():
    # YAML 1.1 reads 1e-3 (no dot) as a string; the config coerces it
    config = load_config(overrides=["lr=1e-3", "weight_decay=5e-4", "epochs=2"])
    assert config.lr == pytest.approx(1e-3) and isinstance(config.lr, float)
    assert config.weight_decay == pytest.approx(5e-4)


def test_numbers_from_yaml_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-2\nepochs: '4'\n")
    config = load_config(path)
    assert config.lr == pytest.approx(1e-2) and config.epochs == 4


@pytest.mark.parametrize("override", ["epochs.x=1", "epochs=[1]", "lr=abc"])
def test_non_number_is_value_error(override):
    with pytest.raises(ValueError, match=override.split("=")[0].split(".")[0]):
        load_config(overrides=[override])


def test_unknown_key_in_yaml_names_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="'learning_rate'") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unknown_keyword_names_it():
    with pytest.raises(ValueError, match="'nonsense'"):
        load_config(nonsense=3)


@pytest.mark.parametrize("values, match", [
    ({"task": "segment"}, "task"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": -1}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"eval_batch_size": 0}, "eval_batch_size"),
    ({"lr": 0.0}, "lr"),
    ({"model_args": [1, 2]}, "model_args"),
])
def test_invalid_values(values, match):
    with pytest.raises(ValueError, match=match):
        load_config(**values)
    with pytest.raises(ValueError, match=match):
        TrainConfig(**values)


def test_invalid_override_value():
    with pytest.raises(ValueError, match="epochs"):
        load_config(overrides=["epochs=0"])
    with pytest.raises(ValueError, match="task"):
        load_config(overrides=["task=segment"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_config_file_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


def test_config_file_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("epochs: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(path)


def test_empty_config_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == TrainConfig()


def test_save_config_round_trip(tmp_path, config_file):
    config = load_config(config_file, overrides=["augment={permutation: {}, noise: {std: 0.01}}",
                                                 "model_args.hidden=16", "task=regress",
                                                 "target=test_accuracy", "resume=true"])
    path = tmp_path / "out" / "config.yaml"
    path.parent.mkdir()
    save_config(config, path)
    again = load_config(path)
    assert again == config
    assert dataclasses.asdict(again) == dataclasses.asdict(config)
    # the file holds every setting, in the dataclass order
    saved = yaml.safe_load(path.read_text())
    assert list(saved) == [f.name for f in dataclasses.fields(TrainConfig)]


def test_replace_validates():
    config = TrainConfig()
    assert config.replace(epochs=4).epochs == 4
    with pytest.raises(ValueError, match="epochs"):
        config.replace(epochs=0)
