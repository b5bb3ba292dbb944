"""One canonical hash of plain data: run ids, cost-cache keys and derived seeds all use it, so
the same configuration always gives the same digest on every machine and Python version."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces (lists keep their order)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any, length: int = 64) -> str:
    """Hex SHA-256 of ``value``: of the string itself for ``str``, else of its canonical JSON."""
    text = value if isinstance(value, str) else canonical_json(value)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
