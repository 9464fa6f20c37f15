"""Reading fields out of a service reply, for both protocols' parsers.

A reply is JSON from the network: any field may be missing or of the wrong type.
These helpers turn such a value into the record's type without raising, so a
malformed reply becomes a record with NaN or empty fields (which the quality
gate then refuses) instead of an exception in the middle of a row.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.api.records import Box, Point

__all__ = ["as_box", "as_dicts", "as_list", "as_num", "as_points"]


def as_num(value: object) -> float:
    """A float; NaN for a missing or non-numeric value (NaN fails the quality gate)."""
    if isinstance(value, int | float | str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def as_list(value: object) -> list[Any]:
    """``value`` when it is a list, else an empty list."""
    return value if isinstance(value, list) else []


def as_dicts(value: object) -> list[dict[str, Any]]:
    """The objects of a JSON list (other items dropped)."""
    return [item for item in as_list(value) if isinstance(item, dict)]


def as_box(raw: object) -> Box:
    """A face ``location`` object as a :class:`Box` (NaN for missing sides)."""
    raw = raw if isinstance(raw, dict) else {}
    return Box(as_num(raw.get("left")), as_num(raw.get("top")), as_num(raw.get("width")),
               as_num(raw.get("height")))


def as_points(raw: object) -> tuple[Point, ...]:
    """A list of ``{"x", "y"}`` objects as points."""
    return tuple(Point(as_num(p.get("x")), as_num(p.get("y"))) for p in as_dicts(raw))
