"""The JSON view shared by the job reports.

Every job returns a frozen dataclass; its ``to_dict()`` is what ``--json``
prints. Optional parts a job did not produce (scores without data, a plot
that was not asked for) are left out of the JSON rather than written as
``null``, so a report's keys say what the job did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any


def report_dict(report: Any, omit_if_none: Iterable[str] = ()) -> dict[str, Any]:
    """``report``'s fields as a new JSON-ready dict (nested dataclasses,
    dicts and lists copied), without the fields of ``omit_if_none`` that are
    ``None``.

    Args:
        report: a dataclass instance whose fields are JSON values (or
            dataclasses of them).
        omit_if_none: optional fields to drop when they are ``None``.
    """
    out = dataclasses.asdict(report)
    for name in omit_if_none:
        if out[name] is None:
            del out[name]
    return out


__all__ = ["report_dict"]
