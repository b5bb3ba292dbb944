"""Unit prefixes of the cost columns: per column, the largest of K (10^3), M (10^6) and G (10^9)
that keeps its largest number at 1 or more, so that "+40 308.48 K" is shown as "+40.31 M"; the
column header names the unit."""

from __future__ import annotations

import math
from collections.abc import Iterable

#: the prefixes, largest first
PREFIXES: tuple[tuple[str, float], ...] = (("G", 1e9), ("M", 1e6), ("K", 1e3))


def unit_for(values: Iterable[float | None], default: str) -> tuple[str, float]:
    """``(prefix, factor)`` for a column of ``values`` (raw counts): the largest prefix at most the
    largest absolute value, K below a thousand, ``default`` when the column has no nonzero number."""
    sizes = [abs(v) for v in values if v is not None and not math.isnan(v) and v != 0]
    if not sizes:
        return default, dict(PREFIXES)[default]
    top = max(sizes)
    return next(((name, f) for name, f in PREFIXES if top >= f), PREFIXES[-1])
