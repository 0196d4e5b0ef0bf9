"""Data that needs no download: scikit-learn's digits, or the user's ``.npz``.

Nothing here fetches anything at run time. ``load_digits`` ships inside
scikit-learn (1,797 8×8 grey images, 10 classes); a user's own data comes as an
``.npz`` with the arrays ``x_train, y_train, x_test, y_test``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from weightspace.errors import WeightspaceError


@dataclass(frozen=True)
class Split:
    """A classification data set as tensors.

    Shapes:
        x_train: ``[N, *sample]`` float32, y_train: ``[N]`` long (same for test).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_digits_split(test_fraction: float = 0.25, seed: int = 0, flat: bool = False) -> Split:
    """scikit-learn's digits, scaled to [0, 1], as ``[N, 1, 8, 8]`` images
    (or ``[N, 64]`` with ``flat=True``), split with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    x = x.reshape(len(y), 64) if flat else x.unsqueeze(1)
    n_test = int(round(len(y) * test_fraction))
    return Split(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def load_npz_split(path: str | Path) -> Split:
    """A user's data: an ``.npz`` with ``x_train, y_train, x_test, y_test``."""
    path = Path(path)
    if not path.is_file():
        raise WeightspaceError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
            if missing:
                raise WeightspaceError(f"{path}: missing arrays {missing}; expected x_train, y_train, "
                                 f"x_test, y_test")
            arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise WeightspaceError(f"{path}: not a readable .npz file ({err})") from err
    for part in ("train", "test"):
        if len(arrays[f"x_{part}"]) != len(arrays[f"y_{part}"]):
            raise WeightspaceError(f"{path}: x_{part} has {len(arrays[f'x_{part}'])} rows but y_{part} "
                             f"has {len(arrays[f'y_{part}'])}")
    return Split(
        torch.as_tensor(arrays["x_train"], dtype=torch.float32),
        torch.as_tensor(arrays["y_train"], dtype=torch.long),
        torch.as_tensor(arrays["x_test"], dtype=torch.float32),
        torch.as_tensor(arrays["y_test"], dtype=torch.long),
    )
