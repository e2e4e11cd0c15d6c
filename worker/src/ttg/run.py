"""Runs, chunks, ledger entries and progress: the vocabulary every backend shares."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ttg import compute
from ttg import space as spaces
from ttg.errors import UsageError

#: A run id names broker keys and queues, and Kubernetes objects in the chart.
RUN_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def check_run_id(run: str) -> str:
    """Return ``run`` if it is a valid run id.

    Raises:
        UsageError: it is not ``[a-z0-9][a-z0-9-]{0,62}``.
    """
    if not RUN_ID.fullmatch(run):
        raise UsageError(f"run id {run!r} must match [a-z0-9][a-z0-9-]{{0,62}}")
    return run


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; immutable once seeded."""

    run: str
    space: dict[str, Any]
    chunk_size: int
    compute: str
    work_ms: int = 0
    max_deliveries: int = 5

    def __post_init__(self) -> None:
        check_run_id(self.run)
        if self.chunk_size < 1:
            raise UsageError(f"chunk size must be >= 1, got {self.chunk_size}")
        if self.work_ms < 0:
            raise UsageError(f"work-ms must be >= 0, got {self.work_ms}")
        compute.check_name(self.compute)
        if self.max_deliveries < 1:
            raise UsageError(f"max deliveries must be >= 1, got {self.max_deliveries}")

    @property
    def parameter_space(self) -> spaces.RangeSpace | spaces.GridSpace:
        return spaces.from_spec(self.space)

    @property
    def total_params(self) -> int:
        return self.parameter_space.size

    @property
    def total_chunks(self) -> int:
        return -(-self.total_params // self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        """The half-open index range ``[lo, hi)`` of chunk number ``chunk``."""
        lo = chunk * self.chunk_size
        return lo, min(lo + self.chunk_size, self.total_params)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Delivery:
    """One chunk handed to one worker; ``attempt`` counts deliveries, from 1."""

    run: str
    chunk: int
    lo: int
    hi: int
    attempt: int
    #: Backend-private handle (a stream entry id, a delivery tag).
    handle: Any = field(compare=False, repr=False)


@dataclass(frozen=True)
class Outcome:
    """A chunk's entry in the ledger: its result, or its death with the error."""

    chunk: int
    status: str  # "ok" | "dead"
    params: int
    worker: str
    attempt: int
    finished_at: float
    result: Any = None
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "s": self.status,
                "n": self.params,
                "w": self.worker,
                "a": self.attempt,
                "t": round(self.finished_at, 3),
                "r": self.result,
                "e": self.error,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, chunk: int, text: str) -> Outcome:
        d = json.loads(text)
        return cls(chunk, d["s"], d["n"], d["w"], d["a"], d["t"], d.get("r"), d.get("e"))

    @classmethod
    def ok(cls, d: Delivery, worker: str, result: Any) -> Outcome:
        return cls(d.chunk, "ok", d.hi - d.lo, worker, d.attempt, time.time(), result)

    @classmethod
    def dead(cls, d: Delivery, worker: str, error: str) -> Outcome:
        return cls(d.chunk, "dead", d.hi - d.lo, worker, d.attempt, time.time(), error=error)


@dataclass(frozen=True)
class InFlight:
    """A chunk some worker holds right now."""

    chunk: int
    worker: str
    deliveries: int
    idle_s: float


@dataclass
class Progress:
    """Counters of one run as the broker knows them."""

    run: str
    total_chunks: int
    total_params: int
    seeded_chunks: int
    done: int = 0
    done_params: int = 0
    dead: int = 0
    duplicates: int = 0
    redelivered: int = 0
    failed: int = 0
    queue_depth: int = 0
    in_flight: list[InFlight] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.done + self.dead

    @property
    def complete(self) -> bool:
        return self.total_chunks > 0 and self.finished >= self.total_chunks

    @property
    def state(self) -> str:
        if not self.complete:
            return "running"
        return "complete-with-dead" if self.dead else "complete"

    @property
    def ratio(self) -> float:
        return self.finished / self.total_chunks if self.total_chunks else 0.0
