"""Terminal progress: a live bar for people, a plain line when output is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: Width of the bar itself, in characters.
BAR_WIDTH = 30


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def suffix(report: dict[str, Any]) -> str:
    """Counters after the bar: dead, duplicates, redeliveries, rate, ETA."""
    parts = [
        f"dead {report['dead']}",
        f"dup {report['duplicates']}",
        f"redelivered {report['redelivered']}",
    ]
    if report.get("rate_chunks_s") is not None:
        parts.append(f"{report['rate_chunks_s']:.1f} chunks/s")
        parts.append(f"ETA {_duration(report.get('eta_s'))}")
    return "  ".join(parts)


def describe(report: dict[str, Any]) -> str:
    """One line for a status or verify report."""
    return (
        f"run {report['run']}: {report['state']}  "
        f"{report['done'] + report['dead']}/{report['total_chunks']} chunks "
        f"({100 * report['progress']:.1f}%)  "
        f"{report['done_params']}/{report['total_params']} params  " + suffix(report)
    )


class Bar:
    """A one-line progress bar redrawn in place (at most 10 times a second)."""

    def __init__(self, label: str, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._drawn = False

    def update(self, done: int, total: int, suffix: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = done / total if total else 0.0
        filled = int(frac * BAR_WIDTH)
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        self.stream.write(
            f"\r\033[K{self.label} [{bar}] {100 * frac:5.1f}% {done}/{total} {suffix}"
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
