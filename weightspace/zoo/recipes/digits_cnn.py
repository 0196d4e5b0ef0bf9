"""``digits-cnn``: Small CNN Zoo networks on digits (Unterthiner et al. 2020).

Every run trains :class:`~weightspace.models.SmallCNN` (three strided 3x3
convolutions, global average pooling, a linear classifier; the ``model``
section of the YAML) with hyperparameters sampled as in the Small CNN Zoo
(activation, initialisation and its scale, learning rate, L2, dropout,
optimiser, train fraction, batch size, seed) and stores checkpoints at the
``training.checkpoint_epochs``. One group per activation: ``cnn-<activation>``
(with ``-in{C}x{H}x{W}-out{K}`` appended for data not shaped like digits).
See :mod:`weightspace.zoo.recipes.classifier` for training and metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightspace.zoo.recipes.base import ImageData, group_name
from weightspace.zoo.recipes.classifier import ClassifierRecipe
from weightspace.zoo.rows import ModelDef


class DigitsCNN(ClassifierRecipe):
    name = "digits-cnn"
    description = "Small CNN Zoo classifiers (SmallCNN) on digits, sampled hyperparameters."
    family = "cnn"

    def model_def(self, job_config: Mapping[str, Any], data: ImageData) -> ModelDef:
        model = self.section("model")
        c, h, w = data.image_shape
        args = {
            "in_channels": c,
            "channels": list(model.get("channels", [16, 16, 16])),
            "kernel_size": int(model.get("kernel_size", 3)),
            "stride": int(model.get("stride", 2)),
            "activation": str(job_config["activation"]),
            "num_classes": data.num_classes,
        }
        return ModelDef(self.family, args, (1, c, h, w))

    def group(self, job_config: Mapping[str, Any], data: ImageData) -> str:
        return group_name("cnn", job_config["activation"]) + data.group_suffix()
