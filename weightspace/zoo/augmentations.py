"""Weight-space augmentations by name, for training configs and the command line.

A training config names its augmentations with their arguments
(``augment: {permutation: {}, noise: {std: 0.01}}``); :data:`AUGMENTATIONS`
maps each name to its transform class of :mod:`weightspace.zoo.transforms`
and :func:`make_augmentation` builds them (the trainer does, for
:attr:`~weightspace.train.TrainConfig.augment`). An entry's parameters are the
class's constructor arguments (:meth:`~weightspace.registry.Entry.parameters`).

=====================  ======================================================
name                   transform
=====================  ======================================================
``permutation``        :class:`~weightspace.zoo.transforms.RandomPermutation`
``scaling``            :class:`~weightspace.zoo.transforms.RandomScaling`
``sign_flip``          :class:`~weightspace.zoo.transforms.RandomSignFlip`
``siren_bias_shift``   :class:`~weightspace.zoo.transforms.SirenBiasShift`
``noise``              :class:`~weightspace.zoo.transforms.GaussianNoise`
``dropout``            :class:`~weightspace.zoo.transforms.WeightDropout`
=====================  ======================================================

The first four are symmetries (the function is kept), the last two
perturbations. To add one, subclass
:class:`~weightspace.zoo.transforms.WeightTransform` and register an
:class:`~weightspace.registry.Entry` here; configs and the trainer pick it up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightspace.errors import WeightspaceError
from weightspace.registry import Entry, Registry
from weightspace.zoo.transforms import (
    Compose,
    GaussianNoise,
    RandomPermutation,
    RandomScaling,
    RandomSignFlip,
    SirenBiasShift,
    WeightDropout,
    WeightTransform,
)

__all__ = ["AUGMENTATIONS", "make_augmentation"]

AUGMENTATIONS: Registry[Entry] = Registry("augmentation", (
    Entry("permutation", RandomPermutation, "permute the hidden neurons (function kept)",
          reference="Navon et al. 2023, Equivariant Architectures for Learning in Deep "
                    "Weight Spaces, ICML 2023"),
    Entry("scaling", RandomScaling,
          "positive scaling of ReLU-like neurons, inverse on their readers (function kept)",
          reference="Neyshabur et al. 2015, Path-SGD, NeurIPS 2015"),
    Entry("sign_flip", RandomSignFlip, "negate neurons with odd activations (function kept)",
          reference="Chen, Lu and Hecht-Nielsen 1993, On the Geometry of Feedforward Neural "
                    "Network Error Surfaces"),
    Entry("siren_bias_shift", SirenBiasShift,
          "shift sine neurons' biases by whole (and half) periods (function kept)"),
    Entry("noise", GaussianNoise, "add Gaussian noise to every parameter",
          reference="Navon et al. 2023, ICML 2023"),
    Entry("dropout", WeightDropout, "zero each parameter with probability p",
          reference="Kofinas et al. 2024, Graph Neural Networks for Learning Equivariant "
                    "Representations of Neural Networks, ICLR 2024"),
), parameter="augment")
"""Weight-space augmentations by the name a training config gives them."""


def make_augmentation(spec: Mapping[str, Mapping[str, Any] | None]) -> WeightTransform | None:
    """A :class:`~weightspace.zoo.transforms.Compose` of the named
    augmentations, in order, built with their arguments; ``None`` when
    ``spec`` is empty.

    Args:
        spec: ``{name: {argument: value}}``, names of :data:`AUGMENTATIONS`.

    Raises:
        WeightspaceError: an unknown name, or an argument the transform does
            not take (``parameter="augment"``; the message lists its
            arguments).
    """
    if not spec:
        return None
    transforms = []
    for name, args in spec.items():
        entry = AUGMENTATIONS.get(name)
        args = dict(args or {})
        unknown = sorted(set(args) - set(entry.parameter_names()))
        if unknown:
            raise WeightspaceError(f"augmentation {name!r} takes no argument "
                                   f"{', '.join(map(repr, unknown))}; its arguments are "
                                   f"{', '.join(entry.parameter_names()) or 'none'}",
                                   parameter="augment")
        transforms.append(entry(**args))
    return Compose(transforms)
