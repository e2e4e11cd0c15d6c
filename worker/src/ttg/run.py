"""Runs, chunks, ledger entries and progress: the vocabulary every backend shares."""

from __future__ import annotations

import enum
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

#: What a run spec's ``results`` may hold (``ttg.store.parse_url`` checks the details).
RESULTS_URL = re.compile(r"broker|file:///[^\x00-\x1f]*|s3://[^\x00-\x1f/]+(/[^\x00-\x1f]*)?")

#: How a run is steered: the only values of its control flag.
CONTROLS = ("running", "paused", "cancelled")


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
    """Everything that defines a run; immutable once seeded.

    ``max_deliveries`` belongs to the run (one owner per setting): workers
    never override it.
    """

    run: str
    space: dict[str, Any]
    chunk_size: int
    compute: str
    work_ms: int = 0
    max_deliveries: int = 5
    #: Where workers write the run's results: ``broker`` (in the ledger), ``file:///PATH``
    #: or ``s3://BUCKET/PREFIX`` (a results store, ``ttg.store``). Set once, at seeding.
    results: str = "broker"

    def __post_init__(self) -> None:
        check_run_id(self.run)
        if self.chunk_size < 1:
            raise UsageError(f"chunk size must be >= 1, got {self.chunk_size}")
        if self.work_ms < 0:
            raise UsageError(f"work-ms must be >= 0, got {self.work_ms}")
        compute.check_name(self.compute)
        if self.max_deliveries < 1:
            raise UsageError(f"max deliveries must be >= 1, got {self.max_deliveries}")
        if not isinstance(self.results, str) or not RESULTS_URL.fullmatch(self.results):
            raise UsageError(
                f"results {self.results!r}: expected broker, file:///PATH or s3://BUCKET"
            )
        # Built once: a worker asks for it on every chunk.
        object.__setattr__(self, "_space", spaces.from_spec(self.space))

    @property
    def parameter_space(self) -> spaces.RangeSpace | spaces.GridSpace:
        space: spaces.RangeSpace | spaces.GridSpace = self.__dict__["_space"]
        return space

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_space", None)
        if d["results"] == "broker":
            # Left out at its default: a broker run's spec stays what older workers read.
            del d["results"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Rebuild a spec read from a broker.

        Raises:
            UsageError: the stored object is not a valid spec.
        """
        try:
            return cls(**d)
        except TypeError as e:
            raise UsageError(f"stored run spec is not valid: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Delivery:
    """One chunk handed to one worker, with what the worker needs to compute it.

    ``attempt`` counts deliveries from 1. ``spec`` is the run's spec as the
    consumer knows it (kept fresh over the consumer's own connection), so the
    worker never asks the broker anything but through its consumer.
    """

    spec: RunSpec
    chunk: int
    attempt: int
    #: Backend-private handle (a stream entry id, a delivery tag).
    handle: Any = field(compare=False, repr=False)
    #: Retry round the task belongs to (``ttg retry`` opens a new one).
    round: int = 0

    @property
    def run(self) -> str:
        return self.spec.run

    @property
    def lo(self) -> int:
        return self.chunk * self.spec.chunk_size

    @property
    def hi(self) -> int:
        return min(self.lo + self.spec.chunk_size, self.spec.total_params)


class Status(enum.StrEnum):
    """A chunk's outcome."""

    #: Every parameter computed.
    OK = "ok"
    #: Some parameters raised; the others' results are kept (the chunk is still one outcome).
    ERRORS = "errors"
    #: No results: the chunk could not be computed (its workers kept dying, the
    #: compute is not allowed or cannot be imported).
    DEAD = "dead"


@dataclass(frozen=True)
class ObjectRef:
    """Where a results store keeps one chunk's results: what the ledger counts and checks."""

    #: The object's name under the store's base (``runs/RUN/chunk-....parquet``).
    name: str
    #: Its rows: one per parameter of the chunk.
    rows: int
    #: sha256 of the object's bytes, hex.
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.name, "n": self.rows, "h": self.sha256}

    @classmethod
    def from_dict(cls, d: Any) -> ObjectRef:
        """Raises: ValueError, TypeError or KeyError: not an object reference."""
        name, rows, digest = d["k"], d["n"], d["h"]
        if (
            not isinstance(name, str)
            or len(name) > 200
            or not isinstance(digest, str)
            or not re.fullmatch(r"[0-9a-f]{64}", digest)
            or type(rows) is not int
            or rows < 0
        ):
            raise ValueError(f"not an object reference: {str(d)[:200]}")
        return cls(name, rows, digest)


@dataclass(frozen=True)
class Outcome:
    """A chunk's entry in the ledger: its results (with any parameter errors), or its death.

    ``param_errors`` are ``(parameter index, error)`` pairs; the result list holds
    None at their places. A run with a results store keeps its results there: the
    ledger then holds ``ref`` (the object, its rows and digest) and ``result`` is None
    until a reader fetches the object (``ttg.store``).
    """

    chunk: int
    status: Status
    params: int
    worker: str
    attempt: int
    finished_at: float
    result: list[Any] | None = None
    error: str | None = None
    param_errors: tuple[tuple[int, str], ...] = ()
    started_at: float | None = None
    round: int = 0
    #: ``result`` already encoded as JSON (the worker encodes once, to find unserialisable values).
    result_json: str | None = field(default=None, compare=False, repr=False)
    #: The results store's object holding ``result`` (None: the results are in the ledger).
    ref: ObjectRef | None = None

    def to_json(self) -> str:
        """The ledger's JSON form. ``w`` and ``a`` come first: the Redis scripts
        recognise a re-sent record by that prefix without decoding the results."""
        body: dict[str, Any] = {
            "w": self.worker,
            "a": self.attempt,
            "g": self.round,
            "s": str(self.status),
            "n": self.params,
            "t0": None if self.started_at is None else round(self.started_at, 3),
            "t": round(self.finished_at, 3),
        }
        if self.error is not None:
            body["e"] = self.error
        if self.param_errors:
            body["pe"] = [list(p) for p in self.param_errors]
        if self.ref is not None:
            body["o"] = self.ref.to_dict()
        head = json.dumps(body, separators=(",", ":"))
        result = (
            self.result_json
            if self.result_json is not None
            else json.dumps(self.result, separators=(",", ":"))
        )
        return f'{head[:-1]},"r":{result}}}'

    @classmethod
    def from_dict(cls, chunk: int, d: dict[str, Any]) -> Outcome:
        return cls(
            chunk=chunk,
            status=Status(d["s"]),
            params=int(d["n"]),
            worker=str(d["w"]),
            attempt=int(d["a"]),
            finished_at=float(d["t"]),
            result=d.get("r"),
            error=d.get("e"),
            param_errors=tuple((int(i), str(e)) for i, e in d.get("pe") or ()),
            started_at=d.get("t0"),
            round=int(d.get("g", 0)),
            ref=ObjectRef.from_dict(d["o"]) if d.get("o") is not None else None,
        )

    @classmethod
    def from_json(cls, chunk: int, text: str) -> Outcome:
        return cls.from_dict(chunk, json.loads(text))

    @classmethod
    def dead(cls, d: Delivery, worker: str, error: str) -> Outcome:
        return cls(
            d.chunk, Status.DEAD, d.hi - d.lo, worker, d.attempt, time.time(), error=error,
            round=d.round,
        )  # fmt: skip


class Recorded(enum.Enum):
    """What ``Consumer.complete`` did with one outcome."""

    #: Durable in the ledger and counted: the chunk's outcome.
    COUNTED = "counted"
    #: Durable in the ledger as a duplicate: the chunk had an outcome already; no total changed.
    DUPLICATE = "duplicate"
    #: Durable in a ledger that decides on read which outcome counts (RabbitMQ's stream).
    RECORDED = "recorded"
    #: The run was deleted meanwhile: nothing recorded, nothing to acknowledge.
    GONE = "gone"


@dataclass(frozen=True)
class RunEvent:
    """Something that happened to a chunk besides its outcome (for status and reports)."""

    t: float
    #: redelivered | released | failed | malformed | retry
    kind: str
    chunk: int | None = None
    worker: str | None = None
    #: For "redelivered": who held it before, when the backend knows.
    previous_worker: str | None = None
    detail: str | None = None


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
    #: Chunks whose outcome holds parameter errors, and those errors.
    errors: int = 0
    param_errors: int = 0
    duplicates: int = 0
    redelivered: int = 0
    failed: int = 0
    malformed: int = 0
    queue_depth: int = 0
    #: Live workers serving the run (None: the backend cannot tell).
    workers: int | None = None
    control: str = "running"
    seeded_at: float | None = None
    in_flight: list[InFlight] = field(default_factory=list)
    #: The last few distinct errors (compute failures, malformed messages), newest first.
    recent_errors: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.done + self.errors + self.dead

    @property
    def complete(self) -> bool:
        return self.total_chunks > 0 and self.finished >= self.total_chunks

    @property
    def failures(self) -> int:
        """Chunks that finished without every result: dead, or with parameter errors."""
        return self.dead + self.errors

    @property
    def state(self) -> str:
        """seeding | running | paused | cancelled | complete | complete-with-failures."""
        if self.complete:
            return "complete-with-failures" if self.failures else "complete"
        if self.control in ("paused", "cancelled"):
            return self.control
        if self.seeded_chunks < self.total_chunks:
            return "seeding"
        return "running"

    @property
    def ratio(self) -> float:
        return self.finished / self.total_chunks if self.total_chunks else 0.0

    @property
    def waiting(self) -> int:
        """Work that workers may take now: 0 when the run is paused, cancelled or complete."""
        return self.queue_depth if self.state in ("seeding", "running") else 0
