"""``digits-inr``: SIREN implicit neural representations of digits images
(like the INR data sets of DWSNets, Navon et al. 2023, and NFN, Zhou et al.
2023, on scikit-learn's 8x8 digits).

One SIREN (:class:`~weightspace.models.SIREN`, 2 -> 32 -> 32 -> C, w0 = 30;
the ``model`` section of the YAML) per image and *view*: views of an image
differ only in the initialisation seed. All INRs of a job are fitted at once:
their weights are stacked along a batch axis and trained with batched matrix
products; the loss is the *sum* of the INRs' mean squared errors, so each INR
gets exactly its own gradient, and Adam's state is element-wise, so the INRs
are independent. Full-batch Adam on all pixels for ``training.steps`` steps.

Initialisation (``training.init``): ``dwsnets`` (what the recipe's YAML
sets) is the one DWSNets' released INRs were fitted from (their
``nn/inr.py``): every weight ``U(-sqrt(6 / n_in) / w0, sqrt(6 / n_in) / w0)``,
every bias zero, so a fitted bias is exactly its displacement from the
initialisation; weight-space metanetworks learn far more from these INRs.
``siren`` is Sitzmann et al.'s (:class:`~weightspace.models.SIREN`: a wide
first layer, random biases), and what a config without the key gets, as
zoos built before the option were. ``training.shared_init: true`` starts every INR of a view
from the same weights.

Images and pixels:

- digits: ``weightspace.data.load_digits_split(seed=0)`` (1,348 train and 449
  test images). ``split`` and ``image_index`` of a row say which image it is:
  ``load_digits_split(seed=0).x_train[image_index]`` (or ``x_test``);
  ``dataset_index`` is its index in ``sklearn.datasets.load_digits()``.
- a user ``.npz``: ``x_train`` / ``x_test`` images (``[N, H, W]``,
  ``[N, C, H, W]`` or ``[N, H*W]`` with a square side); ``dataset_index`` is
  ``-1``. The SIREN outputs ``C`` values.
- coordinates: pixel ``(i, j)`` of an ``H x W`` image is the point
  ``(linspace(-1, 1, H)[i], linspace(-1, 1, W)[j])`` (row, column), pixels in
  row-major order (:func:`pixel_coordinates`).
- values: scaled to ``[-1, 1]`` with one affine map for the whole data set
  (``2 * (v - min) / (max - min) - 1``, min and max over ``x_train`` and
  ``x_test``; digits: ``v / 8 - 1`` of the raw 0..16 grey levels). ``mse`` is
  on this scale and ``psnr = 10 log10(2^2 / mse)`` (peak-to-peak 2), i.e. the
  PSNR of the image on a [0, 1] scale.

Jobs: the chosen train images then the chosen test images, in split order,
``images_per_job`` images (times all views) per job. Row keys
``run00003/train0042/view1``; metadata ``run_id, seed`` (the INR's init
seed), ``label, split, image_index, dataset_index, view, steps, lr, mse,
psnr, diverged``. One group: ``siren`` (``siren-c{C}`` for C-channel images).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from weightspace.models.siren import SIREN
from weightspace.zoo.errors import ZooError
from weightspace.zoo.recipes.base import (
    ImageData,
    Job,
    Recipe,
    all_finite,
    derive_seed,
    digits_split_sizes,
    load_image_data,
    seeded,
)
from weightspace.zoo.rows import ModelDef, ZooRow

SPLIT_CODES = {"train": 0, "test": 1}
PEAK_TO_PEAK = 2.0
"""Range of the fitted pixel values ([-1, 1])."""


def pixel_coordinates(height: int, width: int) -> Tensor:
    """``[H*W, 2]`` coordinates in ``[-1, 1]^2``, row-major, ``(row, column)``."""
    rows = torch.linspace(-1.0, 1.0, height)
    cols = torch.linspace(-1.0, 1.0, width)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)
    return grid.reshape(height * width, 2)


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on the [-1, 1] scale."""
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK_TO_PEAK**2 / mse)


@dataclass(frozen=True)
class INRData:
    """Images prepared for fitting.

    Attributes:
        images: the classification data (``split.x_*`` ``[N, C, H, W]``, raw values).
        targets: ``{"train": [N, H*W, C], "test": ...}`` pixel values in [-1, 1].
        coords: ``[H*W, 2]`` pixel coordinates.
    """

    images: ImageData
    targets: Mapping[str, Tensor]
    coords: Tensor

    @property
    def channels(self) -> int:
        return self.images.image_shape[0]

    def count(self, split: str) -> int:
        return len(self.targets[split])

    def label(self, split: str, index: int) -> int:
        return int(getattr(self.images.split, f"y_{split}")[index])

    def dataset_index(self, split: str, index: int) -> int:
        order = getattr(self.images, f"dataset_index_{split}")
        return -1 if order is None else int(order[index])


def prepare(images: ImageData) -> INRData:
    split = images.split
    lo = float(min(split.x_train.min(), split.x_test.min()))
    hi = float(max(split.x_train.max(), split.x_test.max()))
    span = hi - lo if hi > lo else 1.0
    targets = {}
    for part in ("train", "test"):
        x = getattr(split, f"x_{part}")
        n, c, h, w = x.shape
        scaled = 2.0 * (x - lo) / span - 1.0
        targets[part] = scaled.permute(0, 2, 3, 1).reshape(n, h * w, c).contiguous()
    _, _, h, w = split.x_train.shape
    return INRData(images, targets, pixel_coordinates(h, w))


INITS = ("siren", "dwsnets")


@torch.no_grad()
def dwsnets_init_(model: SIREN, w0: float) -> SIREN:
    """Re-initialise ``model`` in place as DWSNets' INRs were (Navon et al.
    2023, ``nn/inr.py``): every weight ``U(-sqrt(6 / n_in) / w0, +sqrt(6 /
    n_in) / w0)``, the first layer included, and every bias zero."""
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            parameter.zero_()
        else:
            bound = math.sqrt(6.0 / parameter.shape[1]) / w0
            parameter.uniform_(-bound, bound)
    return model


class DigitsINR(Recipe):
    name = "digits-inr"
    description = "SIREN INRs of digits images, several views (init seeds) per image."

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        model = self.section("model")
        self.hidden = [int(h) for h in model.get("hidden", [32, 32])]
        self.w0 = float(model.get("w0", 30.0))
        self.w0_initial = float(model.get("w0_initial", self.w0))
        training = self.section("training")
        self.steps = int(training.get("steps", 500))
        self.lr = float(training.get("lr", 1e-3))
        if self.steps < 0 or self.lr <= 0:
            raise ZooError(f"recipe {self.name!r}: training.steps must be >= 0 and "
                           f"training.lr > 0")
        self.shared_init = bool(training.get("shared_init", False))
        self.init = str(training.get("init", "siren"))
        if self.init not in INITS:
            raise ZooError(f"recipe {self.name!r}: training.init is {self.init!r}; choose one of "
                           f"{list(INITS)}")

    # -------------------------------------------------------------- jobs
    def jobs(self, size: str) -> list[Job]:
        """Blocks of images (train first, then test) times every view.

        ``sizes.<size>``: ``train_images`` / ``test_images`` (first N images
        of each split; ``null`` = all of digits), ``views``,
        ``images_per_job``. With user data the counts are capped at the data's
        in :meth:`run` (jobs beyond it return no rows).
        """
        settings = self.size_config(size)
        views = int(settings.get("views", 1))
        per_job = int(settings.get("images_per_job", 50))
        if views < 1 or per_job < 1:
            raise ZooError(f"recipe {self.name!r}: sizes.{size}: views and images_per_job "
                           f"must be positive")
        digits_counts = dict(zip(("train", "test"), digits_split_sizes(), strict=True))
        images: list[tuple[str, int]] = []
        for part in ("train", "test"):
            count = settings.get(f"{part}_images")
            count = digits_counts[part] if count is None else int(count)
            images += [(part, i) for i in range(count)]
        jobs = []
        for index, start in enumerate(range(0, len(images), per_job)):
            block = images[start:start + per_job]
            jobs.append(Job(self.name, index, f"run{index:05d}", {
                "images": [[part, i] for part, i in block],
                "views": list(range(views)),
                "steps": self.steps,
                "lr": self.lr,
                "seed": self.seed,
            }))
        return jobs

    # -------------------------------------------------------------- data
    def load_data(self, data: str | os.PathLike | None) -> INRData:
        return prepare(load_image_data(data))

    def model_def(self, data: INRData) -> ModelDef:
        args = {"in_features": 2, "hidden": list(self.hidden), "out_features": data.channels,
                "w0": self.w0, "w0_initial": self.w0_initial}
        return ModelDef("siren", args, (1, 2))

    def group(self, data: INRData) -> str:
        return "siren" if data.channels == 1 else f"siren-c{data.channels}"

    def init_seed(self, base_seed: int, split: str, index: int, view: int) -> int:
        """The init seed of one INR: depends on the image and view only, not on
        how images are blocked into jobs. With ``training.shared_init`` every
        INR of a view starts from the same weights (views still differ)."""
        if self.shared_init:
            return derive_seed(base_seed, view)
        return derive_seed(base_seed, SPLIT_CODES[split], index, view)

    # --------------------------------------------------------------- run
    def run(self, job: Job, data: INRData) -> list[ZooRow]:
        cfg = job.config
        base_seed = int(cfg["seed"])
        steps, lr = int(cfg["steps"]), float(cfg["lr"])
        members = [(str(part), int(i), int(v)) for part, i in cfg["images"]
                   for v in cfg["views"] if int(i) < data.count(str(part))]
        if not members:
            return []
        model_def = self.model_def(data)
        args = dict(model_def.args)
        group = self.group(data)

        # initial weights: one SIREN per INR, seeded by (image, view)
        seeds = [self.init_seed(base_seed, part, i, v) for part, i, v in members]
        states = []
        for seed in seeds:
            with seeded(seed):
                model = SIREN(**args)
                if self.init == "dwsnets":
                    dwsnets_init_(model, self.w0)
                states.append(model.state_dict())
        keys = list(states[0])  # net.0.weight, net.0.bias, net.2.weight, ...
        params = [torch.stack([s[k] for s in states]).requires_grad_(True) for k in keys]
        targets = torch.stack([data.targets[part][i] for part, i, _ in members])  # [B, P, C]
        coords = data.coords.expand(len(members), *data.coords.shape)  # [B, P, 2]

        w0s = [self.w0_initial] + [self.w0] * (len(self.hidden) - 1)

        def forward(ps: list[Tensor]) -> Tensor:
            h = coords
            n_linear = len(ps) // 2
            for layer in range(n_linear):
                weight, bias = ps[2 * layer], ps[2 * layer + 1]
                h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
                if layer < n_linear - 1:
                    h = torch.sin(w0s[layer] * h)
            return h

        optimizer = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            loss = ((forward(params) - targets) ** 2).mean(dim=(1, 2)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        # metrics with the rebuilt module, exactly as a user of the zoo sees it
        with seeded(base_seed):  # its random init is overwritten; keep the global RNG
            model = SIREN(**args).eval()
        rows = []
        with torch.no_grad():
            for b, (part, i, v) in enumerate(members):
                state = {k: p[b].detach().clone() for k, p in zip(keys, params, strict=True)}
                mse = inr_mse(model, state, data.coords, data.targets[part][i])
                rows.append(ZooRow(
                    key=f"{job.key}/{part}{i:05d}/view{v}",
                    group=group,
                    model=model_def,
                    params=state,
                    metadata={
                        "run_id": job.key, "seed": seeds[b], "label": data.label(part, i),
                        "split": part, "image_index": i,
                        "dataset_index": data.dataset_index(part, i), "view": v,
                        "steps": steps, "lr": lr, "mse": mse, "psnr": psnr(mse),
                        "diverged": not all_finite(state),
                    },
                ))
        return rows


@torch.no_grad()
def inr_mse(model: SIREN, state: Mapping[str, Tensor], coords: Tensor, target: Tensor) -> float:
    """Mean squared error of the SIREN with ``state`` on one image's pixels
    (``target`` ``[H*W, C]`` in [-1, 1]), accumulated in float64."""
    model.load_state_dict(state)
    out = model(coords)
    return float(((out.double() - target.double()) ** 2).mean())
