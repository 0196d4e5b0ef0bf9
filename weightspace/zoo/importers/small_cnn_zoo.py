"""Reader of the Small CNN Zoo (Unterthiner et al. 2020).

A zoo folder (one per data set: ``mnist``, ``fashion_mnist``, ``cifar10``,
``svhn_cropped``) holds

* ``weights.npy``: ``[N, P]`` float32, one row per checkpoint, every variable
  flattened in TensorFlow layout (conv kernel ``(kh, kw, in, out)``, dense
  kernel ``(in, out)``);
* ``layout.csv``: ``varname, start_idx, end_idx, shape`` per variable
  (``sequential/conv2d/kernel:0``, ``sequential/conv2d/bias:0``, ...,
  ``sequential/dense/bias:0``), the columns ``[start_idx, end_idx)`` of the
  rows it occupies;
* ``metrics.csv.gz``: one row per weights row: the ``config.*`` flags of the
  training run, ``modeldir`` (the run), ``step`` and the train/test accuracy
  and loss of the checkpoint.

The network is ``tf.keras`` ``Conv2D(16, 3, strides=2)`` x 3 with the default
"valid" padding, global average pooling and ``Dense(10)``
(``dnn_predict_accuracy/train_network.py``, ``build_cnn``); it is rebuilt as
the ``tf_cnn`` family.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightspace.models.tf_cnn import KERAS_ACTIVATIONS
from weightspace.zoo.errors import ZooError
from weightspace.zoo.importers._common import (
    column_name,
    group_name,
    is_number_text,
    parse_text,
    require_dir,
    require_file,
)
from weightspace.zoo.rows import ModelDef, ZooRow

WEIGHTS_FILE = "weights.npy"
LAYOUT_FILE = "layout.csv"
METRICS_FILE = "metrics.csv.gz"
LAYOUT_COLUMNS = ("varname", "start_idx", "end_idx", "shape")

# config.dataset -> input side length (the zoo's images are grey-scale).
INPUT_SIZES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32}

_VARIABLE = re.compile(r"^(?P<layer>.+)/(?P<kind>kernel|bias)(:\d+)?$")


@dataclass(frozen=True)
class _Variable:
    varname: str
    start: int
    end: int
    shape: tuple[int, ...]
    line: int


@dataclass(frozen=True)
class _Layer:
    name: str
    kernel: _Variable
    bias: _Variable


def read_small_cnn_zoo(
    path: str | os.PathLike[str],
    *,
    input_size: int | None = None,
    steps: Iterable[int] | None = None,
    group_prefix: str | None = None,
) -> Iterator[ZooRow]:
    """Stream the checkpoints of a Small CNN Zoo folder as :class:`ZooRow` s.

    ``weights.npy`` is memory-mapped and read one row at a time. Each row's
    parameters come as a flat vector in the ``tf_cnn`` spec's order, already
    converted to PyTorch layout.

    Rows: key ``"<modeldir>/step<step>"``; group ``"<dataset>_<activation>"``
    (the activation is part of the architecture); metadata: every column of
    ``metrics.csv.gz`` (``config.*``, ``modeldir``, ``step``,
    ``test_accuracy``, ``test_loss``, ``train_accuracy``, ``train_loss``)
    plus ``run_id`` (= ``modeldir``).

    Args:
        path: the folder holding the three files.
        input_size: image side length for the model definition; default from
            ``config.dataset`` (28 for MNIST / Fashion-MNIST, 32 for
            CIFAR10-GS / SVHN-GS).
        steps: keep only checkpoints at these steps (e.g. ``[86]``, the end
            of training).
        group_prefix: prefix of the group names.

    Raises:
        ZooError: a missing file, a ``layout.csv`` whose ranges do not tile
            the rows of ``weights.npy``, a ``metrics.csv.gz`` with another
            number of rows than ``weights.npy``, an unsupported variable or
            activation; the message names the file and line.
    """
    root = require_dir(path, f"a Small CNN Zoo folder holding {WEIGHTS_FILE}, {LAYOUT_FILE} "
                             f"and {METRICS_FILE}")
    expected = (f"a Small CNN Zoo folder holds {WEIGHTS_FILE} ([N, P] float32, one row per "
                f"checkpoint), {LAYOUT_FILE} (varname, start_idx, end_idx, shape per variable) "
                f"and {METRICS_FILE} (one row per checkpoint)")
    weights_path = require_file(root / WEIGHTS_FILE, expected)
    layout_path = require_file(root / LAYOUT_FILE, expected)
    metrics_path = require_file(root / METRICS_FILE, expected)

    try:
        weights = np.load(weights_path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise ZooError(f"{weights_path}: not a readable .npy array ({err})") from err
    if weights.ndim != 2:
        raise ZooError(f"{weights_path}: expected a 2-D array [checkpoints, parameters], got "
                       f"shape {list(weights.shape)}")
    layers = _read_layout(layout_path, int(weights.shape[1]), weights_path)
    header, numeric, n_rows = _scan_metrics(metrics_path)
    if n_rows != weights.shape[0]:
        raise ZooError(f"{metrics_path} has {n_rows} rows but {weights_path} has "
                       f"{weights.shape[0]}; there must be one metrics row per weights row")
    for column in ("modeldir", "step", "config.activation"):
        if column not in header:
            raise ZooError(f"{metrics_path}: missing column {column!r} (found "
                           f"{', '.join(h for h in header if h)})")
    keep = None if steps is None else {int(s) for s in steps}
    return _rows(root, weights, layers, metrics_path, header, numeric, input_size, keep,
                 group_prefix)


# ---------------------------------------------------------------- layout.csv
def _read_layout(path: Path, width: int, weights_path: Path) -> list[_Layer]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        missing = [c for c in LAYOUT_COLUMNS if c not in fields]
        if missing:
            raise ZooError(f"{path}: missing column(s) {', '.join(missing)}; the header is "
                           f"{fields} but {LAYOUT_FILE} needs {', '.join(LAYOUT_COLUMNS)}")
        reader.fieldnames = fields
        variables = []
        for row in reader:
            line = reader.line_num
            name = (row["varname"] or "").strip()
            try:
                start, end = int(row["start_idx"]), int(row["end_idx"])
            except (TypeError, ValueError):
                raise ZooError(f"{path} line {line} ({name}): start_idx/end_idx "
                               f"{row['start_idx']!r}, {row['end_idx']!r} are not integers") from None
            shape = tuple(int(s) for s in re.findall(r"\d+", row["shape"] or ""))
            if end - start != math.prod(shape) or end < start:
                raise ZooError(f"{path} line {line} ({name}): range [{start}, {end}) holds "
                               f"{end - start} values but shape {shape} needs {math.prod(shape)}")
            variables.append(_Variable(name, start, end, shape, line))
    if not variables:
        raise ZooError(f"{path}: no variables listed")
    position = 0
    for v in sorted(variables, key=lambda v: (v.start, v.end)):
        if v.start != position:
            what = "overlaps the previous variable" if v.start < position else (
                f"leaves columns [{position}, {v.start}) of {WEIGHTS_FILE} unassigned")
            raise ZooError(f"{path} line {v.line} ({v.varname}): range [{v.start}, {v.end}) "
                           f"{what}")
        position = v.end
    if position != width:
        raise ZooError(f"{path}: the variables cover columns [0, {position}) but the rows of "
                       f"{weights_path} have {width} values; layout and weights do not match")

    by_layer: dict[str, dict[str, _Variable]] = {}
    for v in variables:
        found = _VARIABLE.match(v.varname)
        if not found:
            raise ZooError(
                f"{path} line {v.line}: unsupported variable {v.varname!r}; Small CNN Zoo "
                f"networks have only '<layer>/kernel:0' and '<layer>/bias:0' variables (batch "
                f"norm, the 'cnnbn' architecture, is not supported)")
        entry = by_layer.setdefault(found["layer"], {})
        if found["kind"] in entry:
            raise ZooError(f"{path} line {v.line}: {v.varname!r} is listed twice")
        entry[found["kind"]] = v
    layers = []
    for name, entry in by_layer.items():
        if set(entry) != {"kernel", "bias"}:
            missing = ({"kernel", "bias"} - set(entry)).pop()
            raise ZooError(f"{path}: layer {name!r} has no {missing} variable")
        layers.append(_Layer(name, entry["kernel"], entry["bias"]))

    def order(layer: _Layer) -> tuple:
        suffix = re.search(r"_(\d+)$", layer.name)
        return (len(layer.kernel.shape) == 2, int(suffix.group(1)) if suffix else 0,
                layer.kernel.start)

    layers.sort(key=order)
    _check_architecture(path, layers)
    return layers


def _check_architecture(path: Path, layers: list[_Layer]) -> None:
    convs, dense = layers[:-1], layers[-1]
    if not convs or len(dense.kernel.shape) != 2 or any(len(c.kernel.shape) != 4 for c in convs):
        raise ZooError(f"{path}: expected conv kernels (kh, kw, in, out) followed by one dense "
                       f"kernel (in, out), found shapes "
                       f"{[(layer.name, layer.kernel.shape) for layer in layers]}")
    width = convs[0].kernel.shape[2]
    kernel = convs[0].kernel.shape[:2]
    for layer in layers:
        k = layer.kernel.shape
        if k[-2] != width:
            raise ZooError(f"{path} line {layer.kernel.line}: {layer.kernel.varname} expects "
                           f"{k[-2]} inputs but the previous layer has {width} outputs")
        if len(k) == 4 and (k[:2] != kernel or k[0] != k[1]):
            raise ZooError(f"{path} line {layer.kernel.line}: {layer.kernel.varname} has kernel "
                           f"{k[:2]}; the zoo's convolutions share one square kernel size")
        if layer.bias.shape != (k[-1],):
            raise ZooError(f"{path} line {layer.bias.line}: {layer.bias.varname} has shape "
                           f"{layer.bias.shape}, expected ({k[-1]},)")
        width = k[-1]


def _model_args(layers: list[_Layer], activation: str, stride: int) -> dict[str, Any]:
    convs = layers[:-1]
    return {
        "in_channels": convs[0].kernel.shape[2],
        "channels": [c.kernel.shape[3] for c in convs],
        "kernel_size": convs[0].kernel.shape[0],
        "stride": stride,
        "activation": activation,
        "num_classes": layers[-1].kernel.shape[1],
    }


def _gather_index(model: ModelDef, layers: list[_Layer]) -> np.ndarray:
    """For the spec's flat order, the column of ``weights.npy`` to take."""
    def columns(v: _Variable) -> torch.Tensor:
        return torch.arange(v.start, v.end, dtype=torch.int64).reshape(v.shape)

    index = {}
    for i, layer in enumerate(layers[:-1]):
        index[f"features.{2 * i}.weight"] = columns(layer.kernel).permute(3, 2, 0, 1)
        index[f"features.{2 * i}.bias"] = columns(layer.bias)
    index["classifier.weight"] = columns(layers[-1].kernel).T
    index["classifier.bias"] = columns(layers[-1].bias)
    return model.trace().flatten(index, dtype=torch.int64).numpy()


# --------------------------------------------------------------- metrics.csv
def _open_metrics(path: Path) -> io.TextIOWrapper:
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")


def _scan_metrics(path: Path) -> tuple[list[str], list[bool], int]:
    """Header, whether each column is numeric throughout, number of rows."""
    try:
        with _open_metrics(path) as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ZooError(f"{path}: empty file, expected a CSV header and one row per "
                               f"checkpoint")
            header = [h.strip() for h in header]
            numeric = [True] * len(header)
            count = 0
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise ZooError(f"{path} line {reader.line_num}: {len(row)} fields but the "
                                   f"header has {len(header)}")
                for j, cell in enumerate(row):
                    if numeric[j] and not is_number_text(cell):
                        numeric[j] = False
                count += 1
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, csv.Error) as err:
        raise ZooError(f"{path}: unreadable gzip-compressed CSV ({err})") from err
    return header, numeric, count


def _rows(root: Path, weights: np.ndarray, layers: list[_Layer], metrics_path: Path,
          header: list[str], numeric: list[bool], input_size: int | None,
          keep: set[int] | None, group_prefix: str | None) -> Iterator[ZooRow]:
    names = [column_name(h) for h in header]
    at = {h: j for j, h in enumerate(header)}
    models: dict[tuple, tuple[ModelDef, str, np.ndarray]] = {}
    seen: dict[str, int] = {}
    with _open_metrics(metrics_path) as handle:
        reader = csv.reader(handle)
        next(reader)
        index = -1
        for row in reader:
            if not row:
                continue
            index += 1
            line = reader.line_num
            where = f"{metrics_path} line {line}"
            metadata: dict[str, Any] = {}
            for j, cell in enumerate(row):
                if names[j] is None:
                    continue
                value = parse_text(cell) if numeric[j] else (cell if cell.strip() else None)
                if value is not None:
                    metadata[names[j]] = value
            step = metadata.get("step")
            if not isinstance(step, int):
                raise ZooError(f"{where}: step {row[at['step']]!r} is not an integer")
            if keep is not None and step not in keep:
                continue
            modeldir = row[at["modeldir"]].strip()
            if not modeldir:
                raise ZooError(f"{where}: empty modeldir")
            key = f"{modeldir}/step{step}"
            if key in seen:
                raise ZooError(f"{where}: modeldir {modeldir!r} step {step} is also on line "
                               f"{seen[key]}; checkpoints must be unique")
            seen[key] = line
            model, group, gather = _model_for(row, at, layers, input_size, root, where,
                                              group_prefix, models)
            metadata["run_id"] = modeldir
            params = np.asarray(weights[index], dtype=np.float32)[gather]
            yield ZooRow(key=key, group=group, model=model, params=params, metadata=metadata)


def _model_for(row: list[str], at: dict[str, int], layers: list[_Layer],
               input_size: int | None, root: Path, where: str, group_prefix: str | None,
               cache: dict) -> tuple[ModelDef, str, np.ndarray]:
    def cell(column: str, default: str = "") -> str:
        return row[at[column]].strip() if column in at else default

    activation = cell("config.activation").lower()
    if activation not in KERAS_ACTIVATIONS:
        raise ZooError(f"{where}: config.activation {activation!r} is not supported "
                       f"({', '.join(KERAS_ACTIVATIONS)})")
    architecture = cell("config.dnn_architecture", "cnn")
    if architecture != "cnn":
        raise ZooError(f"{where}: config.dnn_architecture {architecture!r} is not supported; "
                       f"the Small CNN Zoo reader rebuilds the 'cnn' networks")
    try:
        stride = int(float(cell("config.cnn_stride", "2")))
    except ValueError:
        raise ZooError(f"{where}: config.cnn_stride {cell('config.cnn_stride')!r} is not an "
                       f"integer") from None
    dataset = cell("config.dataset") or root.name
    size = input_size or INPUT_SIZES.get(dataset)
    if size is None:
        raise ZooError(f"{where}: unknown config.dataset {dataset!r}, cannot tell the input "
                       f"size; pass input_size= (known: {INPUT_SIZES})")
    for column, expected in (("config.num_layers", len(layers) - 1),
                             ("config.num_units", layers[0].kernel.shape[3])):
        value = cell(column)
        if value and parse_text(value) != expected:
            raise ZooError(f"{where}: {column} = {value} but {LAYOUT_FILE} describes "
                           f"{expected}")
    cache_key = (activation, stride, size)
    if cache_key not in cache:
        args = _model_args(layers, activation, stride)
        model = ModelDef("tf_cnn", args, (1, args["in_channels"], size, size))
        parts = [group_prefix, dataset, activation]
        if stride != 2:
            parts.append(f"stride{stride}")
        if input_size is not None:
            parts.append(f"{size}px")
        cache[cache_key] = (model, group_name(*parts), _gather_index(model, layers))
    return cache[cache_key]
