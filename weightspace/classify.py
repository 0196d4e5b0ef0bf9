"""Train and evaluate small classifiers: the models that alignment, merging
and pruning are demonstrated and benchmarked on (digits, or the user's
``.npz``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from weightspace.data import Split, load_digits_split, load_npz_split


def load_split(data: str, input_shape: tuple[int, ...] | None = None) -> Split:
    """``"digits"`` or a path to an ``.npz``; for digits, images are flattened
    when the model takes ``[N, 64]`` vectors (``input_shape`` of length 2)."""
    if data == "digits":
        return load_digits_split(flat=input_shape is not None and len(input_shape) == 2)
    return load_npz_split(data)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, state_dict: Mapping[str, Tensor] | None = None,
             batch_size: int = 1024) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` (or of ``model`` with
    ``state_dict``) on ``x, y`` in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    try:
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            out = model(xb) if state_dict is None else functional_call(model, dict(state_dict),
                                                                        (xb,))
            loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return loss / max(len(y), 1), correct / max(len(y), 1)


def train_classifier(model: nn.Module, data: Split, epochs: int = 10, lr: float = 3e-3,
                     batch_size: int = 64, seed: int = 0, weight_decay: float = 0.0,
                     progress: bool = False) -> nn.Module:
    """Adam on cross-entropy, a fresh shuffled order each epoch from ``seed``
    (the initialisation is the caller's). Returns ``model`` in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(epochs), desc="training", unit="epoch", disable=not progress):
        order = torch.randperm(len(data.y_train), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
