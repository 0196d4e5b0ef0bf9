"""What the checkpoint jobs read, checked before anything is computed.

* :func:`load_checked` — a checkpoint file that must be a state dict of the
  architecture (the error names the file and the key) with finite weights
  (the error names the file and the entry): the spec's own
  :meth:`~weightspace.spec.WeightSpaceSpec.check_state_dict`.
* :func:`load_data` — the classification data a job scores and fine-tunes
  on, shaped for the architecture's input.
* :func:`score_state` — test loss and accuracy of one state dict, the unit
  of every job report's ``scores``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import Tensor, nn

from weightspace.classify import evaluate, load_split
from weightspace.data import Split
from weightspace.io import load_state_dict
from weightspace.spec import WeightSpaceSpec


def load_checked(path: str | os.PathLike[str], spec: WeightSpaceSpec) -> dict[str, Tensor]:
    """A checkpoint that matches ``spec`` and holds only finite values.

    Args:
        path: ``.safetensors`` or ``.pt`` state dict (loaded without running
            code, :func:`weightspace.io.load_state_dict`).
        spec: the architecture it must belong to.

    Returns:
        The state dict, in the spec's parameter order.

    Raises:
        StateDictMismatchError: a missing, extra or wrongly shaped entry (the
            message starts with the file and names the key).
        NonFiniteError: an entry with NaN or infinite values (file and entry).
        CheckpointError: a file that cannot be read safely.
    """
    state = load_state_dict(path)
    spec.check_state_dict(state, finite=True, label=str(path))
    return {name: state[name] for name in spec.offsets}


def load_data(data: str, spec: WeightSpaceSpec) -> Split:
    """``"digits"`` or an ``.npz`` file, shaped for ``spec``'s input (digits
    images are flattened for an architecture that takes vectors)."""
    return load_split(data, (1, *spec.input_shape))


def score_state(model: nn.Module, state: Mapping[str, Tensor], data: Split) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``model`` with ``state`` on the test part
    of ``data`` (mean cross-entropy; the model's own weights are not used)."""
    loss, accuracy = evaluate(model, data.x_test, data.y_test, state)
    return {"loss": loss, "accuracy": accuracy}


__all__ = ["load_checked", "load_data", "score_state"]
