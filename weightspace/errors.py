"""The root of every error weightspace raises on bad input.

A :class:`WeightspaceError` is a problem a person can fix: its message names
the file, parameter, layer, space or row that is wrong and what would fix it.
The command line catches exactly these (and reports them on one line); any
other exception is a bug and keeps its traceback.

It subclasses :class:`ValueError`, so code written against the earlier
``ValueError`` contract keeps working.

Hierarchy::

    WeightspaceError
    ├── SpecError               (weightspace.spec: tracing, specs, state dicts)
    │   ├── UnsupportedLayerError
    │   ├── TraceError
    │   └── StateDictMismatchError
    ├── CheckpointError         (weightspace.io: files that cannot be read safely)
    ├── ZooError                (weightspace.zoo: zoo files, rows, columns, imports)
    ├── MergeConfigError        (weightspace.merge: merge configs)
    └── PruneError              (weightspace.prune: pruning requests)
"""

from __future__ import annotations


class WeightspaceError(ValueError):
    """Bad input to weightspace; the message says what is wrong and how to fix it.

    Args:
        message: the one-line explanation, naming what is wrong.
        parameter: the name of the library argument at fault (``"data"``,
            ``"method"`` …), when there is one. Library messages speak of
            arguments, never of command-line flags; the CLI maps
            ``parameter`` to its own flag in one table.
    """

    def __init__(self, message: str = "", *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


__all__ = ["WeightspaceError"]
