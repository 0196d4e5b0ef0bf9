"""Built-in model families: small, traceable networks for model zoos.

Every model here is traceable by ``torch.fx.symbolic_trace`` and uses only
standard layers, so the weight-space spec can be derived from it without any
custom rule. Families are available by short name through
:data:`BUILTIN_MODELS` and :func:`build_model`:

================ ================================================================
``mlp``          :class:`MLP`
``siren``        :class:`SIREN` (Sitzmann et al. 2020)
``cnn``          :class:`SmallCNN` (Small-CNN-Zoo style, Unterthiner et al. 2020)
``resnet20``     :func:`resnet20` (He et al. 2016)
``vgg``          :class:`VGG` (Simonyan & Zisserman 2015)
``wildcnn``      :class:`WildCNN` (CNN Wild Park-style mixed CNNs for digits)
``tf_cnn``       ``TFCNN``: the Small CNN Zoo's Keras CNN (importer)
``inr_siren``    ``SirenINR``: DWSNets/NFN INRs (importer)
``cnn_park``     ``ParkCNN``: CNN Wild Park files (importer)
``modelzoo_cnn`` ``ModelZooCNN``: Model Zoos CNNs (importer)
================ ================================================================
"""

from __future__ import annotations

from weightspace.models.activations import ACTIVATION_NAMES, Sine, make_activation
from weightspace.models.cnn import SmallCNN
from weightspace.models.mlp import MLP
from weightspace.models.registry import (
    BUILTIN_MODELS,
    ModelFamily,
    build_model,
    default_input_shape,
)
from weightspace.models.resnet import BasicBlock, ResNet, resnet20
from weightspace.models.siren import SIREN
from weightspace.models.vgg import VGG, vgg11
from weightspace.models.wild import WildCNN

__all__ = [
    "ACTIVATION_NAMES",
    "BUILTIN_MODELS",
    "MLP",
    "SIREN",
    "VGG",
    "WildCNN",
    "BasicBlock",
    "ModelFamily",
    "ResNet",
    "Sine",
    "SmallCNN",
    "build_model",
    "default_input_shape",
    "make_activation",
    "resnet20",
    "vgg11",
]
