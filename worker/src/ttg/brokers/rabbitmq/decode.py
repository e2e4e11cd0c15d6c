"""The RabbitMQ backend's one validating layer for what it reads (layout in ``connection.py``).

Streams keep whatever anyone published, for good: a garbage message in
``ttg.runs`` or a run's ledger is replayed by every reader, forever. So every
message body and every task's headers pass here first, and garbage raises
``DecodeError`` for that one message. Readers count it as a problem of its run
and go on; a callback on pika's I/O loop never raises on it, since an exception
there closes the connection and the replay after the reconnect would meet the
same message again (DESIGN.md invariant 12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ttg import decode
from ttg.decode import MAX_INT, DecodeError
from ttg.limits import MAX_CHUNKS, MAX_ERROR_CHARS, MAX_WORKER_CHARS, RUN_ID
from ttg.run import CONTROLS, LongParam, Outcome

#: Longest stream message read (a ledger batch of a prefetch window of big results).
MAX_MESSAGE_BYTES = decode.MAX_JSON_BYTES
#: Longest barrier or sync marker (ours are 32 hex digits).
MAX_MARKER_CHARS = 64
#: Most chunks one activity snapshot lists (a worker holds at most its prefetch).
MAX_HELD = 100_000
#: Ledger event kinds a reader knows; others are ignored (a newer writer's).
EVENT_KINDS = frozenset({"redelivered", "released", "failed", "malformed", "retry"})
#: Outcome statuses as written in a retry event.
STATUSES = frozenset({"ok", "errors", "dead"})


def message(raw: bytes, what: str) -> dict[str, Any]:
    """A stream message's JSON object.

    NaN and Infinity are kept: a result may be one (the ledger's JSON is Python's);
    the fields that must be numbers are checked one by one.

    Raises:
        DecodeError: too long, not JSON, too deep, or not an object.
    """
    loaded = decode.loads(raw, what=what, max_bytes=MAX_MESSAGE_BYTES, allow_nan=True)
    return decode.as_dict(loaded, what)


def marker(msg: Mapping[str, Any], name: str) -> str:
    return decode.as_str(msg[name], name, MAX_MARKER_CHARS)


def run_id(v: Any, what: str = "run") -> str:
    if not isinstance(v, str) or not RUN_ID.fullmatch(v):
        raise DecodeError(f"{what} {decode.preview(v, 80)} is not a run id")
    return v


@dataclass(frozen=True)
class RunsMessage:
    """One message of ``ttg.runs``: a run announced (with its spec), steered or deleted."""

    #: announce | control | deleted | sync | barrier (a reader's marker) | other (a newer kind)
    kind: str
    run: str | None = None
    #: The spec as published (checked by ``RunSpec.from_dict``: its garbage is that run's).
    spec: Any = None
    control: str | None = None
    marker: str | None = None


def runs_message(msg: Mapping[str, Any]) -> RunsMessage:
    """Classify a ``ttg.runs`` message.

    Raises:
        DecodeError: it is none of the known kinds, or its run id or control is wrong.
    """
    if "sync" in msg:
        return RunsMessage("sync", marker=marker(msg, "sync"))
    if "barrier" in msg:
        return RunsMessage("barrier", marker=marker(msg, "barrier"))
    if "deleted" in msg:
        return RunsMessage("deleted", run=run_id(msg["deleted"], "deleted run"))
    if "spec" in msg:
        return RunsMessage("announce", run=run_id(msg.get("run")), spec=msg["spec"])
    if "control" in msg:
        control = msg["control"]
        if control not in CONTROLS:
            raise DecodeError(f"control {decode.preview(control, 40)} is not one of {CONTROLS}")
        return RunsMessage("control", run=run_id(msg.get("run")), control=control)
    # A kind a newer version publishes: not ours to understand, nor an error.
    return RunsMessage("other")


def cursor(msg: Mapping[str, Any]) -> int:
    """A seeding cursor of a run's meta stream."""
    return decode.as_int(msg["cursor"], "seeding cursor", 0, MAX_CHUNKS)


def timestamp(v: Any, what: str) -> float | None:
    return None if v is None else decode.as_float(v, what, 0, 1e11)


@dataclass(frozen=True)
class Held:
    """A chunk an activity snapshot says its worker held."""

    chunk: int
    attempt: int
    since: float


@dataclass(frozen=True)
class Snapshot:
    """One message of a run's activity stream."""

    worker: str
    t: float
    held: tuple[Held, ...]
    #: chunk -> the parameter its worker has been computing for long (``"l"``).
    long: dict[int, LongParam] = field(default_factory=dict)


def snapshot(msg: Mapping[str, Any], run: str = "") -> Snapshot:
    """An activity snapshot ``{"w": worker, "t": time, "h": [[chunk, attempt, since], ...]}``,
    and ``"l": [LongParam.to_list(), ...]`` when its worker has a parameter running long.

    Raises:
        DecodeError: a field is missing or wrong.
    """
    held = msg.get("h") or []
    if not isinstance(held, list) or len(held) > MAX_HELD:
        raise DecodeError(f"held chunks {decode.preview(held, 40)} are not a list")
    out = []
    for h in held:
        if not isinstance(h, list) or len(h) != 3:
            raise DecodeError(f"held chunk {decode.preview(h, 40)} is not [chunk, attempt, since]")
        out.append(
            Held(
                decode.as_int(h[0], "held chunk", 0, MAX_CHUNKS),
                decode.as_int(h[1], "held chunk's attempt", 0, MAX_INT),
                decode.as_float(h[2], "held since", 0, 1e11),
            )
        )
    long = msg.get("l")
    return Snapshot(
        snapshot_worker(msg),
        decode.as_float(msg.get("t"), "snapshot time", 0, 1e11),
        tuple(out),
        {} if long is None else LongParam.from_lists(run, long, MAX_CHUNKS + 1),
    )


def snapshot_worker(msg: Mapping[str, Any]) -> str:
    """The worker an activity snapshot is from (``snapshot`` reads the rest)."""
    return decode.as_str(msg.get("w"), "snapshot worker", MAX_WORKER_CHARS)


def outcomes(msg: Mapping[str, Any]) -> list[Any]:
    """The outcome batch of a ledger message (each checked by ``outcome``); [] if none."""
    batch = msg.get("o")
    if batch is None:
        return []
    if not isinstance(batch, list):
        raise DecodeError(f"outcome batch {decode.preview(batch, 40)} is not a list")
    return batch


def outcome_chunk(o: Any, total_chunks: int) -> int:
    """The chunk one entry of an outcome batch is for.

    Raises:
        DecodeError: the entry is not an object, or its chunk is not one of the run's.
    """
    return decode.as_int(decode.as_dict(o, "an outcome").get("c"), "chunk", 0, total_chunks - 1)


def outcome(o: Any, total_chunks: int) -> Outcome:
    """One entry of an outcome batch, every field checked.

    Raises:
        DecodeError: as ``Outcome.from_dict``, or its chunk is not the run's.
    """
    return Outcome.from_dict(outcome_chunk(o, total_chunks), o)


def round_of(o: Mapping[str, Any]) -> int:
    return decode.as_int(o.get("g", 0), "round", 0, MAX_INT)


@dataclass(frozen=True)
class Retried:
    """A chunk a ``ttg retry`` re-queued, with the counts its old outcome leaves."""

    chunk: int
    status: str
    params: int
    param_errors: int


@dataclass(frozen=True)
class Event:
    """A ledger message that is an event: ``{"e": kind, ...}``."""

    kind: str
    t: float
    chunk: int | None = None
    worker: str | None = None
    previous_worker: str | None = None
    detail: str | None = None
    #: For "retry": its round, and the chunks it re-queued.
    round: int = 0
    retried: tuple[Retried, ...] = ()


def event(msg: Mapping[str, Any], total_chunks: int) -> Event | None:
    """The event a ledger message carries; None if it carries none, or one of a kind unknown.

    Raises:
        DecodeError: a known event with a wrong field.
    """
    kind = msg.get("e")
    if kind is None or (isinstance(kind, str) and kind not in EVENT_KINDS):
        return None
    if not isinstance(kind, str):
        raise DecodeError(f"event kind {decode.preview(kind, 40)} is not a name")
    t = decode.as_float(msg.get("t", 0), "event time", 0, 1e11)
    if kind == "retry":
        return Event(
            kind, t, round=round_of(msg), retried=tuple(_retried(msg.get("c"), total_chunks))
        )
    chunk = msg.get("c")
    detail = decode.opt_str(msg.get("d"), "event detail", MAX_ERROR_CHARS)
    return Event(
        kind,
        t,
        chunk=None if chunk is None else decode.as_int(chunk, "event chunk", 0, total_chunks - 1),
        worker=decode.opt_str(msg.get("w"), "event worker", MAX_WORKER_CHARS),
        previous_worker=decode.opt_str(msg.get("p"), "event previous worker", MAX_WORKER_CHARS),
        detail=None if detail is None else decode.one_line(detail, 500),
    )


def _retried(listed: Any, total_chunks: int) -> list[Retried]:
    if not isinstance(listed, list):
        raise DecodeError(f"retried chunks {decode.preview(listed, 40)} are not a list")
    out = []
    for item in listed:
        if not isinstance(item, list) or len(item) != 4 or str(item[1]) not in STATUSES:
            raise DecodeError(f"retried chunk {decode.preview(item, 60)} is not readable")
        out.append(
            Retried(
                decode.as_int(item[0], "retried chunk", 0, total_chunks - 1),
                item[1],
                decode.as_int(item[2], "retried chunk's parameters", 0, MAX_INT),
                decode.as_int(item[3], "retried chunk's parameter errors", 0, MAX_INT),
            )
        )
    return out


@dataclass(frozen=True)
class Task:
    """A task message's headers, checked against its run."""

    first: int
    count: int
    earlier: int
    round: int
    #: Deliveries RabbitMQ counted before this one (quorum queues' x-delivery-count).
    delivered: int


def task(headers: Any, total_chunks: int) -> Task:
    """The headers of a task (or dead-lettered task) message.

    Raises:
        DecodeError: a header is missing, not an integer, or out of the run's range.
    """
    if not isinstance(headers, Mapping) or "c" not in headers:
        raise DecodeError("no chunk header c")
    first = decode.as_int(headers["c"], "chunk", 0, total_chunks - 1)
    count = decode.as_int(headers.get("n", 1), "chunk count", 1, total_chunks - first)
    return Task(
        first,
        count,
        decode.as_int(headers.get("a", 0), "attempt", 0, MAX_INT),
        decode.as_int(headers.get("g", 0), "round", 0, MAX_INT),
        decode.as_int(headers.get("x-delivery-count", 0), "delivery count", 0, MAX_INT),
    )


@dataclass(frozen=True)
class BegunMessage:
    """One message of a run's begun stream: chunks a worker began, or a reader's sync marker."""

    #: ``(chunk, attempt)`` of each delivery begun.
    marks: tuple[tuple[int, int], ...] = ()
    sync: str | None = None


def begun_message(msg: Mapping[str, Any], total_chunks: int) -> BegunMessage:
    """``{"b": [[chunk, attempt], ...]}`` or ``{"sync": marker}``.

    Raises:
        DecodeError: neither, or a chunk out of the run's range, an attempt below 1.
    """
    if "sync" in msg:
        return BegunMessage(sync=marker(msg, "sync"))
    raw = msg.get("b")
    if not isinstance(raw, list) or len(raw) > MAX_HELD:
        raise DecodeError("a begun mark holds no list b of chunks")
    marks = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 2:
            raise DecodeError(f"begun mark {decode.preview(item, 40)} is not [chunk, attempt]")
        marks.append(
            (
                decode.as_int(item[0], "chunk", 0, total_chunks - 1),
                decode.as_int(item[1], "attempt", 1, MAX_INT),
            )
        )
    return BegunMessage(marks=tuple(marks))
