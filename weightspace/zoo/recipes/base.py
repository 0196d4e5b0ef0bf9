"""What a zoo recipe is, how recipes are found, and the helpers they share.

A *recipe* turns a YAML config (``datasets/<name>.yaml``) into a deterministic
list of :class:`Job` s for a size (``tiny``, ``small``, ``full``) and runs one
job at a time: it trains networks and returns their checkpoints as
:class:`~weightspace.zoo.rows.ZooRow` s. The build driver (``weightspace zoo
build``) shards the job list over workers and writes the rows; a recipe never
touches the zoo file.

Contract:

- :meth:`Recipe.jobs` is a pure function of the config and the size: the same
  jobs, in the same order, with the same keys, on every call and machine.
- :meth:`Recipe.run` is a pure function of the job and the data: running a
  job twice gives bit-identical rows (on one thread, same torch build). It
  seeds torch itself (inside :func:`seeded`, which restores the caller's
  global RNG state afterwards), so it does not depend on what ran before.
- every row key starts with ``f"{job.key}/"``; every row's metadata has
  ``run_id`` (= ``job.key``), ``seed`` and ``diverged``.

Recipes are found by name in the ``datasets/`` folder of the repository
(:func:`available_recipes`) or by the path of a YAML file
(:func:`load_recipe`); the YAML's ``recipe`` entry names the Python class
(``package.module:Class``) that reads it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.data import Split, load_digits_split, load_npz_split
from weightspace.errors import WeightspaceError
from weightspace.spec import first_non_finite
from weightspace.zoo.errors import ZooError
from weightspace.zoo.rows import ZooRow

SIZES: tuple[str, ...] = ("tiny", "small", "full")
"""The sizes every built-in recipe defines, smallest first."""

DIGITS_SHAPE: tuple[int, int, int] = (1, 8, 8)
"""``(C, H, W)`` of scikit-learn's digits images."""


# --------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One unit of work of a recipe: a training run (classifiers) or a block
    of images (INRs).

    Attributes:
        recipe: the recipe's name.
        index: position in the recipe's full job list for the size.
        key: unique run id (``"run00042"``); every row key starts with it.
        config: JSON-able parameters of the job: sampled hyperparameters,
            seed, image indices ...
    """

    recipe: str
    index: int
    key: str
    config: Mapping[str, Any]


class Recipe(ABC):
    """Base class of the zoo recipes; one subclass per recipe.

    Subclasses implement :meth:`jobs`, :meth:`load_data` and :meth:`run`.

    Args:
        config: the parsed YAML. ``name``, ``description`` and ``sizes``
            (a mapping ``size -> settings``) are read here; the rest is the
            subclass's.
    """

    name: str = ""
    description: str = ""

    def __init__(self, config: Mapping[str, Any]) -> None:
        if not isinstance(config, Mapping):
            raise ZooError(f"recipe {type(self).__name__}: the config must be a mapping, "
                           f"got {type(config).__name__}")
        self.config: dict[str, Any] = dict(config)
        self.name = str(self.config.get("name") or type(self).name)
        self.description = str(self.config.get("description") or type(self).description)
        self.source: Path | None = None  # the YAML file, set by load_recipe
        sizes = self.config.get("sizes")
        if not isinstance(sizes, Mapping) or not sizes:
            raise ZooError(f"recipe {self.name!r}: the config needs a 'sizes' mapping "
                           f"(tiny/small/full -> settings)")
        self.seed = int(self.config.get("seed", 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @property
    def sizes(self) -> tuple[str, ...]:
        return tuple(self.config["sizes"])

    def size_config(self, size: str) -> Mapping[str, Any]:
        """The settings of ``size``; :class:`ZooError` listing the sizes otherwise."""
        sizes = self.config["sizes"]
        if size not in sizes:
            raise ZooError(f"recipe {self.name!r} has no size {size!r}; sizes: "
                           f"{', '.join(sizes)}")
        settings = sizes[size]
        if not isinstance(settings, Mapping):
            raise ZooError(f"recipe {self.name!r}: sizes.{size} must be a mapping")
        return settings

    def section(self, name: str) -> Mapping[str, Any]:
        """A mapping section of the config (``{}`` if absent)."""
        value = self.config.get(name) or {}
        if not isinstance(value, Mapping):
            raise ZooError(f"recipe {self.name!r}: '{name}' must be a mapping")
        return value

    @abstractmethod
    def jobs(self, size: str) -> list[Job]:
        """Every job of ``size``, deterministically."""

    @abstractmethod
    def load_data(self, data: str | os.PathLike | None):
        """The training data: digits (``None``) or the user's ``.npz``."""

    @abstractmethod
    def run(self, job: Job, data) -> list[ZooRow]:
        """Train the job's networks; its checkpoints as rows."""


# ----------------------------------------------------------- finding recipes
def datasets_dir() -> Path:
    """The repository's ``datasets/`` folder, where the recipe YAMLs live."""
    import weightspace

    return Path(weightspace.__file__).resolve().parents[1] / "datasets"


def available_recipes() -> list[str]:
    """Names of the recipes in :func:`datasets_dir` (the YAML file stems)."""
    folder = datasets_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml") if p.is_file())


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """A recipe by name (``"digits-cnn"`` -> ``datasets/digits-cnn.yaml``) or
    by the path of a YAML file (a copied and edited config).

    Raises:
        ZooError: unknown name (the message lists the available recipes),
            missing or malformed YAML, or a ``recipe`` class that cannot be
            imported or is not a :class:`Recipe`.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    looks_like_path = path.suffix in (".yaml", ".yml") or os.sep in text or "/" in text
    if not looks_like_path and not path.is_file():
        candidate = datasets_dir() / f"{text}.yaml"
        if not candidate.is_file():
            names = available_recipes()
            raise ZooError(f"unknown recipe {text!r}; available recipes: "
                           f"{', '.join(names) or '(none found in ' + str(datasets_dir()) + ')'}"
                           f"; or pass the path of a recipe YAML file")
        path = candidate
    if not path.is_file():
        raise ZooError(f"{path}: no such recipe file; available recipes: "
                       f"{', '.join(available_recipes())}")
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ZooError(f"{path}: not a readable YAML file ({err})") from err
    if not isinstance(config, Mapping) or "recipe" not in config:
        raise ZooError(f"{path}: a recipe YAML must be a mapping with a 'recipe' entry "
                       f"(package.module:Class)")
    cls = _recipe_class(str(config["recipe"]), path)
    try:
        recipe = cls(config)
    except ZooError as err:
        raise ZooError(f"{path}: {err}") from err
    recipe.source = path
    return recipe


def _recipe_class(target: str, path: Path) -> type[Recipe]:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ZooError(f"{path}: recipe {target!r} must be 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ZooError(f"{path}: cannot import recipe module {module_name!r} ({err})") from err
    cls = getattr(module, attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, Recipe)):
        raise ZooError(f"{path}: {target!r} is not a Recipe subclass")
    return cls


# ------------------------------------------------------------------ sampling
def derive_seed(*entropy: int) -> int:
    """A 31-bit seed from integers (``numpy.random.SeedSequence``): stable
    across runs, platforms and job blocking."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF


def job_rng(*entropy: int) -> np.random.Generator:
    """A numpy generator for sampling a job's hyperparameters."""
    return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


def sample_value(name: str, spec: Any, rng: np.random.Generator) -> Any:
    """Draw one value of a sampling spec from the YAML.

    Specs: a scalar (constant); a list (uniform choice, shorthand);
    ``{choice: [...]}``; ``{uniform: [lo, hi]}``; ``{log_uniform: [lo, hi]}``;
    ``{int_uniform: [lo, hi]}`` (both ends included).
    """
    if isinstance(spec, (list, tuple)):
        spec = {"choice": list(spec)}
    if not isinstance(spec, Mapping):
        if not isinstance(spec, (int, float, str, bool)):
            raise ZooError(f"sampling.{name}: {spec!r} is not a value or a sampling spec")
        return spec
    if len(spec) != 1:
        raise ZooError(f"sampling.{name}: give exactly one of choice, uniform, log_uniform, "
                       f"int_uniform; got {dict(spec)}")
    (kind, arg), = spec.items()
    if kind == "choice":
        options = list(arg)
        if not options:
            raise ZooError(f"sampling.{name}: empty choice")
        return options[int(rng.integers(len(options)))]
    try:
        lo, hi = arg
    except (TypeError, ValueError):
        raise ZooError(f"sampling.{name}: {kind} needs [low, high], got {arg!r}") from None
    if kind == "uniform":
        return float(rng.uniform(float(lo), float(hi)))
    if kind == "log_uniform":
        if not 0 < float(lo) <= float(hi):
            raise ZooError(f"sampling.{name}: log_uniform needs 0 < low <= high, got {arg!r}")
        return float(math.exp(rng.uniform(math.log(float(lo)), math.log(float(hi)))))
    if kind == "int_uniform":
        return int(rng.integers(int(lo), int(hi) + 1))
    raise ZooError(f"sampling.{name}: unknown sampling kind {kind!r} (choice, uniform, "
                   f"log_uniform, int_uniform)")


# --------------------------------------------------------------- determinism
@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block and restore the caller's
    state afterwards (so ``run()`` neither depends on nor disturbs it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def state_dict_copy(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the state dict (what a row stores)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def all_finite(state_dict: Mapping[str, Tensor]) -> bool:
    return first_non_finite(state_dict) is None


# ---------------------------------------------------------------------- data
@dataclass(frozen=True)
class ImageData:
    """Images for a recipe: ``split.x_*`` are ``[N, C, H, W]`` float32.

    Attributes:
        split: the arrays.
        source: ``"digits"`` or the path of the user's ``.npz``.
        dataset_index_train / dataset_index_test: for digits, the index of
            each image in ``sklearn.datasets.load_digits()``; ``None`` for
            user data.
    """

    split: Split
    source: str
    dataset_index_train: Tensor | None = None
    dataset_index_test: Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.split.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    @property
    def is_digits_shaped(self) -> bool:
        """Same image shape and classes as digits: the digits group names apply."""
        return self.image_shape == DIGITS_SHAPE and self.num_classes == 10

    def group_suffix(self) -> str:
        """``""`` for digits-shaped data, else ``"-in{C}x{H}x{W}-out{K}"`` so that
        a group name never means two different model definitions."""
        if self.is_digits_shaped:
            return ""
        c, h, w = self.image_shape
        return f"-in{c}x{h}x{w}-out{self.num_classes}"


DIGITS_SPLIT_SEED = 0
"""``load_digits_split(seed=0)``: the split every digits recipe uses."""


@functools.lru_cache(maxsize=1)
def digits_split_sizes() -> tuple[int, int]:
    """``(n_train, n_test)`` of ``load_digits_split(seed=0)``: (1348, 449)."""
    split = load_digits_split(seed=DIGITS_SPLIT_SEED)
    return len(split.y_train), len(split.y_test)


def digits_dataset_indices(n_test: int, seed: int = DIGITS_SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """Index into ``sklearn.datasets.load_digits()`` of each train and test
    image of :func:`~weightspace.data.load_digits_split` (same permutation)."""
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(seed))
    return order[n_test:], order[:n_test]


def load_image_data(data: str | os.PathLike | None) -> ImageData:
    """Digits (``data=None``: ``load_digits_split(seed=0)``, pixels in [0, 1])
    or the user's ``.npz`` (``x_train, y_train, x_test, y_test``).

    User images may be ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H*W]`` with a
    square side; they become ``[N, C, H, W]`` float32, values as given.

    Raises:
        ValueError: the message names the file (missing arrays, bad shapes,
            non-finite values, labels that are not non-negative integers).
    """
    if data is None:
        split = load_digits_split(seed=DIGITS_SPLIT_SEED)
        train_idx, test_idx = digits_dataset_indices(len(split.y_test))
        return ImageData(split, "digits", train_idx, test_idx)
    path = Path(data)
    raw = load_npz_split(path)
    xs = {}
    for part in ("train", "test"):
        x = getattr(raw, f"x_{part}")
        y = getattr(raw, f"y_{part}")
        if len(x) == 0:
            raise WeightspaceError(f"{path}: x_{part} is empty")
        if x.ndim == 2:
            side = math.isqrt(x.shape[1])
            if side * side != x.shape[1]:
                raise WeightspaceError(f"{path}: x_{part} has shape {tuple(x.shape)}; a flat image "
                                 f"[N, H*W] must have a square number of pixels")
            x = x.reshape(len(x), 1, side, side)
        elif x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.ndim != 4:
            raise WeightspaceError(f"{path}: x_{part} has shape {tuple(x.shape)}; expected images "
                             f"[N, H, W], [N, C, H, W] or [N, H*W]")
        if not bool(torch.isfinite(x).all()):
            raise WeightspaceError(f"{path}: x_{part} has non-finite values")
        if y.ndim != 1 or bool((y < 0).any()):
            raise WeightspaceError(f"{path}: y_{part} must be a 1-D array of non-negative integer "
                             f"labels, got shape {tuple(y.shape)}")
        xs[part] = x.contiguous()
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise WeightspaceError(f"{path}: x_train images are {tuple(xs['train'].shape[1:])} but x_test "
                         f"images are {tuple(xs['test'].shape[1:])}")
    split = Split(xs["train"], raw.y_train, xs["test"], raw.y_test)
    return ImageData(split, str(path))


def group_name(*parts: Any) -> str:
    """Join name parts with ``-`` (group names must not contain ``/``)."""
    return "-".join(str(p) for p in parts if p != "").replace("/", "_")


def join_ints(values: Sequence[int] | int) -> str:
    """``[16, 16, 32]`` -> ``"16.16.32"`` (a metadata/group-name friendly string)."""
    if isinstance(values, (list, tuple)):
        return ".".join(str(int(v)) for v in values)
    return str(int(values))
