"""Runs, chunks, ledger entries and progress: the vocabulary every backend shares.

A run's spec is versioned and forward compatible (docs/contract.md, "Run specs"):
it carries a ``format`` and the features a reader must understand to run it
(``requires``). A reader ignores fields it does not know unless a feature it
lacks is required; then the run is *unsupported* (``UnsupportedRun``) and a
worker skips that run, never the others. Everything read back is checked
(types, bounds, the run it was stored under) before it is believed.
"""

from __future__ import annotations

import enum
import functools
import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from ttg import command, compute, decode, limits
from ttg import space as spaces
from ttg.decode import DecodeError
from ttg.errors import RunDataError, UnsupportedRun, UsageError
from ttg.jsontext import compact
from ttg.limits import (
    MAX_CHUNKS,
    MAX_DELIVERIES,
    MAX_ERROR_CHARS,
    MAX_PARAM_TIMEOUT,
    MAX_PARAMS,
    MAX_REQUIRES,
    MAX_SPEC_BYTES,
    MAX_WORK_MS,
    MAX_WORKER_CHARS,
    check_int,
    param_errors,
    parse_quantity,
    run_named,
    space_of,
)
from ttg.reusefields import (
    MAX_IDENTITY_CHARS,
    Source,
    compute_ranges,
    sources,
)

#: What a run id looks like (ttg.limits; named here too, where runs are).
RUN_ID = limits.RUN_ID
check_run_id = limits.check_run_id

#: What a run spec's ``results`` may hold (``ttg.store.parse_url`` checks the details).
RESULTS_URL = re.compile(r"broker|file:///[^\x00-\x1f]*|s3://[^\x00-\x1f/]+(/[^\x00-\x1f]*)?")

#: How a run is steered: the only values of its control flag.
CONTROLS = ("running", "paused", "cancelled")

#: The run-spec format this version writes for a spec that requires features; a stored
#: spec without ``format`` is format 1 (one that requires nothing is written so).
FORMAT = 2
#: Spec fields whose meaning a reader must not silently ignore, and the feature each
#: needs. Such a field defaults to "off"; whenever it is not at its default the writer
#: lists its feature in ``requires``, so a reader that lacks the feature skips the run
#: instead of running it wrongly. A new field of that kind: a RunSpec field with an
#: "off" default, checked in ``__post_init__``, and an entry here (FEATURES follows).
FEATURE_FIELDS: dict[str, str] = {
    "results": "results-store",
    "reuse": "reuse",
    "param_timeout": "param-timeout",
    "param_memory": "param-memory",
    "exec": "exec",
}
#: Features of a run spec this version understands.
FEATURES: frozenset[str] = frozenset(FEATURE_FIELDS.values())


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; immutable once seeded.

    ``max_deliveries`` belongs to the run (one owner per setting): workers
    never override it. ``format`` and ``requires`` say how to read the rest
    (module docstring); neither takes part in comparing two specs' meaning
    beyond what the fields themselves say.

    Raises:
        UsageError: a field has the wrong type or is out of bounds.
    """

    run: str
    space: dict[str, Any]
    chunk_size: int
    compute: str
    work_ms: int = 0
    max_deliveries: int = 5
    format: int = field(default=FORMAT, compare=False)
    requires: tuple[str, ...] = ()
    #: Where workers write the run's results: ``broker`` (in the ledger), ``file:///PATH``
    #: or ``s3://BUCKET/PREFIX`` (a results store, ``ttg.store``). Set once, at seeding.
    results: str = "broker"
    #: Results this run takes from earlier runs instead of computing them (``ttg.reuse``):
    #: ``{"from": [RUN, ...], "compute": [[lo, hi], ...]}``, the indices left to compute.
    #: Chunks first cover those, in order, then the reused rest (``Reordered``).
    reuse: dict[str, Any] | None = None
    #: The compute's identity at seeding (``ttg.identity``): what reuse compares. Not part
    #: of a spec's meaning (seeding again after an upgrade is no conflict), and ignored
    #: by readers that do not know it.
    identity: str | None = field(default=None, compare=False)
    #: Longest a parameter may compute, seconds (0: no limit); its child is then killed.
    param_timeout: float = 0.0
    #: Memory limit of a compute process, a Kubernetes quantity (``256Mi``; "": none).
    param_memory: str = ""
    #: A program compute's command (``ttg seed --exec``): argument list, placeholders
    #: unexpanded; ``compute`` is then ``exec:`` and its first argument.
    exec: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_run_id(self.run)
        check_int("chunk size", self.chunk_size, 1, MAX_PARAMS)
        check_int("work-ms", self.work_ms, 0, MAX_WORK_MS)
        check_int("max deliveries", self.max_deliveries, 1, MAX_DELIVERIES)
        check_int("spec format", self.format, 1, 10**6)
        if not isinstance(self.compute, str) or len(self.compute) > compute.MAX_NAME_CHARS:
            raise UsageError(f"compute must be a name, got {decode.preview(self.compute, 80)}")
        compute.check_name(self.compute)
        if not isinstance(self.results, str) or not RESULTS_URL.fullmatch(self.results):
            raise UsageError(
                f"results {decode.preview(self.results, 80)}: expected broker, file:///PATH "
                "or s3://BUCKET"
            )
        if self.identity is not None and (
            not isinstance(self.identity, str) or len(self.identity) > MAX_IDENTITY_CHARS
        ):
            raise UsageError(f"identity {decode.preview(self.identity, 80)} is not a short text")
        self._check_limits()
        needed = {f for name, f in FEATURE_FIELDS.items() if self._not_default(name)}
        requires = tuple(sorted(set(self.requires) | needed))
        unknown = sorted(set(requires) - FEATURES)
        if unknown:
            raise UsageError(f"spec requires unknown features: {', '.join(unknown)}")
        object.__setattr__(self, "requires", requires)
        # Built once: a worker asks for it on every chunk.
        built: spaces.AnySpace = space_of(self.space)
        if self.reuse is not None:
            built = spaces.Reordered(spaces.base_of(built), compute_ranges(self.reuse))
        object.__setattr__(self, "_space", built)
        if self.exec:
            command.check_command(self.exec, self.parameter_space.names)
        if self.total_chunks > MAX_CHUNKS:
            raise UsageError(
                f"{self.total_params} parameters in chunks of {self.chunk_size} make "
                f"{self.total_chunks} chunks, more than {MAX_CHUNKS}: choose a larger chunk size"
            )

    def _check_limits(self) -> None:
        t = self.param_timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= MAX_PARAM_TIMEOUT:
            raise UsageError(
                f"param timeout {decode.preview(t, 40)}: expected seconds from 0 to "
                f"{MAX_PARAM_TIMEOUT:g}"
            )
        object.__setattr__(self, "param_timeout", float(t))
        if not isinstance(self.param_memory, str):
            raise UsageError(f"param memory {decode.preview(self.param_memory, 40)}: not text")
        if self.param_memory:
            parse_quantity(self.param_memory)
        if not isinstance(self.exec, list | tuple):
            raise UsageError(f"exec {decode.preview(self.exec, 40)}: expected a list of arguments")
        object.__setattr__(self, "exec", tuple(self.exec))
        if self.exec and not all(isinstance(a, str) for a in self.exec):
            raise UsageError("exec: every argument must be text")
        is_program = self.compute.startswith(compute.EXEC + ":")
        if is_program != bool(self.exec) or (
            self.exec and self.compute != f"{compute.EXEC}:{self.exec[0]}"
        ):
            raise UsageError(
                f"compute {decode.preview(self.compute, 80)}: a program compute is exactly "
                "exec: and the first argument of its command"
            )

    @property
    def param_memory_bytes(self) -> int | None:
        """The memory limit in bytes (None: no limit)."""
        return parse_quantity(self.param_memory) if self.param_memory else None

    def _not_default(self, name: str) -> bool:
        f = next(f for f in fields(self) if f.name == name)
        factory: Any = f.default_factory
        default = factory() if f.default is MISSING and factory is not MISSING else f.default
        return bool(getattr(self, name) != default)

    @property
    def parameter_space(self) -> spaces.AnySpace:
        space: spaces.AnySpace = self.__dict__["_space"]
        return space

    @property
    def total_params(self) -> int:
        return self.parameter_space.size

    @functools.cached_property
    def computed_params(self) -> int:
        """Parameters the run's workers compute: all but those it reuses."""
        space = self.parameter_space
        return space.computed if isinstance(space, spaces.Reordered) else space.size

    @functools.cached_property
    def task_chunks(self) -> int:
        """Chunks workers compute: ``0 .. task_chunks-1``; the rest are reused at seeding."""
        return -(-self.computed_params // self.chunk_size)

    @property
    def total_chunks(self) -> int:
        return self.task_chunks + -(-(self.total_params - self.computed_params) // self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        """The half-open position range ``[lo, hi)`` of chunk number ``chunk``.

        Positions are the run's indices, except in a run that reuses results: there
        the computed indices come first (``spaces.Reordered``), so that every chunk,
        computed or reused, is one range.
        """
        tasks, computed = self.task_chunks, self.computed_params
        if chunk < tasks:
            lo = chunk * self.chunk_size
            return lo, min(lo + self.chunk_size, computed)
        lo = computed + (chunk - tasks) * self.chunk_size
        return lo, min(lo + self.chunk_size, self.total_params)

    def to_dict(self) -> dict[str, Any]:
        """The stored form. A spec that requires nothing is written exactly as format 1
        (no ``format``, ``requires`` or feature field at its default), so every reader,
        older versions' too, runs it: a rolling upgrade's new seeder and old workers
        agree. One that requires a feature is written as format 2 with its ``requires``.
        """
        d = asdict(self)
        d.pop("_space", None)
        if self.identity is None:
            d.pop("identity")
        if not self.requires:
            for name in ("format", "requires", *FEATURE_FIELDS):
                d.pop(name, None)
            return d
        d["format"], d["requires"] = FORMAT, list(self.requires)
        for name in FEATURE_FIELDS:
            if not self._not_default(name):
                d.pop(name, None)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Any, run: str | None = None) -> RunSpec:
        """Rebuild a spec read from a broker, stored under ``run`` (when the key says).

        Fields this version does not know are ignored unless the spec requires a
        feature it lacks.

        Raises:
            UnsupportedRun: the spec requires features this version does not know.
            RunDataError: it is not a valid spec, or names another run than ``run``.
        """
        who = run or run_named(d)
        try:
            d = decode.as_dict(d, "the spec")
            fmt = decode.as_int(d.get("format", 1), "its format", 1, 10**6)
            listed = d.get("requires", [])
            if not isinstance(listed, list) or len(listed) > MAX_REQUIRES:
                raise DecodeError(f"its requires {decode.preview(listed, 80)} is not a short list")
            requires = tuple(decode.as_str(r, "a required feature", 64) for r in listed)
            unknown = sorted(set(requires) - FEATURES)
            if unknown:
                raise UnsupportedRun(
                    who,
                    f"its spec (format {fmt}) requires {', '.join(map(decode.one_line, unknown))}, "
                    "which this version of ttg does not know: upgrade it",
                )
            if run is not None and d.get("run") != run:
                raise DecodeError(
                    f"its spec names run {decode.preview(d.get('run'), 80)}, "
                    "not the run it is stored under"
                )
            known = {f.name for f in fields(cls) if f.init}
            kwargs = {k: v for k, v in d.items() if k in known}
            kwargs["format"], kwargs["requires"] = fmt, requires
            return cls(**kwargs)
        except (UsageError, DecodeError, TypeError, ValueError, OverflowError) as e:
            raise RunDataError(who, f"unreadable spec: {decode.one_line(str(e), 300)}") from None

    @classmethod
    def from_json(cls, text: str | bytes, run: str | None = None) -> RunSpec:
        """``from_dict`` of JSON text (bounded, no NaN).

        Raises:
            UnsupportedRun, RunDataError: as ``from_dict``.
        """
        try:
            d = decode.loads(text, what="the spec", max_bytes=MAX_SPEC_BYTES)
        except DecodeError as e:
            raise RunDataError(run, f"unreadable spec: {e}") from None
        return cls.from_dict(d, run)


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

    @functools.cached_property
    def bounds(self) -> tuple[int, int]:
        """``[lo, hi)`` of its chunk (asked for several times per chunk, worked out once)."""
        return self.spec.bounds(self.chunk)

    @property
    def lo(self) -> int:
        return self.bounds[0]

    @property
    def hi(self) -> int:
        return self.bounds[1]


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


def _ref(chunk: int, d: Any) -> ObjectRef | None:
    if d is None:
        return None
    try:
        return ObjectRef.from_dict(decode.as_dict(d, "its object"))
    except (KeyError, ValueError, TypeError) as e:
        raise DecodeError(f"outcome of chunk {chunk}: {decode.one_line(str(e), 200)}") from None


@dataclass(frozen=True)
class Outcome:
    """A chunk's entry in the ledger: its results (with any parameter errors), or its death.

    ``param_errors`` are ``(parameter index, error)`` pairs, or triples with the
    error's traceback; the result list holds None at their places. A run with a
    results store keeps its results there: the ledger then holds ``ref`` (the
    object, its rows and digest) and ``result`` is None until a reader fetches the
    object (``ttg.store``).
    """

    chunk: int
    status: Status
    params: int
    worker: str
    attempt: int
    finished_at: float
    result: list[Any] | None = None
    error: str | None = None
    param_errors: tuple[tuple[int, str] | tuple[int, str, str], ...] = ()
    started_at: float | None = None
    round: int = 0
    #: ``result`` already encoded as JSON (the worker encodes once, to find unserialisable values).
    result_json: str | None = field(default=None, compare=False, repr=False)
    #: The results store's object holding ``result`` (None: the results are in the ledger).
    ref: ObjectRef | None = None
    #: A reused chunk's sources, in parameter order (``Source``); () for a computed chunk.
    src: tuple[Source, ...] = ()

    def sources(self) -> Iterator[Source | None]:
        """Each parameter's source, in order (None for every one of a computed chunk)."""
        if not self.src:
            yield from itertools.repeat(None, self.params)
            return
        for s in self.src:
            yield from itertools.repeat(s, s[0])

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
        if self.src:
            body["src"] = [list(s) for s in self.src]
        head = compact(body)
        result = self.result_json if self.result_json is not None else compact(self.result)
        return f'{head[:-1]},"r":{result}}}'

    @classmethod
    def from_dict(cls, chunk: int, d: Any) -> Outcome:
        """An outcome read from a ledger, every field checked.

        Raises:
            DecodeError: a field is missing, of the wrong type or out of bounds.
        """
        d = decode.as_dict(d, f"outcome of chunk {chunk}")
        try:
            status = Status(d["s"])
        except (KeyError, ValueError, TypeError):
            raise DecodeError(
                f"outcome of chunk {chunk}: status {decode.preview(d.get('s'), 40)} is unknown"
            ) from None
        result = d.get("r")
        if result is not None and not isinstance(result, list):
            raise DecodeError(f"outcome of chunk {chunk}: results are not a list")
        t0 = d.get("t0")
        return cls(
            chunk=chunk,
            status=status,
            params=decode.as_int(d.get("n"), "its parameter count", 0, MAX_PARAMS),
            worker=decode.as_str(d.get("w"), "its worker", MAX_WORKER_CHARS),
            attempt=decode.as_int(d.get("a"), "its attempt", 0, MAX_PARAMS),
            finished_at=decode.as_float(d.get("t"), "its finish time"),
            result=result,
            error=decode.opt_str(d.get("e"), "its error", MAX_ERROR_CHARS),
            param_errors=param_errors(d.get("pe")),
            started_at=None if t0 is None else decode.as_float(t0, "its start time"),
            round=decode.as_int(d.get("g", 0), "its round", 0, MAX_PARAMS),
            ref=_ref(chunk, d.get("o")),
            src=sources(chunk, d.get("src")),
        )

    @classmethod
    def from_json(cls, chunk: int, text: str | bytes) -> Outcome:
        """``from_dict`` of JSON text (NaN and Infinity kept: a compute may return them).

        Raises:
            DecodeError: as ``from_dict``, or the text is not JSON.
        """
        return cls.from_dict(chunk, decode.loads(text, what=f"chunk {chunk}", allow_nan=True))

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
    #: The broker refused it for good because of what the run's keys hold (garbage):
    #: nothing recorded; the worker gives the chunk back and leaves the run alone a while.
    REFUSED = "refused"


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
    #: The parameter its worker has been computing for long (``LongParam``), if one.
    param: int | None = None
    #: For how long, and the median parameter time its worker has seen in the run.
    param_s: float | None = None
    median_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """``asdict`` of this flat record, without its deep copies."""
        return {name: getattr(self, name) for name in _IN_FLIGHT_FIELDS}

    def with_long(self, long: LongParam | None, now: float) -> InFlight:
        """This chunk with the parameter its worker said it is on for long."""
        if long is None:
            return self
        running = round(max(0.0, now - long.since), 3)
        return replace(self, param=long.param, param_s=running, median_s=long.median_s)

    @property
    def likely_hang(self) -> bool:
        """Its parameter has run over ``HANG_FACTOR`` times the run's median."""
        return (
            self.param_s is not None
            and self.median_s is not None
            and self.param_s > HANG_FACTOR * self.median_s
        )


_IN_FLIGHT_FIELDS = tuple(f.name for f in fields(InFlight))

#: A parameter running this many times the run's median parameter time is a likely hang.
HANG_FACTOR = 10


@dataclass(frozen=True)
class LongParam:
    """A parameter a worker has been computing for long (``Consumer.running_long``)."""

    run: str
    chunk: int
    param: int
    #: When it started (epoch seconds).
    since: float
    #: The median parameter time the worker has seen in the run (None: none finished yet).
    median_s: float | None

    def to_list(self) -> list[Any]:
        return [self.chunk, self.param, round(self.since, 3), self.median_s]

    @classmethod
    def from_lists(cls, run: str, v: Any, total_chunks: int) -> dict[int, LongParam]:
        """Chunk -> its long parameter, from what a worker wrote (``to_list`` each).

        Raises:
            DecodeError: it is not such a list.
        """
        if not isinstance(v, list) or len(v) > limits.MAX_LONG_PARAMS:
            raise DecodeError(f"long parameters {decode.preview(v, 40)} are not a list")
        out = {}
        for item in v:
            if not isinstance(item, list) or len(item) != 4:
                raise DecodeError(f"long parameter {decode.preview(item, 40)} is not a list of 4")
            chunk = decode.as_int(item[0], "long parameter's chunk", 0, total_chunks - 1)
            median = item[3]
            out[chunk] = cls(
                run,
                chunk,
                decode.as_int(item[1], "long parameter", 0),
                decode.as_float(item[2], "long parameter's start", 0, 1e11),
                None if median is None else decode.as_float(median, "median", 0, 1e9),
            )
        return out


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
    #: Chunks ``ttg retry`` re-queued, ever, and the computed parameters their earlier
    #: outcomes had counted: what left ``done``/``errors``/``dead`` and ``done_params``.
    #: Added back, they give counts that only grow (the exporter's counters).
    retried: int = 0
    retried_params: int = 0
    #: Live workers serving the run (None: the backend cannot tell).
    workers: int | None = None
    control: str = "running"
    seeded_at: float | None = None
    in_flight: list[InFlight] = field(default_factory=list)
    #: The last few distinct errors (compute failures, malformed messages), newest first.
    recent_errors: list[str] = field(default_factory=list)
    #: Records of the run the broker holds that could not be read (garbage), described.
    problems: list[str] = field(default_factory=list)

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
