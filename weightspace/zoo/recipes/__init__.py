"""Zoo recipes: the code that trains the networks of a zoo, one job at a time.

``load_recipe("digits-cnn")`` reads ``datasets/digits-cnn.yaml`` (or any
recipe YAML by path) and returns its :class:`Recipe`; ``recipe.jobs(size)``
lists the jobs of a size, ``recipe.load_data(None | "file.npz")`` the data,
and ``recipe.run(job, data)`` trains and returns the job's
:class:`~weightspace.zoo.rows.ZooRow` s. See :mod:`weightspace.zoo.recipes.base`
for the contract.

Built-in recipes:

=============== ==========================================================
``digits-inr``  SIREN INRs of digits images (:class:`DigitsINR`)
``digits-cnn``  Small CNN Zoo classifiers (:class:`DigitsCNN`)
``digits-mlp``  MLP classifiers (:class:`DigitsMLP`)
``digits-wild`` CNN Wild Park: mixed architectures (:class:`DigitsWild`)
=============== ==========================================================
"""

from __future__ import annotations

from weightspace.zoo.recipes.base import (
    SIZES,
    ImageData,
    Job,
    Recipe,
    available_recipes,
    datasets_dir,
    load_image_data,
    load_recipe,
)
from weightspace.zoo.recipes.classifier import ClassifierRecipe
from weightspace.zoo.recipes.digits_cnn import DigitsCNN
from weightspace.zoo.recipes.digits_inr import DigitsINR
from weightspace.zoo.recipes.digits_mlp import DigitsMLP
from weightspace.zoo.recipes.digits_wild import DigitsWild

__all__ = [
    "SIZES",
    "ClassifierRecipe",
    "DigitsCNN",
    "DigitsINR",
    "DigitsMLP",
    "DigitsWild",
    "ImageData",
    "Job",
    "Recipe",
    "available_recipes",
    "datasets_dir",
    "load_image_data",
    "load_recipe",
]
