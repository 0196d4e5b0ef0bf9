"""The HDF5 checkpoint zoo: format, writer, reader, builders, importers and
PyG datasets (see ``docs/zoo-format.md``)."""

from weightspace.zoo.errors import ZooError
from weightspace.zoo.reader import Zoo, ZooChunk, ZooGroup, open_zoo
from weightspace.zoo.rows import ModelDef, ZooRow
from weightspace.zoo.writer import ZooWriter

__all__ = ["ModelDef", "Zoo", "ZooChunk", "ZooError", "ZooGroup", "ZooRow", "ZooWriter",
           "open_zoo"]
