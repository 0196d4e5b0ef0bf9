"""The one exception type of the zoo: a problem a person can fix, with the
file, group, row or column it is about in the message."""

from __future__ import annotations

from weightspace.errors import WeightspaceError


class ZooError(WeightspaceError):
    """A zoo file, row, column or import source is wrong; the message names it."""
