"""Exporting a run's results: one row per parameter (or per chunk), in index order, streamed.

A ledger is read in whatever order the broker keeps it; rows come out in
parameter order through a sort that spills to a temporary SQLite file once it
holds more than a few thousand chunks, so exporting 10^7 parameters takes flat
memory. Formats: JSONL, CSV, Parquet (the ``parquet`` extra, pyarrow).

Lossless (DESIGN.md invariant 13), decided in docs/contract.md "Exports":

- Columns come from every result, seen while sorting (``Shape``): dict results
  get a column per key only when every ``ok`` result is a dict with the same
  keys; otherwise one ``result`` column, holding JSON for anything but a
  scalar. A Parquet column's type fits every value in it, or the column holds
  JSON text. No ``ok`` row ever loses its result to a column chosen too early.
- NaN and the infinities, which JSON cannot hold, are written as the strings
  ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (in JSONL, and in JSON cells).
- A CSV cell that a spreadsheet would run as a formula (it starts with ``=``,
  ``+``, ``-``, ``@``, a tab or a carriage return: OWASP's list) gets a leading
  ``'`` unless ``raw``; on a terminal, control characters are shown escaped.
- ``aggregate`` sums integers as Python integers and floats exactly (rounded
  once at the end): the sum of 3·10^6 squares is the closed form, to the unit.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import math
import pickle
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NotRequired, TypedDict

from ttg import space as spaces
from ttg.decode import Problems, printable
from ttg.failures import traceback_of
from ttg.run import Outcome, RunSpec, Status

#: Chunks sorted in memory before the sort spills to disk.
IN_MEMORY_CHUNKS = 5000
#: Rows per Parquet row group.
PARQUET_BATCH = 65536
#: Most keys of dict results given a column each; more, and results go in one JSON column.
MAX_RESULT_COLUMNS = 256
#: Columns of the per-chunk view (``--chunks``).
CHUNK_FIELDS = (
    "chunk", "params", "status", "result", "error", "param_errors", "worker", "attempt",
    "started_at", "finished_at",
)  # fmt: skip
#: What a CSV text cell may not start with unless raw: a spreadsheet would run it (OWASP).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: The largest integer a float64 holds exactly.
FLOAT_EXACT = 2**53
#: The strings non-finite floats are written as (JSON has no NaN or infinity).
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


# -- order ----------------------------------------------------------------------------------


def in_chunk_order(
    outcomes: Iterable[Outcome], observe: Callable[[Outcome], None] | None = None
) -> Iterator[Outcome]:
    """``outcomes`` sorted by chunk, spilling to a temporary SQLite file when there are many.

    ``observe`` sees every outcome before the first is yielded (the sort reads
    them all anyway): how ``Shape`` learns the columns from the whole run.
    """
    held: list[Outcome] = []
    it = iter(outcomes)
    for o in it:
        if observe:
            observe(o)
        held.append(o)
        if len(held) > IN_MEMORY_CHUNKS:
            break
    else:
        yield from sorted(held, key=lambda o: o.chunk)
        return
    with tempfile.TemporaryDirectory(prefix="ttg-results-") as tmp:
        db = sqlite3.connect(Path(tmp) / "sort.db")
        try:
            db.execute("CREATE TABLE o (chunk INTEGER PRIMARY KEY, body TEXT)")
            rows = ((o.chunk, o.to_json()) for o in _chain(held, _observed(it, observe)))
            db.executemany("INSERT OR IGNORE INTO o VALUES (?, ?)", rows)
            held.clear()
            for chunk, body in db.execute("SELECT chunk, body FROM o ORDER BY chunk"):
                yield Outcome.from_json(chunk, body)
        finally:
            db.close()


def _observed(
    it: Iterator[Outcome], observe: Callable[[Outcome], None] | None
) -> Iterator[Outcome]:
    for o in it:
        if observe:
            observe(o)
        yield o


def _chain(first: list[Outcome], rest: Iterator[Outcome]) -> Iterator[Outcome]:
    yield from first
    yield from rest


# -- rows -----------------------------------------------------------------------------------


class ResultRow(TypedDict):
    """One parameter's row, as ``ttg results`` writes it (JSONL: this object)."""

    index: int
    #: The parameter: a number for a range, a dict for a grid point or a table row.
    value: Any
    result: Any
    #: ``ok`` | ``error`` | ``dead``.
    status: str
    error: str | None
    traceback: str | None
    chunk: int
    worker: str
    attempt: int
    finished_at: float
    #: ``computed``, or ``reused:RUN``: only in a run that reuses results.
    source: NotRequired[str]


#: A row of the per-parameter view (``ResultRow``) or of the per-chunk one (``--chunks``).
Row = Mapping[str, Any]


def _errors(o: Outcome) -> dict[int, tuple[str, str | None]]:
    """Parameter index -> (error, traceback or None), from ``(i, e)`` or ``(i, e, tb)`` entries."""
    return {int(e[0]): (str(e[1]), traceback_of(e)) for e in o.param_errors}


def parameter_rows(spec: RunSpec, outcomes: Iterable[Outcome]) -> Iterator[ResultRow]:
    """One row per parameter of each outcome: its value, result, status and error.

    Status is ``ok``, ``error`` (its compute raised; the error says how, the
    traceback where, when the worker kept one) or ``dead`` (the whole chunk
    could not be computed). Outcomes in chunk order give rows in index order, also
    in a run that reuses results (its computed and reused chunks are merged).
    """
    rows = _rows(spec, outcomes)
    return rows if spec.reuse is None else _merged(spec, rows)


def _merged(spec: RunSpec, rows: Iterator[ResultRow]) -> Iterator[ResultRow]:
    """Rows in index order from a reusing run's rows in chunk order: the computed
    chunks' (spilled to a temporary file, flat memory), merged with the reused ones'."""
    tasks = spec.task_chunks
    with tempfile.TemporaryFile() as spill:
        first: ResultRow | None = None
        for row in rows:
            if row["chunk"] >= tasks:
                first = row
                break
            pickle.dump(row, spill)
        spill.seek(0)

        def computed() -> Iterator[ResultRow]:
            while True:
                try:
                    yield pickle.load(spill)  # noqa: S301 - our own file, written just now
                except EOFError:
                    return

        reused = rows if first is None else itertools.chain([first], rows)
        yield from heapq.merge(computed(), reused, key=lambda r: r["index"])


def _rows(spec: RunSpec, outcomes: Iterable[Outcome]) -> Iterator[ResultRow]:
    space = spec.parameter_space
    reuses = spec.reuse is not None
    for o in outcomes:
        lo, hi = spec.bounds(o.chunk)
        errors = _errors(o)
        results = o.result if isinstance(o.result, list) else [None] * (hi - lo)
        rows = zip(
            range(lo, hi), spaces.indices(space, lo, hi), space.values(lo, hi), results,
            o.sources(), strict=False,
        )  # fmt: skip
        for i, index, value, result, src in rows:
            tb = None
            if o.status is Status.DEAD:
                status, error = "dead", o.error
            elif i in errors:
                status, (error, tb) = "error", errors[i]
            else:
                status, error = "ok", None
            row: ResultRow = {
                "index": index,
                "value": value,
                "result": result,
                "status": status,
                "error": error,
                "traceback": tb,
                "chunk": o.chunk,
                "worker": o.worker if src is None else src[4],
                "attempt": o.attempt if src is None else src[3],
                "finished_at": o.finished_at if src is None else src[5],
            }
            if reuses:
                row["source"] = "computed" if src is None else f"reused:{src[1]}"
            yield row


def chunk_rows(outcomes: Iterable[Outcome]) -> Iterator[Row]:
    """The per-chunk view (``--chunks``): one row per chunk, its results as one JSON list."""
    for o in outcomes:
        yield {
            "chunk": o.chunk,
            "params": o.params,
            "status": str(o.status),
            "result": o.result,
            "error": o.error,
            "param_errors": [list(p) for p in o.param_errors],
            "worker": o.worker,
            "attempt": o.attempt,
            "started_at": o.started_at,
            "finished_at": o.finished_at,
        }


# -- JSON that stays JSON --------------------------------------------------------------------


def _finite(v: Any) -> Any:
    """``v`` with every NaN and infinity replaced by its string (``NON_FINITE``)."""
    if isinstance(v, float) and not math.isfinite(v):
        return NON_FINITE[repr(v)]
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def dumps(v: Any, **kw: Any) -> str:
    """``json.dumps``, but valid JSON always: NaN and the infinities become strings."""
    try:
        return json.dumps(v, allow_nan=False, default=str, **kw)
    except ValueError:
        return json.dumps(_finite(v), allow_nan=False, default=str, **kw)


def _json(v: Any) -> str:
    """``dumps(v)``, with the common case (an int) short-cut."""
    return str(v) if type(v) is int else dumps(v)


def write_jsonl(rows: Iterable[Row], out: IO[str]) -> int:
    n = 0
    for row in rows:
        out.write(dumps(row) + "\n")
        n += 1
    return n


def write_parameters_jsonl(spec: RunSpec, outcomes: Iterable[Outcome], out: IO[str]) -> int:
    """``write_jsonl(parameter_rows(spec, outcomes))``, byte for byte, several times faster.

    The fields every parameter of a chunk shares are encoded once per chunk and
    each chunk is written in one call: at 10^7 parameters this is most of the
    export's time.
    """
    if spec.reuse is not None:
        # Each parameter has its own source: the row by row way.
        return write_jsonl(parameter_rows(spec, outcomes), out)
    space = spec.parameter_space
    n = 0
    for o in outcomes:
        lo, hi = spec.bounds(o.chunk)
        shared = dumps(
            {"chunk": o.chunk, "worker": o.worker, "attempt": o.attempt,
             "finished_at": o.finished_at},
        )[1:]  # fmt: skip
        dead = o.status is Status.DEAD
        ok = {"status": "ok", "error": None, "traceback": None}
        ok_tail = ", " + dumps(ok)[1:-1] + ", " + shared
        dead_tail = ", " + dumps({**ok, "status": "dead", "error": o.error})[1:-1] + ", " + shared
        errors = _errors(o)
        results = o.result if isinstance(o.result, list) else [None] * (hi - lo)
        lines = []
        for i, value, result in zip(range(lo, hi), space.values(lo, hi), results, strict=False):
            if dead:
                tail = dead_tail
            elif i in errors:
                error, tb = errors[i]
                tail = ", " + dumps({"status": "error", "error": error, "traceback": tb})[1:-1]
                tail += ", " + shared
            else:
                tail = ok_tail
            head = f'{{"index": {i}, "value": {_json(value)}, "result": {_json(result)}'
            lines.append(f"{head}{tail}\n")
        out.write("".join(lines))
        n += len(lines)
    return n


# -- columns ---------------------------------------------------------------------------------


#: Kinds of values by their exact type (ints are sized apart; anything else is JSON).
_KINDS = {type(None): "null", bool: "bool", float: "float", str: "str"}


def kind_of(v: Any) -> str:
    """A value's kind, for choosing a column's type.

    null, bool, float, str; ``int`` (exact in a float64), ``int64``, ``bigint``
    (beyond a signed 64-bit integer); ``json`` for lists, dicts and the rest.
    """
    if type(v) is int:
        if -FLOAT_EXACT <= v <= FLOAT_EXACT:
            return "int"
        return "int64" if -(2**63) <= v < 2**63 else "bigint"
    return _KINDS.get(type(v), "json")


@dataclass
class Shape:
    """What a run's results look like, learnt from every ``ok`` result (``observe`` it).

    Memory stays small: a set of kinds per column and at most
    ``MAX_RESULT_COLUMNS`` keys.
    """

    #: The keys every ok result had so far (None before the first; empty: not all dicts).
    keys: tuple[str, ...] | None = None
    dicts: bool = True
    #: Kinds seen per result column ("" is the single result column).
    kinds: dict[str, set[str]] = field(default_factory=dict)
    _keyset: frozenset[str] = frozenset()

    def observe(self, o: Outcome, lo: int) -> None:
        """Learn from outcome ``o``, whose chunk starts at parameter ``lo``."""
        if o.status is Status.DEAD or not isinstance(o.result, list):
            return
        failed = {p[0] - lo for p in o.param_errors}
        single = self.kinds.setdefault("", set())
        for offset, r in enumerate(o.result):
            if offset in failed:
                continue  # an error's place: None, not a result
            single.add(kind_of(r))
            if self.dicts:
                self._learn_keys(r)

    def _learn_keys(self, r: Any) -> None:
        if not isinstance(r, dict) or len(r) > MAX_RESULT_COLUMNS:
            self.dicts = False
            return
        if self.keys is None:
            # The first result's order: the compute's own, as people expect the columns.
            self.keys = tuple(str(k) for k in r)
            self._keyset = frozenset(self.keys)
        elif len(r) != len(self._keyset) or not all(k in self._keyset for k in r):
            self.dicts = False
            return
        for k, v in r.items():
            self.kinds.setdefault(f"result.{k}", set()).add(kind_of(v))

    @property
    def result_keys(self) -> tuple[str, ...]:
        """One column per key when every ok result is a dict with the same keys."""
        return self.keys if self.dicts and self.keys else ()


def observer(spec: RunSpec, shape: Shape) -> Callable[[Outcome], None]:
    """``shape.observe`` for ``in_chunk_order``, knowing where each of the run's chunks starts."""
    return lambda o: shape.observe(o, spec.bounds(o.chunk)[0])


@dataclass(frozen=True)
class Columns:
    """The columns of the per-parameter view of a run."""

    #: Columns holding the parameter: one per grid axis, or "value".
    params: tuple[str, ...]
    #: Keys of dict results, each its own column (empty: one "result" column).
    result_keys: tuple[str, ...]
    #: Whether the ``traceback`` column is there (CSV: only when asked for).
    traceback: bool = True
    #: Whether the ``source`` column is there (a run that reuses results).
    source: bool = False

    @property
    def names(self) -> list[str]:
        results = [f"result.{k}" for k in self.result_keys] or ["result"]
        tb = ["traceback"] if self.traceback else []
        source = ["source"] if self.source else []
        return ["index", *self.params, *results, "status", "error", *tb, "chunk", "worker",
                "attempt", "finished_at", *source]  # fmt: skip


def columns(spec: RunSpec, shape: Shape, *, traceback: bool = False) -> Columns:
    """Columns for ``spec`` with results shaped as ``shape`` says (and ``traceback``'s)."""
    return Columns(
        spec.parameter_space.names or ("value",), shape.result_keys, traceback,
        spec.reuse is not None,
    )  # fmt: skip


def flatten(row: ResultRow, cols: Columns) -> list[Any]:
    """A row as the flat cells of CSV and Parquet, in the order of ``cols.names``."""
    value = row["value"]
    params = [value.get(n) for n in cols.params] if isinstance(value, dict) else [value]
    result = row["result"]
    if cols.result_keys:
        got = result if isinstance(result, dict) else {}
        results = [got.get(k) for k in cols.result_keys]
    else:
        results = [result]
    tb = [row.get("traceback")] if cols.traceback else []
    source = [row.get("source")] if cols.source else []
    return [row["index"], *params, *results, row["status"], row["error"], *tb, row["chunk"],
            row["worker"], row["attempt"], row["finished_at"], *source]  # fmt: skip


# -- CSV ---------------------------------------------------------------------------------------

#: Cell types CSV writes as they are (None as an empty cell); anything else is written as JSON.
_SCALARS = frozenset({str, int, float, bool})


def _cell(v: Any, raw: bool, tty: bool = False) -> Any:
    if v is None:
        return v
    if type(v) not in _SCALARS:
        v = dumps(v)
    elif raw or type(v) is not str:
        return v
    elif v.startswith(FORMULA_START):
        v = "'" + v
    # On a terminal, a compute's text must not move the cursor or retitle the window.
    return printable(v) if tty else v


def write_csv(
    spec: RunSpec,
    rows: Iterator[ResultRow],
    out: IO[str],
    cols: Columns,
    *,
    raw: bool = False,
) -> int:
    writer = csv.writer(out)
    writer.writerow(cols.names)
    tty = not raw and out.isatty()
    n = 0
    for row in rows:
        writer.writerow([_cell(v, raw, tty) for v in flatten(row, cols)])
        n += 1
    return n


def write_chunks_csv(rows: Iterable[Row], out: IO[str], *, raw: bool = False) -> int:
    writer = csv.writer(out)
    writer.writerow(CHUNK_FIELDS)
    tty = not raw and out.isatty()
    n = 0
    for r in rows:
        writer.writerow(
            [_cell(dumps(r[k]) if k in ("result", "param_errors") else r[k], raw, tty)
             for k in CHUNK_FIELDS]
        )  # fmt: skip
        n += 1
    return n


# -- aggregates ------------------------------------------------------------------------------


def problems_line(run: str, unreadable: Problems) -> str | None:
    """The one warning an export prints about records it could not read, if any."""
    if not unreadable:
        return None
    return (
        f"run {run}: {unreadable.count} ledger records could not be read, their rows are "
        f"missing ({unreadable.shown[0]})"
    )
