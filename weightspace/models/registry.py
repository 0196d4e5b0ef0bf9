"""Registry of the built-in model families, looked up by short name.

The CLI, configs and zoo files name an architecture with a short string
(``"mlp"``, ``"resnet20"`` ...) plus keyword arguments; :func:`build_model`
turns that into a module and :func:`default_input_shape` into an example
input for tracing, without the caller importing any model class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.cnn import SmallCNN
from weightspace.models.cnn_park import ParkCNN
from weightspace.models.inr_siren import SirenINR
from weightspace.models.mlp import MLP
from weightspace.models.model_zoos import ZOO_VARIANTS, ModelZooCNN
from weightspace.models.resnet import resnet20
from weightspace.models.siren import SIREN
from weightspace.models.tf_cnn import TFCNN
from weightspace.models.vgg import VGG
from weightspace.models.wild import WildCNN
from weightspace.registry import Entry, Registry, UnknownNameError

# Side length of the built-in digits data (sklearn's 8x8 handwritten digits),
# the image size every family's default input shape is made for.
DIGITS_SIZE = 8


@dataclass(frozen=True, kw_only=True)
class ModelFamily(Entry):
    """One built-in architecture family.

    Attributes:
        name: short name used in configs and on the command line.
        target: class or factory function building the module (also
            :attr:`constructor`).
        description: one line for ``--help`` texts and listings.
        reference: the paper the architecture comes from.
        default_input_shape: maps the constructor's keyword arguments, with
            every default filled in, to a batch-1 example input shape.
    """

    default_input_shape: Callable[[dict[str, Any]], tuple[int, ...]]

    @property
    def constructor(self) -> Callable[..., nn.Module]:
        """The class or factory function building the module."""
        return self.load()

    def accepted_arguments(self) -> tuple[str, ...]:
        """Names of the keyword arguments the constructor accepts."""
        return self.parameter_names()

    def resolve_arguments(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``kwargs`` with the constructor's defaults filled in.

        Raises:
            WeightspaceError: an argument the constructor does not accept (or
                a missing required one); the message names the family, the
                argument and the accepted arguments.
        """
        signature = inspect.signature(self.constructor)
        try:
            bound = signature.bind(**kwargs)
        except TypeError as err:
            unknown = [key for key in kwargs if key not in signature.parameters]
            problem = (
                f"unexpected argument(s) {', '.join(map(repr, unknown))}" if unknown else str(err)
            )
            raise WeightspaceError(
                f"Model family {self.name!r}: {problem}. "
                f"Accepted arguments: {', '.join(signature.parameters)}.",
                parameter="model_args",
            ) from err
        bound.apply_defaults()
        return dict(bound.arguments)


BUILTIN_MODELS: Registry[ModelFamily] = Registry("model family", (
    ModelFamily(
        name="mlp",
        target=MLP,
        description="Multilayer perceptron on flattened inputs (64 = 8x8 digits).",
        default_input_shape=lambda a: (1, a["in_features"]),
    ),
    ModelFamily(
        name="siren",
        target=SIREN,
        description="SIREN implicit neural representation (Sitzmann et al. 2020).",
        default_input_shape=lambda a: (1, a["in_features"]),
    ),
    ModelFamily(
        name="cnn",
        target=SmallCNN,
        description="Small-CNN-Zoo-style CNN for 8x8 digits (same-padded; see tf_cnn).",
        default_input_shape=lambda a: (1, a["in_channels"], DIGITS_SIZE, DIGITS_SIZE),
    ),
    ModelFamily(
        name="resnet20",
        target=resnet20,
        description="CIFAR-style ResNet-20 (He et al. 2016), batch/layer/group/no norm.",
        default_input_shape=lambda a: (1, a["in_channels"], DIGITS_SIZE, DIGITS_SIZE),
    ),
    ModelFamily(
        name="vgg",
        target=VGG,
        description="VGG-style network with conv -> linear flatten (Simonyan & Zisserman 2015).",
        default_input_shape=lambda a: (1, a["in_channels"], a["input_size"], a["input_size"]),
    ),
    ModelFamily(
        name="wildcnn",
        target=WildCNN,
        description="Mixed plain/residual CNNs of CNN Wild Park (Kofinas et al. 2024).",
        default_input_shape=lambda a: (1, a["in_channels"], DIGITS_SIZE, DIGITS_SIZE),
    ),
    ModelFamily(
        name="tf_cnn",
        target=TFCNN,
        description="Keras CNN of the Small CNN Zoo: valid-padded strided convs, GAP, dense.",
        default_input_shape=lambda a: (1, a["in_channels"], 28, 28),
    ),
    ModelFamily(
        name="inr_siren",
        target=SirenINR,
        description="SIREN INR with an output offset (DWSNets/NFN INR data sets).",
        default_input_shape=lambda a: (1, a["in_features"]),
    ),
    ModelFamily(
        name="cnn_park",
        target=ParkCNN,
        description="CNN Wild Park network with its keys and residuals (Kofinas et al. 2024).",
        default_input_shape=lambda a: (1, a["channels"][0], 32, 32),
    ),
    ModelFamily(
        name="modelzoo_cnn",
        target=ModelZooCNN,
        description="CNN / CNN2 / CNN3 of the Model Zoos data set (Schürholt et al. 2022).",
        default_input_shape=lambda a: (1, a["channels_in"], ZOO_VARIANTS[a["variant"]][0],
                                       ZOO_VARIANTS[a["variant"]][0]),
    ),
), parameter="model")
"""Built-in model families by short name."""


def get_family(name: str) -> ModelFamily:
    """Return the :class:`ModelFamily` called ``name``.

    Raises:
        WeightspaceError: unknown name; the message lists the built-in names.
    """
    if name not in BUILTIN_MODELS:
        # keeps the wording users and tests know ("Unknown model family …
        # Built-in families are: …"), still an UnknownNameError like the registry's
        raise UnknownNameError(f"Unknown model family {name!r}. Built-in families are: "
                               f"{', '.join(BUILTIN_MODELS)}.", parameter="model")
    return BUILTIN_MODELS.get(name)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the built-in model ``name`` with keyword arguments ``kwargs``.

    Example::

        model = build_model("resnet20", width=2, norm="layer")

    Raises:
        WeightspaceError: unknown family name, or an argument the family does
            not accept (the message lists the accepted arguments).
    """
    family = get_family(name)
    # Check the arguments against the signature first, so that a TypeError
    # raised *inside* the constructor is not mistaken for a bad argument name.
    family.resolve_arguments(kwargs)
    return family.constructor(**kwargs)


def default_input_shape(name: str, **kwargs: Any) -> tuple[int, ...]:
    """Batch-1 example input shape for ``build_model(name, **kwargs)``.

    Image families assume the 8x8 digits data (``vgg`` uses its
    ``input_size``); ``mlp`` and ``siren`` use ``(1, in_features)``.

    Raises:
        WeightspaceError: as :func:`build_model`.
    """
    family = get_family(name)
    return tuple(family.default_input_shape(family.resolve_arguments(kwargs)))
