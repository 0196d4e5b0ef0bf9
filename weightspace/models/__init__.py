"""Built-in model families: small, traceable networks for model zoos.

Every model here is traceable by ``torch.fx.symbolic_trace`` and uses only
standard layers, so the weight-space spec can be derived from it without any
custom rule. Families are available by short name through
:data:`BUILTIN_MODELS` and :func:`build_model`:

============ ===========================================
``mlp``      :class:`MLP`
``siren``    :class:`SIREN` (Sitzmann et al. 2020)
``cnn``      :class:`SmallCNN` (Unterthiner et al. 2020)
``resnet20`` :func:`resnet20` (He et al. 2016)
``vgg``      :class:`VGG` (Simonyan & Zisserman 2015)
============ ===========================================
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

__all__ = [
    "ACTIVATION_NAMES",
    "BUILTIN_MODELS",
    "MLP",
    "SIREN",
    "VGG",
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
