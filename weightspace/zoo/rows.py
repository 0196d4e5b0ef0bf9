"""The small immutable records that flow into a zoo: what model a row is, and
the row itself.

A :class:`ModelDef` is stored (as JSON) on every zoo group so that a row
rebuilds its model without the code that trained it; a :class:`ZooRow` is one
checkpoint with its metadata, the unit that builders and importers hand to
:class:`~weightspace.zoo.writer.ZooWriter`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.zoo.errors import ZooError

MetadataValue = int | float | str | bool


@dataclass(frozen=True)
class ModelDef:
    """How to rebuild a zoo row's model.

    Attributes:
        family: a built-in family name (``"siren"``, ``"cnn"`` ...; see
            :data:`weightspace.models.BUILTIN_MODELS`) or an importable
            ``"package.module:callable"``.
        args: keyword arguments of the constructor (JSON-serialisable).
        input_shape: a batch-1 example input shape, used to trace the spec.

    Example::

        ModelDef("siren", {"hidden": [32, 32]}, (1, 2)).build()
    """

    family: str
    args: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", _jsonable(dict(self.args)))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))

    def build(self) -> nn.Module:
        """Construct the (randomly initialised) module."""
        from weightspace.models.resolve import resolve_model

        module, _ = resolve_model(self.family, dict(self.args))
        return module

    def trace(self):
        """The :class:`~weightspace.spec.WeightSpaceSpec` of the model."""
        from weightspace.spec import trace

        return trace(self.build(), self.input_shape)

    def to_json(self) -> str:
        return json.dumps(
            {"family": self.family, "args": self.args, "input_shape": list(self.input_shape)},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelDef:
        try:
            d = json.loads(text)
            return cls(d["family"], d.get("args", {}), tuple(d.get("input_shape", ())))
        except (ValueError, KeyError, TypeError) as err:
            raise ZooError(f"not a valid model definition ({err}): {text[:200]!r}") from err


def _jsonable(obj: Any) -> Any:
    """Tuples to lists, numpy scalars to Python, recursively; JSON round-trips."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


@dataclass(frozen=True)
class ZooRow:
    """One checkpoint bound for a zoo.

    Attributes:
        key: unique identifier of the row in the zoo (``"run0007/epoch3"``);
            a writer skips (resume) or refuses (merge) a key it already has.
        group: the zoo group (one architecture) the row belongs to.
        model: how to rebuild the row's model; every row of a group has the
            same one.
        params: the flat parameter vector in the spec's canonical order, or a
            state dict (flattened by the writer with the group's spec).
        metadata: column name -> scalar (label, accuracy, epoch, seed, run id,
            every hyperparameter). Names are column names of the group.
    """

    key: str
    group: str
    model: ModelDef
    params: Tensor | np.ndarray | Mapping[str, Tensor]
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ZooError(f"a zoo row needs a non-empty string key, got {self.key!r}")
        if not isinstance(self.group, str) or not self.group or "/" in self.group:
            raise ZooError(f"row {self.key!r}: group must be a non-empty name without '/', "
                           f"got {self.group!r}")
        clean: dict[str, MetadataValue] = {}
        for name, value in self.metadata.items():
            if isinstance(value, (np.generic, Tensor)):
                value = value.item()
            if not isinstance(value, (int, float, str, bool)):
                raise ZooError(f"row {self.key!r}: metadata column {name!r} must be an int, float, "
                               f"str or bool, got {type(value).__name__}")
            if not name or "/" in name or name in RESERVED_COLUMNS:
                raise ZooError(f"row {self.key!r}: {name!r} cannot be a metadata column name "
                               f"(reserved: {', '.join(RESERVED_COLUMNS)}; no '/')")
            clean[str(name)] = value
        object.__setattr__(self, "metadata", clean)

    def flat(self, spec) -> np.ndarray:
        """The parameters as a 1-D numpy array in ``spec``'s order and dtype."""
        if isinstance(self.params, Mapping):
            vector = spec.flatten(self.params)
        else:
            vector = torch.as_tensor(self.params)
        if vector.ndim != 1 or vector.numel() != spec.num_parameters:
            raise ZooError(f"row {self.key!r}: {vector.numel()} parameters (shape "
                           f"{tuple(vector.shape)}) but group {self.group!r} has "
                           f"{spec.num_parameters} per row")
        return vector.detach().to("cpu", spec.dtype).numpy()


RESERVED_COLUMNS: tuple[str, ...] = ("key", "checksum")
"""Per-row datasets every group has besides the metadata columns."""
