"""Terminal output: a live bar for people, plain lines when output is not a terminal."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from ttg.decode import printable

#: Width of the bar itself, in characters.
BAR_WIDTH = 30
#: Chunks in flight listed by ``explain``.
IN_FLIGHT_SHOWN = 5


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, default=str)


def suffix(report: dict[str, Any]) -> str:
    """Counters after the bar: failures, duplicates, redeliveries, workers, rate, ETA."""
    parts = []
    if report["dead"] or report["errors"]:
        parts.append(f"failed {report['dead'] + report['errors']}")
    parts += [f"dup {report['duplicates']}", f"redelivered {report['redelivered']}"]
    if report.get("workers") is not None:
        parts.append(f"workers {report['workers']}")
    if report.get("rate_chunks_s") is not None:
        parts.append(f"{report['rate_chunks_s']:.1f} chunks/s")
        parts.append(f"ETA {duration(report.get('eta_s'))}")
    return "  ".join(parts)


def describe(report: dict[str, Any]) -> str:
    """One line for a status or verify report."""
    finished = report["done"] + report["errors"] + report["dead"]
    return (
        f"run {report['run']}: {report['state']}  "
        f"{finished}/{report['total_chunks']} chunks "
        f"({100 * report['progress']:.1f}%)  "
        f"{report['done_params']}/{report['total_params']} params  " + suffix(report)
    )


def explain(report: dict[str, Any]) -> str:
    """``ttg status`` for people: the line, then what needs attention."""
    lines = [describe(report)]
    if report["dead"] or report["errors"]:
        lines.append(
            f"  failures: {report['dead']} chunks dead, {report['errors']} chunks with "
            f"{report['param_errors']} parameter errors (ttg results shows them; "
            "ttg retry re-runs them)"
        )
    if report["dead"] or report["errors"] or not report["complete"]:
        # Recent errors are history: once every chunk has a clean outcome (after a
        # `ttg retry`), they no longer describe the run.
        lines += [f"  error: {e}" for e in report.get("recent_errors") or []]
    lines += [f"  warning: {w}" for w in report.get("warnings") or []]
    lines += [f"  problem: {p}" for p in report.get("problems") or []]
    flights = report.get("in_flight") or []
    for f in flights[:IN_FLIGHT_SHOWN]:
        lines.append(
            f"  in flight: chunk {f['chunk']} on {f['worker']} "
            f"(delivery {f['deliveries']}, {duration(f['idle_s'])})"
        )
    if len(flights) > IN_FLIGHT_SHOWN:
        lines.append(f"  ... and {len(flights) - IN_FLIGHT_SHOWN} more in flight")
    # Errors and names come from the broker and user code: no escape sequence reaches
    # the terminal.
    return printable("\n".join(lines))


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
