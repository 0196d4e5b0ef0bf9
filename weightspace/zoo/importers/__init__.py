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

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from weightspace.registry import Entry, Registry
from weightspace.zoo.errors import ZooError
from weightspace.zoo.importers.cnn_wild_park import read_cnn_wild_park
from weightspace.zoo.importers.inr_folder import read_inr_folder
from weightspace.zoo.importers.model_zoos import read_model_zoos
from weightspace.zoo.importers.small_cnn_zoo import read_small_cnn_zoo
from weightspace.zoo.rows import ZooRow


@dataclass(frozen=True)
class ImportFormat(Entry):
    """One published zoo format.

    Attributes:
        name: the format's name for :func:`iter_import` and the CLI.
        target: its reader, ``reader(path, **options) -> Iterator[ZooRow]``;
            the keyword-only parameters are the format's
            :meth:`~weightspace.registry.Entry.options`.
        description: one line.
        reference: the paper that published the zoo.
    """

    @property
    def reader(self) -> Callable[..., Iterator[ZooRow]]:
        """The reader function."""
        return self.load()


IMPORT_FORMATS: Registry[ImportFormat] = Registry("zoo format", (
    ImportFormat("small-cnn-zoo", read_small_cnn_zoo,
                 "Small CNN Zoo: weights.npy + layout.csv + metrics.csv.gz",
                 reference="Unterthiner et al. 2020, Predicting Neural Network Accuracy "
                           "from Weights"),
    ImportFormat("inr-folder", read_inr_folder,
                 "DWSNets/NFN INRs: one .pth per INR + a splits JSON",
                 reference="Navon et al. 2023, ICML 2023; Zhou et al. 2023, NeurIPS 2023"),
    ImportFormat("cnn-wild-park", read_cnn_wild_park,
                 "CNN Wild Park: <run>/<checkpoint>/checkpoint.pt with model and config",
                 reference="Kofinas et al. 2024, ICLR 2024"),
    ImportFormat("model-zoos", read_model_zoos,
                 "Model Zoos: Ray Tune trials with result.json and checkpoint_<n>/checkpoints",
                 reference="Schürholt et al. 2022, Model Zoos, NeurIPS 2022 Datasets and "
                           "Benchmarks"),
), parameter="format", error=ZooError)
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
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise ZooError(f"format {format!r} has no option(s) {', '.join(unknown)}; its options "
                       f"are {', '.join(entry.options())}", parameter="options")
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
