"""``weightspace zoo import``: stream a published zoo's rows into a new zoo
file, atomically.

The output appears only when the whole import succeeded: rows go to a
temporary sibling that is renamed over the output at the end, so a failed or
killed import leaves an existing output untouched and no half-imported file
that could be mistaken for a complete one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from weightspace.io import atomic_output_path
from weightspace.zoo.errors import ZooError
from weightspace.zoo.writer import ZooWriter, journal_path

logger = logging.getLogger(__name__)


def import_zoo(format: str, path: str | os.PathLike[str], output: str | os.PathLike[str],
               overwrite: bool = False, on_error: str = "raise", progress: bool = False,
               batch_rows: int = 256, **options: Any) -> dict[str, Any]:
    """Import the published zoo at ``path`` (see
    :data:`weightspace.zoo.importers.IMPORT_FORMATS`) into ``output``.

    Args:
        on_error: ``"raise"``: a broken file stops the import (nothing is
            written); ``"skip"``: it is skipped with a logged warning. Passed
            to the readers that read one file per checkpoint (those with an
            ``on_error`` option); a format read from one array
            (``small-cnn-zoo``) has no file to skip, so ``"skip"`` is refused.
        options: passed to the format's reader.

    Returns:
        ``{"output", "format", "source", "rows", "groups"}``.
    """
    from weightspace.zoo.importers import IMPORT_FORMATS, iter_import
    from weightspace.zoo.importers._common import check_on_error

    check_on_error(on_error)
    # The reader's signature says whether it takes ``on_error``; passing it
    # to one that does not (small-cnn-zoo) would fail every import.
    if "on_error" in IMPORT_FORMATS.get(format).options():
        options = {**options, "on_error": on_error}
    elif on_error != "raise":
        raise ZooError(f"format {format!r} reads all checkpoints from one array and has no "
                       f"broken file to skip; use on_error='raise'", parameter="on_error")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ZooError(f"{output} exists; pass overwrite=True to replace it",
                       parameter="overwrite")
    groups: set[str] = set()
    rows = 0
    with atomic_output_path(output) as temporary:
        try:
            # overwrite=True: the temporary file exists but is empty.
            with ZooWriter(temporary, overwrite=True, sync=False, commit_rows=4096,
                           attrs={"import_format": format, "import_source": str(path)}) as writer, \
                    tqdm(unit="row", desc=f"import {format}", disable=not progress) as bar:
                batch = []
                for row in iter_import(format, path, **options):
                    batch.append(row)
                    groups.add(row.group)
                    if len(batch) >= batch_rows:
                        rows += writer.extend(batch)
                        bar.update(len(batch))
                        batch = []
                if batch:
                    rows += writer.extend(batch)
                    bar.update(len(batch))
        finally:
            # Rows of a finished import are in the temporary zoo, those of a
            # failed one are not wanted: the journal goes either way.
            journal_path(temporary).unlink(missing_ok=True)
    logger.info("imported %d rows from %s (%s) into %s", rows, path, format, output)
    return {"output": str(output), "format": format, "source": str(path), "rows": rows,
            "groups": sorted(groups)}
