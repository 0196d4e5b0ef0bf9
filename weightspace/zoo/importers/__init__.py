"""Readers of the published model-zoo formats, yielding :class:`ZooRow` s.

=================  =====================================================
format             what it reads
=================  =====================================================
``small-cnn-zoo``  Small CNN Zoo folder: ``weights.npy``, ``layout.csv``,
                   ``metrics.csv.gz`` (Unterthiner et al. 2020)
``inr-folder``     one ``.pth`` SIREN per image + a splits JSON
                   (DWSNets / NFN / Neural Graphs INR data sets)
``cnn-wild-park``  ``<run>/<checkpoint>/checkpoint.pt`` with ``model`` and
                   ``config`` (Kofinas et al. 2024)
``model-zoos``     Ray Tune trial folders with ``result.json`` and
                   ``checkpoint_<epoch>/checkpoints`` (Schürholt et al. 2022)
=================  =====================================================

Every reader streams (it holds one checkpoint at a time), loads pickles only
with ``torch.load(weights_only=True)``, gives each row a stable unique key, a
``run_id`` shared by the checkpoints of one training run, and one group per
architecture; the model definitions rebuild each network exactly (families
``tf_cnn``, ``inr_siren``, ``cnn_park``, ``modelzoo_cnn``).

Example::

    with ZooWriter("mnist_zoo.h5") as writer:
        writer.extend(iter_import("small-cnn-zoo", "data/mnist"))
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from weightspace.zoo.errors import ZooError
from weightspace.zoo.importers.cnn_wild_park import read_cnn_wild_park
from weightspace.zoo.importers.inr_folder import read_inr_folder
from weightspace.zoo.importers.model_zoos import read_model_zoos
from weightspace.zoo.importers.small_cnn_zoo import read_small_cnn_zoo
from weightspace.zoo.rows import ZooRow


@dataclass(frozen=True)
class ImportFormat:
    """One published zoo format.

    Attributes:
        name: the format's name for :func:`iter_import` and the CLI.
        reader: ``reader(path, **options) -> Iterator[ZooRow]``.
        description: one line.
    """

    name: str
    reader: Callable[..., Iterator[ZooRow]]
    description: str

    def options(self) -> tuple[str, ...]:
        """The keyword options the reader accepts."""
        parameters = inspect.signature(self.reader).parameters.values()
        return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


IMPORT_FORMATS: dict[str, ImportFormat] = {
    f.name: f
    for f in (
        ImportFormat("small-cnn-zoo", read_small_cnn_zoo,
                     "Small CNN Zoo: weights.npy + layout.csv + metrics.csv.gz"),
        ImportFormat("inr-folder", read_inr_folder,
                     "DWSNets/NFN INRs: one .pth per INR + a splits JSON"),
        ImportFormat("cnn-wild-park", read_cnn_wild_park,
                     "CNN Wild Park: <run>/<checkpoint>/checkpoint.pt with model and config"),
        ImportFormat("model-zoos", read_model_zoos,
                     "Model Zoos: Ray Tune trials with result.json and checkpoint_<n>/checkpoints"),
    )
}
"""The readable formats by name."""


def iter_import(format: str, path: str | os.PathLike[str], **options) -> Iterator[ZooRow]:
    """Stream the rows of a published zoo.

    Args:
        format: a name of :data:`IMPORT_FORMATS`.
        path: the zoo's folder (``inr-folder``: or its splits JSON).
        **options: the reader's keyword options (see each ``read_*``).

    Raises:
        ZooError: an unknown format or option, or what the reader raises.
    """
    entry = IMPORT_FORMATS.get(format)
    if entry is None:
        raise ZooError(f"unknown zoo format {format!r}; known formats: "
                       f"{', '.join(IMPORT_FORMATS)}")
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise ZooError(f"format {format!r} has no option(s) {', '.join(unknown)}; its options "
                       f"are {', '.join(entry.options())}")
    return entry.reader(path, **options)


__all__ = [
    "IMPORT_FORMATS",
    "ImportFormat",
    "iter_import",
    "read_cnn_wild_park",
    "read_inr_folder",
    "read_model_zoos",
    "read_small_cnn_zoo",
]
