"""INR editing: images rendered from batches of INR parameters, and the
edited images a metanetwork is trained to produce.

The task follows DWSNets (Navon et al., ICML 2023) and NFN (Zhou et al.,
NeurIPS 2023): given the INR of an image, output the INR of the edited image
(dilated, eroded, …). The loss and the reported score are the mean squared
error between the output INR's image on the pixel grid and the edited image,
on the zoo's [-1, 1] pixel scale; the edited image is what an INR refitted on
it would converge to, so this is the MSE against refitted targets without
refitting noise. :func:`refit_mse_floor` measures how close refitting
actually gets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from weightspace.errors import WeightspaceError
from weightspace.functional import batched_forward
from weightspace.registry import Entry, Registry
from weightspace.spec import WeightSpaceSpec
from weightspace.zoo.recipes.base import ImageData, load_image_data
from weightspace.zoo.recipes.digits_inr import INRData, prepare


def _dilate(images: np.ndarray, *, size: int) -> np.ndarray:
    return ndimage.grey_dilation(images, size=(1, 1, size, size))


def _erode(images: np.ndarray, *, size: int) -> np.ndarray:
    return ndimage.grey_erosion(images, size=(1, 1, size, size))


def _invert(images: np.ndarray, *, lo: float, hi: float) -> np.ndarray:
    return hi + lo - images


def _identity(images: np.ndarray) -> np.ndarray:
    return images


EDIT_OPS: Registry[Entry] = Registry("edit op", (
    Entry("dilate", _dilate, "grey-scale dilation with a size x size square",
          reference="Navon et al. 2023, ICML 2023 (INR editing)"),
    Entry("erode", _erode, "grey-scale erosion with a size x size square",
          reference="Navon et al. 2023, ICML 2023 (INR editing)"),
    Entry("invert", _invert, "max + min - value"),
    Entry("identity", _identity, "the image itself (a control: reconstruct the INR)"),
), parameter="op")
"""Image edits of the editing task by name (``edit.op`` of a training config).
An op is ``f(images [N, C, H, W], **needs)``; its keyword parameters say what
it needs of ``size`` (the square's side) and ``lo`` / ``hi`` (the pixel range)."""


def render(network: nn.Module, spec: WeightSpaceSpec, params: Tensor, coords: Tensor) -> Tensor:
    """Outputs of ``B`` INRs of one architecture at the same pixel coordinates
    (:func:`~weightspace.functional.batched_forward`), differentiable in
    ``params``.

    Args:
        network: one instance of the architecture (its own values are unused).
        spec: its spec.
        params: ``[B, P]`` flat parameters.
        coords: ``[M, d_in]`` inputs (pixel coordinates; cast to ``params``'
            dtype).

    Shapes:
        - output: ``[B, M, d_out]``
    """
    return batched_forward(network, spec, params, coords.to(params.dtype))


def edit_images(images: ImageData, op: str = "dilate", size: int = 3) -> ImageData:
    """The same images, edited by ``op`` (a name of :data:`EDIT_OPS`):
    grey-scale ``dilate`` / ``erode`` with a ``size × size`` square,
    ``invert`` (``max + min - v``) or ``identity``.

    Raises:
        WeightspaceError: an unknown ``op`` (the message lists the ops).
    """
    entry = EDIT_OPS.get(op)
    split = images.split
    lo = float(min(split.x_train.min(), split.x_test.min()))
    hi = float(max(split.x_train.max(), split.x_test.max()))

    def apply(x: Tensor) -> Tensor:
        edited = entry.call_with_available(x.numpy(), size=size, lo=lo, hi=hi)
        return torch.from_numpy(np.ascontiguousarray(edited))

    edited = type(split)(apply(split.x_train), split.y_train, apply(split.x_test), split.y_test)
    # the pixel scale must be the original images' (a dilated image is brighter)
    return ImageData(edited, images.source, images.dataset_index_train, images.dataset_index_test)


@dataclass(frozen=True)
class EditTargets:
    """Edited images of every zoo row's image, on the zoo's pixel scale.

    Attributes:
        original / edited: ``{"train": [N, H*W, C], "test": ...}`` in [-1, 1]
            units of the original images.
        coords: ``[H*W, 2]`` pixel coordinates.
    """

    original: Mapping[str, Tensor]
    edited: Mapping[str, Tensor]
    coords: Tensor

    def lookup(self, splits: np.ndarray, image_index: np.ndarray, edited: bool = True) -> Tensor:
        """``[B, H*W, C]`` images of rows with these ``split`` / ``image_index`` values."""
        source = self.edited if edited else self.original
        splits = np.asarray(splits).astype(str)
        index = torch.as_tensor(np.asarray(image_index, dtype=np.int64))
        first = next(iter(source.values()))
        out = first.new_empty(len(splits), *first.shape[1:])
        for part in np.unique(splits):  # one gather per split, not per row
            if part not in source:
                raise WeightspaceError(f"row split {part!r} is not an image split "
                                       f"({sorted(source)})", parameter="splits")
            where = torch.from_numpy(np.flatnonzero(splits == part))
            out[where] = source[part][index[where]]
        return out


def edit_targets(data: str | os.PathLike | None = None, op: str = "dilate", size: int = 3) -> EditTargets:
    """Targets of the editing task for a ``digits-inr`` zoo built from
    ``data`` (``None``: scikit-learn digits)."""
    images = load_image_data(data)
    original: INRData = prepare(images)
    edited_images = edit_images(images, op, size)
    split = images.split
    lo = float(min(split.x_train.min(), split.x_test.min()))
    hi = float(max(split.x_train.max(), split.x_test.max()))
    span = hi - lo if hi > lo else 1.0
    edited = {}
    for part in ("train", "test"):
        x = getattr(edited_images.split, f"x_{part}")
        n, c, h, w = x.shape
        scaled = (2.0 * (x - lo) / span - 1.0).clamp(-1.0, 1.0)
        edited[part] = scaled.permute(0, 2, 3, 1).reshape(n, h * w, c).contiguous()
    return EditTargets(original.targets, edited, original.coords)


def refit_mse_floor(op: str = "dilate", size: int = 3, *, recipe: str | os.PathLike = "digits-inr",
                    data: str | os.PathLike | None = None, test_images: int = 200) -> float:
    """How close an INR refitted on the edited image gets to it: the mean
    squared error (the editing task's metric and scale) of INRs fitted by
    ``recipe`` (same architecture, initialisation, steps and learning rate as
    the zoo's) on the first ``test_images`` edited test images. A
    metanetwork's editing MSE is measured against the edited image itself;
    this is the error a refitted target would already carry.

    Raises:
        WeightspaceError: ``recipe`` is not an INR recipe, or ``test_images < 1``.
    """
    from weightspace.zoo.recipes.base import Job, load_recipe
    from weightspace.zoo.recipes.digits_inr import DigitsINR

    loaded = load_recipe(recipe)
    if not isinstance(loaded, DigitsINR):
        raise WeightspaceError(f"refit_mse_floor needs an INR recipe like 'digits-inr', got "
                               f"{loaded.name!r}", parameter="recipe")
    if test_images < 1:
        raise WeightspaceError(f"test_images must be at least 1, got {test_images}",
                               parameter="test_images")
    images = load_image_data(data)
    targets = edit_targets(data, op, size)
    edited = INRData(edit_images(images, op, size), targets.edited, targets.coords)
    count = min(test_images, edited.count("test"))
    job = Job(loaded.name, 0, "refit", {"images": [["test", i] for i in range(count)], "views": [0],
                                         "steps": loaded.steps, "lr": loaded.lr, "seed": loaded.seed})
    rows = loaded.run(job, edited)
    return float(np.mean([row.metadata["mse"] for row in rows]))


__all__ = ["EDIT_OPS", "EditTargets", "edit_images", "edit_targets", "refit_mse_floor", "render"]
