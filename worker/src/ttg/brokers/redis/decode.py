"""The Redis backend's one validating layer for what it reads (layout in ``client.py``).

Every value read from a run's keys passes here before anything believes it:
tallies and meta fields (strings in Redis), task entries, events, ledger
entries, pending entries. Garbage raises ``DecodeError`` for one record, or
becomes one of the run's ``Problems`` while the rest is read: never a
traceback, never a reason to stop serving other runs (DESIGN.md invariant 12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ttg import decode
from ttg.decode import MAX_INT, DecodeError, Problems
from ttg.limits import MAX_CHUNKS, MAX_WORKER_CHARS
from ttg.run import CONTROLS, LongParam, Outcome, RunEvent

#: Most tallies read from ``ttg:{R}:stats`` (a handful are written).
MAX_TALLIES = 100
#: Longest event detail shown (the worker writes at most 500 characters).
MAX_DETAIL_CHARS = 2000
#: Event kinds (``RunEvent.kind``) a reader shows.
EVENT_KINDS = frozenset({"redelivered", "released", "failed", "malformed", "retry"})


def stats(raw: Mapping[str, Any], problems: Problems) -> dict[str, int]:
    """The run's tallies (every field is a count); one that is not is a problem and reads as 0."""
    out: dict[str, int] = {}
    for name in list(raw)[:MAX_TALLIES]:
        try:
            out[name] = decode.as_int(raw[name], f"tally {name}", 0, MAX_INT, text=True)
        except DecodeError as e:
            problems.add(decode.one_line(str(e), 200))
    if len(raw) > MAX_TALLIES:
        problems.add(f"{len(raw)} tallies, more than {MAX_TALLIES}: the rest ignored")
    return out


@dataclass(frozen=True)
class Meta:
    """``ttg:{R}:meta``, checked."""

    total: int | None
    cursor: int
    control: str
    seeded_at: float | None
    completed_at: float | None
    round: int


def meta(raw: Mapping[str, Any], problems: Problems) -> Meta:
    """The run's meta hash; a field that does not read is a problem and takes its default."""

    def field(name: str, lo: int, hi: int) -> int | None:
        if name not in raw:
            return None
        try:
            return decode.as_int(raw[name], f"meta {name}", lo, hi, text=True)
        except DecodeError as e:
            problems.add(str(e))
            return None

    control = raw.get("control", "running")
    if control not in CONTROLS:
        problems.add(f"meta control {decode.preview(control, 40)} is not one of {CONTROLS}")
        control = "running"
    seeded = field("seeded_at", 0, MAX_INT)
    completed = field("completed_at", 0, MAX_INT)
    return Meta(
        total=field("total", 0, MAX_CHUNKS),
        cursor=field("cursor", 0, MAX_CHUNKS) or 0,
        control=str(control),
        seeded_at=None if seeded is None else seeded / 1000,
        completed_at=None if completed is None else completed / 1000,
        round=field("round", 0, MAX_INT) or 0,
    )


def task(fields: Mapping[str, Any] | None, total_chunks: int) -> tuple[int, int, int]:
    """A task entry's ``(chunk, earlier deliveries, round)``.

    Raises:
        DecodeError: a field is missing, not a number, or out of range.
    """
    if not isinstance(fields, Mapping):
        raise DecodeError("the entry has no fields")
    if "c" not in fields:
        raise DecodeError("no chunk field c")
    chunk = decode.as_int(fields["c"], "chunk", 0, total_chunks - 1, text=True)
    earlier = decode.as_int(fields.get("a", "0"), "attempt", 0, MAX_INT, text=True)
    rnd = decode.as_int(fields.get("g", "0"), "round", 0, MAX_INT, text=True)
    return chunk, earlier, rnd


def chunk_of(fields: Mapping[str, Any] | None) -> int | None:
    """The chunk a task entry names, or None if it names none readable."""
    try:
        return decode.as_int((fields or {}).get("c"), "chunk", 0, MAX_CHUNKS, text=True)
    except DecodeError:
        return None


def event(fields: Mapping[str, Any]) -> RunEvent:
    """One entry of ``ttg:{R}:events``.

    Raises:
        DecodeError: its time or kind is missing or wrong.
    """
    kind = fields.get("k")
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        raise DecodeError(f"event kind {decode.preview(kind, 40)} is unknown")
    return RunEvent(
        t=decode.as_int(fields.get("t"), "event time", 0, MAX_INT, text=True) / 1000,
        kind=kind,
        chunk=chunk_of(fields),
        worker=_opt(fields.get("w"), "event worker", MAX_WORKER_CHARS),
        previous_worker=_opt(fields.get("p"), "event previous worker", MAX_WORKER_CHARS),
        detail=_opt(fields.get("d"), "event detail", MAX_DETAIL_CHARS),
    )


def _opt(v: Any, what: str, limit: int) -> str | None:
    return None if v is None else decode.one_line(decode.as_str(v, what, limit))


def ledger_entry(chunk: Any, text: Any, total_chunks: int) -> Outcome:
    """One field of ``ttg:{R}:ledger``: the chunk it is for, and its outcome.

    Raises:
        DecodeError: the chunk is not one of the run's, or the outcome does not read.
    """
    n = decode.as_int(chunk, "ledger chunk", 0, total_chunks - 1, text=True)
    if not isinstance(text, str | bytes):
        raise DecodeError(f"ledger entry of chunk {n} is not text")
    return Outcome.from_json(n, text)


def long_params(
    run: str, fields: Mapping[Any, Any], total_chunks: int, problems: Problems
) -> dict[tuple[str, int], LongParam]:
    """``ttg:{R}:long`` (worker -> its long-running parameters): (worker, chunk) -> one.

    A worker's entry that cannot be read is a problem, and skipped.
    """
    out: dict[tuple[str, int], LongParam] = {}
    for worker, text in fields.items():
        try:
            name = decode.as_str(worker, "worker", MAX_WORKER_CHARS)
            value = decode.loads(text, what="long parameters", max_bytes=64 * 1024)
            found = LongParam.from_lists(run, value, total_chunks)
        except DecodeError as e:
            problems.add(f"long parameters of {decode.preview(worker, 40)}: {e}")
            continue
        out.update(((name, chunk), p) for chunk, p in found.items())
    return out
