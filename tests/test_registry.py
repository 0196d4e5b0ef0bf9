"""The common registry shape: lookups, the unknown-name error, duplicates,
parameters read from signatures, every library registry on it, and a merge
method registered from outside that merge configs accept as they are."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from weightspace.errors import WeightspaceError
from weightspace.merge import MERGE_METHODS, MergeConfigError, MergeMethod, load_merge_config
from weightspace.merge.config import ALIGN_METHODS
from weightspace.models import BUILTIN_MODELS
from weightspace.nn import METANETWORKS
from weightspace.prune import IMPORTANCE_METHODS, PruneError
from weightspace.registry import (
    REQUIRED,
    DuplicateEntryError,
    Entry,
    Parameter,
    Registry,
    UnknownNameError,
)
from weightspace.train import TASKS
from weightspace.zoo import ZooError
from weightspace.zoo.augmentations import AUGMENTATIONS
from weightspace.zoo.importers import IMPORT_FORMATS


def halve(x, y=2, *, scale: float = 0.5, **extra):
    """A function with positional, defaulted and keyword-only parameters."""
    return (x + y) * scale


def double(x):
    return 2 * x


@pytest.fixture()
def registry() -> Registry:
    return Registry("toy method", (Entry("halve", halve, "half the sum", reference="nowhere"),
                                   Entry("double", double, "twice")), parameter="method")


# -------------------------------------------------------------------------- lookups
def test_lookup_iteration_and_membership(registry):
    assert registry.names() == ("halve", "double")
    assert list(registry) == ["halve", "double"]
    assert len(registry) == 2
    assert "halve" in registry and "triple" not in registry and 3 not in registry
    entry = registry.get("halve")
    assert registry["halve"] is entry
    assert entry.description == "half the sum" and entry.reference == "nowhere"
    assert registry["halve"](1, 3) == 2.0  # an entry calls its implementation
    assert [name for name, _ in registry.items()] == ["halve", "double"]
    assert registry.entries()[1].name == "double"


def test_unknown_name_lists_the_choices_and_names_the_argument(registry):
    with pytest.raises(UnknownNameError, match=r"unknown toy method 'halv'; choose one of "
                                               r"halve, double") as info:
        registry.get("halv")
    assert isinstance(info.value, WeightspaceError) and isinstance(info.value, KeyError)
    assert info.value.parameter == "method"
    assert str(info.value).startswith("unknown toy method")  # not quoted like a KeyError
    with pytest.raises(UnknownNameError) as info:
        registry["halv"]
    with pytest.raises(UnknownNameError) as info:
        registry.get("halv", parameter="criterion")
    assert info.value.parameter == "criterion"


def test_a_registry_may_raise_its_package_error():
    formats = Registry("zoo format", (Entry("npy", double, "arrays"),), parameter="format",
                       error=ZooError)
    with pytest.raises(ZooError, match="unknown zoo format 'csv'; choose one of npy") as info:
        formats.get("csv")
    assert info.value.parameter == "format"


def test_duplicate_registration_is_refused(registry):
    with pytest.raises(DuplicateEntryError, match="toy method 'double' is already registered"):
        registry.register(Entry("double", halve, "another"))
    assert registry.get("double").target is double
    with pytest.raises(WeightspaceError, match="Entry"):
        registry.register(double)
    removed = registry.unregister("double")
    assert removed.target is double and "double" not in registry
    assert registry.register(Entry("double", halve, "another")).target is halve


def test_parameters_are_read_from_the_signature(registry):
    params = registry.get("halve").parameters()
    assert params == (Parameter("x", REQUIRED, False), Parameter("y", 2, False),
                      Parameter("scale", 0.5, True))  # **extra is not a parameter
    assert params[0].required and not params[1].required
    entry = registry.get("halve")
    assert entry.parameter_names() == ("x", "y", "scale")
    assert entry.options() == ("scale",)
    assert entry.parameter("y").default == 2
    with pytest.raises(WeightspaceError, match="no parameter 'z'; its parameters are x, y, "
                                               "scale") as info:
        entry.parameter("z")
    assert info.value.parameter == "z"
    assert pickle.loads(pickle.dumps(REQUIRED)) is REQUIRED


def test_call_with_available_passes_what_the_signature_names(registry):
    assert registry["halve"].call_with_available(1, y=3, scale=1.0, seed=7) == 4.0
    assert registry["double"].call_with_available(5, y=3, scale=1.0) == 10


def test_class_parameters_and_lazy_targets():
    entry = Entry("linear", "torch.nn:Linear", "an affine layer")
    assert entry.load() is torch.nn.Linear
    assert entry.parameter_names()[:3] == ("in_features", "out_features", "bias")
    assert entry(2, 3).out_features == 3
    with pytest.raises(WeightspaceError, match="package.module:attribute"):
        Entry("bad", "no-colon", "x").load()
    with pytest.raises(WeightspaceError, match="non-empty name"):
        Entry("", double, "x")


# ----------------------------------------------------------- the library registries
@pytest.mark.parametrize(("registry", "names"), [
    (MERGE_METHODS, {"average", "task-arith", "ties", "dare"}),
    (ALIGN_METHODS, {"weight", "activation"}),
    (IMPORTANCE_METHODS, {"l1", "l2", "bn", "taylor", "random"}),
    (TASKS, {"classify", "regress", "edit"}),
    (AUGMENTATIONS, {"permutation", "scaling", "sign_flip", "siren_bias_shift", "noise",
                     "dropout"}),
    (METANETWORKS, {"gmn", "transformer", "deepsets", "nfn-np", "nfn-hnp", "dwsnet", "statnn",
                    "flat-mlp"}),
    (IMPORT_FORMATS, {"small-cnn-zoo", "inr-folder", "cnn-wild-park", "model-zoos"}),
    (BUILTIN_MODELS, {"mlp", "siren", "cnn", "resnet20", "vgg", "wildcnn", "tf_cnn",
                      "inr_siren", "cnn_park", "modelzoo_cnn"}),
])
def test_every_library_registry_has_the_common_shape(registry, names):
    assert isinstance(registry, Registry) and set(registry.names()) == names
    for entry in registry.entries():
        assert isinstance(entry, Entry) and entry.description
        assert callable(entry.load())
        entry.parameters()  # readable from the signature
    with pytest.raises(WeightspaceError, match=f"unknown {registry.kind}"):
        registry.get("no-such-name")


def test_merge_method_entries_read_their_parameters():
    dare = MERGE_METHODS["dare"]
    assert dare.needs_base and not MERGE_METHODS["average"].needs_base
    assert {p.name: p.default for p in dare.global_parameters()} == {
        "density": 0.5, "scaling": 1.0, "seed": 0, "rescale": True, "ties": False}
    assert dare.model_parameters() == ("weight", "density")
    assert dare.needs_positive_weights({"ties": True})
    assert not dare.needs_positive_weights({})
    assert dare.check("seed", 3) == 3
    with pytest.raises(WeightspaceError, match="seed must be an integer") as info:
        dare.check("seed", 1.5)
    assert info.value.parameter == "seed"
    with pytest.raises(WeightspaceError, match=r"density must be in \(0, 1\]"):
        dare.check("density", 0.0)
    with pytest.raises(WeightspaceError, match="is not a parameter"):
        MergeMethod("broken", double, "x", per_model=("density",))


def test_importance_entries_and_errors():
    assert [c.name for c in IMPORTANCE_METHODS.entries() if c.kind == "magnitude"] == [
        "l1", "l2", "bn"]
    assert IMPORTANCE_METHODS["taylor"].options() == ("model", "batches")
    with pytest.raises(PruneError, match="unknown importance 'l3'") as info:
        IMPORTANCE_METHODS.get("l3")
    assert info.value.parameter == "method"


# ------------------------------------------------- a merge method from outside merge/
def scaled_average(states, weights=None, *, gamma: float = 1.0, shift: int = 0):
    """``gamma`` times the plain mean, plus ``shift``: a method the config has never seen."""
    out = {}
    for key in states[0]:
        stacked = torch.stack([s[key].float() for s in states])
        out[key] = gamma * stacked.mean(0) + shift
    return out


@pytest.fixture()
def scaled_method():
    entry = MERGE_METHODS.register(MergeMethod(
        "scaled", scaled_average, "gamma times the mean, plus shift",
        aliases={"scaled_shifted": {"shift": 1}}))
    yield entry
    MERGE_METHODS.unregister("scaled")


def test_a_registered_merge_method_is_accepted_by_configs(tmp_path: Path, scaled_method):
    for name in ("a.pt", "b.pt"):
        torch.save({"w": torch.zeros(1)}, tmp_path / name)
    path = tmp_path / "merge.yaml"
    path.write_text("merge_method: scaled\nmodels: [a.pt, b.pt]\nparameters: {gamma: 3}\n")
    config = load_merge_config(path)
    assert config.merge_method == "scaled" and config.base_model is None
    assert config.parameters == {"gamma": 3.0}
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 4.0])}]
    torch.testing.assert_close(config.merge(states)["w"], torch.tensor([6.0, 9.0]))

    path.write_text("merge_method: scaled_shifted\nmodels: [a.pt, b.pt]\n")
    config = load_merge_config(path)
    assert config.merge_method == "scaled" and config.parameters == {"shift": 1}
    torch.testing.assert_close(config.merge(states)["w"], torch.tensor([3.0, 4.0]))

    bad = [("parameters: {gamma: yes}\n", "parameters.gamma"),
           ("parameters: {shift: 0.5}\n", "parameters.shift"),
           ("parameters: {density: 0.5}\n", "parameters.density"),
           ("base_model: a.pt\n", "base_model")]
    for extra, field in bad:
        path.write_text("merge_method: scaled\nmodels: [a.pt, b.pt]\n" + extra)
        with pytest.raises(MergeConfigError) as info:
            load_merge_config(path)
        assert f"field {field!r}" in str(info.value), str(info.value)


def test_an_unregistered_method_is_refused_again(tmp_path: Path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "a.pt")
    path = tmp_path / "merge.yaml"
    path.write_text("merge_method: scaled\nmodels: [a.pt]\n")
    with pytest.raises(MergeConfigError, match="unknown method 'scaled'.*dare_ties"):
        load_merge_config(path)


def test_entry_kinds_are_checked():
    from weightspace.nn import Metanetwork
    from weightspace.prune import ImportanceCriterion

    with pytest.raises(WeightspaceError, match="kind 'learned' is not one of magnitude") as info:
        ImportanceCriterion("meta", double, "x", kind="learned")
    assert info.value.parameter == "kind"
    with pytest.raises(WeightspaceError, match="input 'sequence' is not one of graph, flat"):
        Metanetwork("rnn", double, "x", input="sequence")
