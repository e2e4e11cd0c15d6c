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

from ttg.report import Event
from ttg.run import Outcome, RunSpec, Status
from ttg.space import RangeSpace
from ttg.verify import VerifyReport

#: Fields of a verify report a test need not care about, at their "nothing happened" values.
_QUIET: dict[str, Any] = {
    "ts": 0.0, "run": "r", "state": "complete", "control": "running", "total_chunks": 0,
    "total_params": 0, "seeded_chunks": 0, "finished": 0, "done": 0, "done_params": 0,
    "dead": 0, "errors": 0, "param_errors": 0, "params_dead": 0, "duplicates": 0,
    "redelivered": 0, "failed": 0, "malformed": 0, "queue_depth": 0, "workers": None,
    "in_flight": [], "recent_errors": [], "recent_failures": [], "warnings": [],
    "progress": 0.0, "rate_chunks_s": None, "eta_s": None, "seeded_at": None,
    "complete": True, "ok": True, "verified": True,
}  # fmt: skip


def verify_report(**fields: Any) -> VerifyReport:
    """A ``VerifyReport`` with ``fields`` set and everything else quiet."""
    return VerifyReport(**{**_QUIET, **fields})


def outcome(
    chunk: int,
    status: str,
    params: int,
    worker: str,
    attempt: int,
    started_at: float | None,
    finished_at: float,
    error: str | None = None,
    param_errors: tuple[tuple[Any, ...], ...] = (),
) -> Outcome:
    """A counted ledger outcome, as a backend yields it (no results: the report reads none)."""
    return Outcome(
        chunk=chunk,
        status=Status(status),
        params=params,
        worker=worker,
        attempt=attempt,
        finished_at=finished_at,
        started_at=started_at,
        error=error,
        param_errors=param_errors,  # type: ignore[arg-type]
    )


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

    def spec(self) -> RunSpec:
        return RunSpec("sweep-1", RangeSpace(0, self.chunks * PARAMS).to_spec(), PARAMS,
                       "tests.computes:explode_on_13")  # fmt: skip

    def row(self, c: int) -> Outcome:
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
        param_errors: tuple[tuple[Any, ...], ...] = ()
        if status == "dead":
            error = "TimeoutError: chunk exceeded its 30 s budget"
        elif status == "errors":
            text = "ZeroDivisionError: division by zero" if c % 2 else "ValueError: bad input"
            lo = c * PARAMS
            # Each error of a chunk with errors: every other one keeps its traceback.
            param_errors = tuple(
                (lo + 3 * k, text, f'File "sim.py", line {10 + k}, in f\n{text}')
                if k % 2 == 0
                else (lo + 3 * k, text)
                for k in range(PARAM_ERRORS)
            )
            error = f"parameter {lo}: {text}"
        return outcome(c, status, PARAMS, f"w-{worker}", attempt, start, start + duration,
                       error, param_errors)  # fmt: skip

    def rows(self) -> Iterator[Outcome]:
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

    def verify(self, problems: list[str] | None = None) -> VerifyReport:
        """What ``ttg verify`` would find for this run, finished (exactly once holds)."""
        n = self.counts()
        failures = n["dead"] + n["errors"]
        failed = n["dead"] * PARAMS + n["errors"] * PARAM_ERRORS
        return verify_report(
            run="sweep-1",
            state="complete-with-failures" if failures else "complete",
            ok=not failures and not problems,
            verified=not problems,
            total_chunks=self.chunks,
            total_params=self.chunks * PARAMS,
            finished=self.chunks,
            done=n["ok"],
            done_params=self.chunks * PARAMS - failed,
            dead=n["dead"],
            errors=n["errors"],
            param_errors=n["errors"] * PARAM_ERRORS,
            params_dead=n["dead"] * PARAMS,
            failed_params=failed,
            redelivered=1 if self.lost is not None else 0,
            failed=1,
            problems=problems or [],
            progress=1.0,
        )
