"""An ``--aggregate`` function that raises (the export tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def boom(rows: Iterator[dict[str, Any]]) -> float:
    """Divide by the count of odd results: there are some, so... it raises anyway."""
    return sum(r["result"] for r in rows) / 0
