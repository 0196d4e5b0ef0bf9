"""``digits-mlp``: MLP classifiers on flattened digits.

Every run trains :class:`~weightspace.models.MLP` (``in_features`` = pixels
of an image, 64 for digits, -> ``model.hidden`` -> classes) with the
hyperparameters of :mod:`weightspace.zoo.recipes.digits_cnn` (Small CNN Zoo
style sampling) and stores checkpoints at the ``training.checkpoint_epochs``.
One group per activation: ``mlp-<activation>`` (with ``-in{C}x{H}x{W}-out{K}``
appended for data not shaped like digits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from weightspace.zoo.recipes.base import ImageData, group_name
from weightspace.zoo.recipes.classifier import ClassifierRecipe
from weightspace.zoo.rows import ModelDef


class DigitsMLP(ClassifierRecipe):
    name = "digits-mlp"
    description = "MLP classifiers on flattened digits, sampled hyperparameters."
    family = "mlp"

    def inputs(self, data: ImageData) -> tuple[Tensor, Tensor]:
        x_train, x_test = data.split.x_train, data.split.x_test
        return x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)

    def model_def(self, job_config: Mapping[str, Any], data: ImageData) -> ModelDef:
        model = self.section("model")
        features = math.prod(data.image_shape)
        args = {
            "in_features": features,
            "hidden": [int(h) for h in model.get("hidden", [32, 32])],
            "out_features": data.num_classes,
            "activation": str(job_config["activation"]),
        }
        return ModelDef(self.family, args, (1, features))

    def group(self, job_config: Mapping[str, Any], data: ImageData) -> str:
        return group_name("mlp", job_config["activation"]) + data.group_suffix()
