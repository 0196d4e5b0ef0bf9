"""The HDF5 checkpoint zoo: format, writer, reader, builders, importers and
PyG datasets (see ``docs/zoo-format.md``).

Example::

    from weightspace.zoo import Zoo, ZooGraphDataset, build_zoo, split_by_run

    build_zoo("digits-inr", "inrs.h5", size="tiny")
    zoo = Zoo("inrs.h5")
    parts = split_by_run(zoo)
    train = ZooGraphDataset(zoo, parts["train"], target="label")
"""

from weightspace.zoo.build import BuildResult, build_zoo
from weightspace.zoo.dataset import ZooGraphDataset, split_by_column, split_by_run
from weightspace.zoo.errors import ZooError
from weightspace.zoo.importing import import_zoo
from weightspace.zoo.ops import export_zoo, merge_zoos, verify_zoo, zoo_info
from weightspace.zoo.reader import Zoo, ZooChunk, ZooGroup, open_zoo
from weightspace.zoo.rows import ModelDef, ZooRow
from weightspace.zoo.writer import ZooWriter

__all__ = [
    "BuildResult",
    "ModelDef",
    "Zoo",
    "ZooChunk",
    "ZooError",
    "ZooGraphDataset",
    "ZooGroup",
    "ZooRow",
    "ZooWriter",
    "build_zoo",
    "export_zoo",
    "import_zoo",
    "merge_zoos",
    "open_zoo",
    "split_by_column",
    "split_by_run",
    "verify_zoo",
    "zoo_info",
]
