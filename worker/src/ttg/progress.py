"""Terminal output of status and verify reports: a live bar for people, plain lines otherwise.

Every count is named in the one vocabulary of ``ttg.verify`` (chunks finished,
chunks with errors, chunks dead; parameters ok, failed, dead; events), the
same words ``--json`` and the HTML report use.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from ttg.decode import printable
from ttg.failures import ErrorGroup, param_text
from ttg.verify import RecentFailure, StatusReport, VerifyReport

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


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 worker``, ``2 workers``, ``1,206 parameters``."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def as_json(report: StatusReport | Mapping[str, object]) -> str:
    body = report.to_dict() if isinstance(report, StatusReport) else report
    return json.dumps(body, sort_keys=True, default=str)


def suffix(r: StatusReport) -> str:
    """What follows the bar: failures, events, workers, rate, ETA."""
    parts = []
    if r.dead or r.errors:
        parts.append(f"{r.errors:,} with errors, {r.dead:,} dead")
    if r.redelivered or r.duplicates:
        parts.append(f"{r.redelivered:,} redelivered, {r.duplicates:,} dup")
    if r.workers is not None:
        parts.append(plural(r.workers, "worker"))
    if r.rate_chunks_s is not None:
        parts.append(f"{r.rate_chunks_s:.1f} chunks/s")
        parts.append(f"ETA {duration(r.eta_s)}")
    return "  ".join(parts)


def describe(r: StatusReport) -> str:
    """One line for a status or verify report: chunks, parameters, events."""
    params = f"parameters {r.done_params:,} ok, {r.param_errors:,} failed"
    if r.params_dead is not None:
        params += f", {r.params_dead:,} dead"
    events = (
        f"events {r.redelivered:,} redelivered, {plural(r.failed, 'failed attempt')}, "
        f"{plural(r.duplicates, 'duplicate')}"
    )
    line = (
        f"run {r.run}: {r.state}  {r.finished:,}/{r.total_chunks:,} chunks finished "
        f"({100 * r.progress:.1f}%): {r.done:,} ok, {r.errors:,} with errors, {r.dead:,} dead  "
        f"{params} of {r.total_params:,}  {events}"
    )
    if r.workers is not None:
        line += f"  {plural(r.workers, 'worker')}"
    if r.rate_chunks_s is not None:
        line += f"  {r.rate_chunks_s:.1f} chunks/s ETA {duration(r.eta_s)}"
    return line


def _recent(f: RecentFailure) -> str:
    if f.index is None:
        return f"  error: {f.error}"
    where = f"parameter {f.index}" + (f" ({param_text(f.param)})" if f.param is not None else "")
    return f"  error: {f.error}  e.g. {where}"


def group_line(g: ErrorGroup) -> str:
    """``402 parameters failed in 121 chunks: ZeroDivisionError: …  e.g. parameter 3 (x=0)``."""
    what = "failed" if g.kind == "failed" else "dead"
    line = f"  {plural(g.params, 'parameter')} {what} in {plural(g.chunks, 'chunk')}: {g.error}"
    ex = g.example
    if ex is not None and ex.index is not None:
        line += f"  e.g. parameter {ex.index}"
        if ex.param is not None:
            line += f" ({param_text(ex.param)})"
    return line


def explain(r: StatusReport) -> str:
    """``ttg status`` for people: the line, then what needs attention."""
    lines = [describe(r)]
    if r.dead or r.errors:
        lines.append(
            f"  failures: {plural(r.errors, 'chunk')} with errors ({r.param_errors:,} parameters "
            f"failed), {r.dead:,} dead (ttg results shows them; ttg retry re-runs them)"
        )
    if r.dead or r.errors or not r.complete:
        # Recent errors are history: once every chunk has a clean outcome (after a
        # `ttg retry`), they no longer describe the run.
        lines += [_recent(f) for f in r.recent_failures]
    lines += [f"  warning: {w}" for w in r.warnings]
    lines += [f"  problem: {p}" for p in r.problems]
    for f in r.in_flight[:IN_FLIGHT_SHOWN]:
        on = f", on parameter {f.param} for {duration(f.param_s)}" if f.param is not None else ""
        lines.append(
            f"  in flight: chunk {f.chunk} on {f.worker} "
            f"(delivery {f.deliveries}, {duration(f.idle_s)}{on})"
        )
    if len(r.in_flight) > IN_FLIGHT_SHOWN:
        lines.append(f"  ... and {len(r.in_flight) - IN_FLIGHT_SHOWN} more in flight")
    # Errors and names come from the broker and user code: no escape sequence reaches
    # the terminal.
    return printable("\n".join(lines))


def verdict(r: VerifyReport, *, allow_failed: bool = False) -> str:
    """``ttg verify`` for people: exactly once, then the parameters, then the evidence."""
    if not r.complete:
        once = f"exactly once: not yet known, {r.missing:,} chunks have no outcome"
    elif r.verified:
        once = "exactly once: holds"
    else:
        once = f"exactly once: DOES NOT HOLD ({plural(len(r.problems), 'problem')})"
    failed = (r.failed_params or 0) if r.complete else r.param_errors
    if failed:
        params = (
            f"{plural(failed, 'parameter')} failed ({r.param_errors:,} raised, "
            f"{r.params_dead or 0:,} in dead chunks)"
            + (", accepted by --allow-failed" if allow_failed else " (--allow-failed accepts them)")
        )
    else:
        params = f"every parameter ok ({r.done_params:,})" if r.complete else ""
    head = "VERIFIED" if r.ok else "NOT VERIFIED"
    lines = [f"{head}: {once}" + (f"; {params}" if params else ""), describe(r)]
    lines.append(f"closed form: {r.closed_form}")
    if r.missing:
        lines.append(f"missing {r.missing:,} chunks, e.g. {r.missing_sample}")
    if r.error_groups:
        lines.append("errors, grouped (most parameters first):")
        lines += [group_line(g) for g in r.error_groups]
        if r.more_error_groups:
            lines.append(f"  ... and {r.more_error_groups:,} more distinct errors")
    lines += [f"problem: {p}" for p in r.problems]
    return "\n".join(lines)


#: How often a progress line is written where it cannot be redrawn in place.
PLAIN_EVERY_SECONDS = 5.0


class Bar:
    """A one-line progress bar redrawn in place (at most 10 times a second).

    On a stream that is not a terminal (a log, a pipe, CI) nothing is redrawn: a plain
    line is written when progress has moved, at most every ``PLAIN_EVERY_SECONDS``,
    and at the end.
    """

    def __init__(self, label: str, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.in_place = bool(isatty and isatty())
        self._last = -float("inf")
        self._last_done = -1
        self._drawn = False

    def update(self, done: int, total: int, suffix: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.in_place:
            if done < total and now - self._last < 0.1:
                return
        elif done == self._last_done or (done < total and now - self._last < PLAIN_EVERY_SECONDS):
            return
        self._last, self._last_done = now, done
        frac = done / total if total else 0.0
        filled = int(frac * BAR_WIDTH)
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        line = f"{self.label} [{bar}] {100 * frac:5.1f}% {done}/{total} {suffix}"
        if self.in_place:
            self.stream.write(f"\r\033[K{line}")
            self._drawn = True
        else:
            self.stream.write(line.rstrip() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
