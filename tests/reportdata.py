"""A synthetic run for the report tests, generated lazily in closed form.

Chunk ``c``'s worker, times and outcome are a function of ``c`` alone, so a
10^6-chunk ledger is a generator that holds nothing, and the expected counts
are known without storing rows.

Workers take chunks round robin, one per time slot. Worker ``lost`` is
SIGKILLed (in the story) holding chunk ``kill_at``: it records nothing after,
the chunk is redelivered ``GAP_SLOTS`` slots later to the next live worker
(attempt 2) and the remaining workers share the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ttg.report import ChunkRow, Event

#: 2025-11-24 16:00:00 UTC: a fixed start, so reports are comparable.
T0 = 1_764_000_000.0
#: Slots between the kill and the redelivery (a lease running out).
GAP_SLOTS = 30
#: Every chunk c with c % ERRORS_EVERY == ERRORS_AT has parameter errors ...
ERRORS_EVERY, ERRORS_AT = 97, 13
#: ... and every chunk c with c % DEAD_EVERY == DEAD_AT is dead-lettered (this wins).
DEAD_EVERY, DEAD_AT = 331, 7
#: Parameters per chunk, and how many raise in a chunk with errors.
PARAMS, PARAM_ERRORS = 100, 2


@dataclass(frozen=True)
class SyntheticRun:
    """``chunks`` chunks on ``workers`` workers, slot length ``slot`` seconds."""

    chunks: int
    workers: int = 4
    slot: float = 0.05
    lost: int | None = 2
    kill_fraction: float = 0.3

    @property
    def kill_at(self) -> int:
        """The chunk the lost worker held when it died (-1: nobody dies)."""
        return int(self.chunks * self.kill_fraction) if self.lost is not None else -1

    @property
    def lost_name(self) -> str | None:
        return None if self.lost is None else f"w-{self.lost}"

    def _survivors(self) -> list[int]:
        return [w for w in range(self.workers) if w != self.lost]

    def status(self, c: int) -> str:
        if c % DEAD_EVERY == DEAD_AT:
            return "dead"
        if c % ERRORS_EVERY == ERRORS_AT:
            return "errors"
        return "ok"

    def row(self, c: int) -> ChunkRow:
        """Chunk ``c``'s counted outcome."""
        k = self.kill_at
        if k < 0 or c < k:
            worker, slot, attempt = c % self.workers, c // self.workers, 1
        else:
            alive = self._survivors()
            j = c - k
            worker, slot = alive[j % len(alive)], k // self.workers + GAP_SLOTS + j // len(alive)
            attempt = 2 if c == k else 1
        # Durations spread deterministically over 40%..90% of a slot.
        start = T0 + slot * self.slot + worker * self.slot / 100
        duration = self.slot * (0.4 + 0.5 * ((c * 7919) % 101) / 100)
        status = self.status(c)
        error = None
        if status == "dead":
            error = "TimeoutError: chunk exceeded its 30 s budget"
        elif status == "errors":
            error = "ZeroDivisionError: division by zero" if c % 2 else "ValueError: bad input"
        return ChunkRow(
            chunk=c,
            status=status,
            params=PARAMS,
            param_errors=PARAM_ERRORS if status == "errors" else 0,
            worker=f"w-{worker}",
            attempt=attempt,
            started_at=start,
            finished_at=start + duration,
            error=error,
        )

    def rows(self) -> Iterator[ChunkRow]:
        """Every chunk's outcome, made on demand."""
        return (self.row(c) for c in range(self.chunks))

    def events(self) -> list[Event]:
        """The redelivery of the lost worker's chunk, and one retried failure."""
        out = [Event(T0 + 1.0, "failed", 5, "w-1", None, "ConnectionError: flaky backend")]
        k = self.kill_at
        if k >= 0:
            taker = self.row(k)
            out.append(
                Event(taker.started_at or T0, "redelivered", k, taker.worker, self.lost_name, None)
            )
        return out

    def counts(self) -> dict[str, int]:
        """Chunks by status (a loop over ids, not rows: cheap at 10^6)."""
        out = {"ok": 0, "errors": 0, "dead": 0}
        for c in range(self.chunks):
            out[self.status(c)] += 1
        return out

    def verify(self) -> dict[str, Any]:
        """What ``ttg verify --json`` would print for this run, finished."""
        n = self.counts()
        problems = [f"{n['dead']} chunks dead-lettered"] if n["dead"] else []
        if n["errors"]:
            problems.append(f"{n['errors']} chunks with parameter errors")
        return {
            "run": "sweep-1",
            "state": "complete-with-failures" if problems else "complete",
            "ok": not problems,
            "total_chunks": self.chunks,
            "total_params": self.chunks * PARAMS,
            "done": n["ok"],
            "done_params": (n["ok"] + n["errors"]) * PARAMS - n["errors"] * PARAM_ERRORS,
            "dead": n["dead"],
            "errors": n["errors"],
            "duplicates": 0,
            "redelivered": 1 if self.lost is not None else 0,
            "failed": 1,
            "problems": problems,
            "closed_form": "not-applicable",
        }
