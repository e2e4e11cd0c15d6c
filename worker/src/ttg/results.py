"""Exporting a run's results: one row per parameter (or per chunk), in index order, streamed.

A ledger is read in whatever order the broker keeps it; rows come out in
parameter order through a sort that spills to a temporary SQLite file once it
holds more than a few thousand chunks, so exporting 10^7 parameters takes flat
memory. Formats: JSONL, CSV, Parquet (the ``parquet`` extra, pyarrow).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

from ttg.errors import UsageError, needs_extra
from ttg.failures import traceback_of
from ttg.run import Outcome, RunSpec, Status

#: Chunks sorted in memory before the sort spills to disk.
IN_MEMORY_CHUNKS = 5000
#: Rows per Parquet row group.
PARQUET_BATCH = 65536
#: Columns of the per-chunk view (``--chunks``).
CHUNK_FIELDS = (
    "chunk", "params", "status", "result", "error", "param_errors", "worker", "attempt",
    "started_at", "finished_at",
)  # fmt: skip
#: Reductions ``--aggregate`` knows by name.
AGGREGATES = ("sum", "min", "max", "mean")


def in_chunk_order(outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
    """``outcomes`` sorted by chunk, spilling to a temporary SQLite file when there are many."""
    held: list[Outcome] = []
    it = iter(outcomes)
    for o in it:
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
            rows = ((o.chunk, o.to_json()) for o in _chain(held, it))
            db.executemany("INSERT OR IGNORE INTO o VALUES (?, ?)", rows)
            held.clear()
            for chunk, body in db.execute("SELECT chunk, body FROM o ORDER BY chunk"):
                yield Outcome.from_json(chunk, body)
        finally:
            db.close()


def _chain(first: list[Outcome], rest: Iterator[Outcome]) -> Iterator[Outcome]:
    yield from first
    yield from rest


@dataclass(frozen=True)
class Columns:
    """The columns of the per-parameter view of a run."""

    #: Columns holding the parameter: one per grid axis, or "value".
    params: tuple[str, ...]
    #: Keys of dict results, each its own column (empty: one "result" column).
    result_keys: tuple[str, ...]
    #: Whether the ``traceback`` column is there (CSV: only when asked for).
    traceback: bool = True

    @property
    def names(self) -> list[str]:
        results = [f"result.{k}" for k in self.result_keys] or ["result"]
        tb = ["traceback"] if self.traceback else []
        return ["index", *self.params, *results, "status", "error", *tb, "chunk", "worker",
                "attempt", "finished_at"]  # fmt: skip


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


#: A row of the per-parameter view (``ResultRow``) or of the per-chunk one (``--chunks``).
Row = Mapping[str, Any]


def parameter_rows(spec: RunSpec, outcomes: Iterable[Outcome]) -> Iterator[ResultRow]:
    """One row per parameter of each outcome: its value, result, status and error.

    Status is ``ok``, ``error`` (its compute raised; the error says how, the
    traceback where, when the worker kept one) or ``dead`` (the whole chunk
    could not be computed).
    """
    space = spec.parameter_space
    for o in outcomes:
        lo, hi = spec.bounds(o.chunk)
        errors = _errors(o)
        results = o.result if isinstance(o.result, list) else [None] * (hi - lo)
        for i, value, result in zip(range(lo, hi), space.values(lo, hi), results, strict=False):
            tb = None
            if o.status is Status.DEAD:
                status, error = "dead", o.error
            elif i in errors:
                status, (error, tb) = "error", errors[i]
            else:
                status, error = "ok", None
            yield {
                "index": i,
                "value": value,
                "result": result,
                "status": status,
                "error": error,
                "traceback": tb,
                "chunk": o.chunk,
                "worker": o.worker,
                "attempt": o.attempt,
                "finished_at": o.finished_at,
            }


def _errors(o: Outcome) -> dict[int, tuple[str, str | None]]:
    """Parameter index -> (error, traceback or None), from ``(i, e)`` or ``(i, e, tb)`` entries."""
    return {int(e[0]): (str(e[1]), traceback_of(e)) for e in o.param_errors}


def columns(spec: RunSpec, first_rows: list[ResultRow], *, traceback: bool = True) -> Columns:
    """Columns for ``spec``; dict results (seen in ``first_rows``) become one column per key."""
    space = spec.parameter_space
    params = space.names or ("value",)
    keys: dict[str, None] = {}
    for row in first_rows:
        if isinstance(row["result"], dict):
            keys.update(dict.fromkeys(str(k) for k in row["result"]))
    return Columns(params, tuple(keys), traceback)


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
    return [row["index"], *params, *results, row["status"], row["error"], *tb, row["chunk"],
            row["worker"], row["attempt"], row["finished_at"]]  # fmt: skip


#: Cell types CSV writes as they are (None as an empty cell); anything else is written as JSON.
_SCALARS = frozenset({str, int, float, bool})


def _cell(v: Any) -> Any:
    return v if v is None or type(v) in _SCALARS else json.dumps(v)


def write_jsonl(rows: Iterable[Row], out: IO[str]) -> int:
    n = 0
    for row in rows:
        out.write(json.dumps(row, default=str) + "\n")
        n += 1
    return n


def _json(v: Any) -> str:
    """``json.dumps(v, default=str)``, with the common case (an int) short-cut."""
    return str(v) if type(v) is int else json.dumps(v, default=str)


def write_parameters_jsonl(spec: RunSpec, outcomes: Iterable[Outcome], out: IO[str]) -> int:
    """``write_jsonl(parameter_rows(spec, outcomes))``, byte for byte, several times faster.

    The fields every parameter of a chunk shares are encoded once per chunk and
    each chunk is written in one call: at 10^7 parameters this is most of the
    export's time.
    """
    space = spec.parameter_space
    n = 0
    for o in outcomes:
        lo, hi = spec.bounds(o.chunk)
        shared = json.dumps(
            {"chunk": o.chunk, "worker": o.worker, "attempt": o.attempt,
             "finished_at": o.finished_at},
            default=str,
        )[1:]  # fmt: skip
        dead = o.status is Status.DEAD
        ok = {"status": "ok", "error": None, "traceback": None}
        ok_tail = ", " + json.dumps(ok)[1:-1] + ", " + shared
        dead_tail = ", " + json.dumps({**ok, "status": "dead", "error": o.error})[1:-1]
        dead_tail += ", " + shared
        errors = _errors(o)
        results = o.result if isinstance(o.result, list) else [None] * (hi - lo)
        lines = []
        for i, value, result in zip(range(lo, hi), space.values(lo, hi), results, strict=False):
            if dead:
                tail = dead_tail
            elif i in errors:
                error, tb = errors[i]
                tail = ", " + json.dumps({"status": "error", "error": error, "traceback": tb})[1:-1]
                tail += ", " + shared
            else:
                tail = ok_tail
            head = f'{{"index": {i}, "value": {_json(value)}, "result": {_json(result)}'
            lines.append(f"{head}{tail}\n")
        out.write("".join(lines))
        n += len(lines)
    return n


def write_csv(
    spec: RunSpec, rows: Iterator[ResultRow], out: IO[str], *, traceback: bool = False
) -> int:
    """One CSV row per parameter; the ``traceback`` column only when asked for (it is long)."""
    head = [row for _, row in zip(range(1000), rows, strict=False)]
    cols = columns(spec, head, traceback=traceback)
    writer = csv.writer(out)
    writer.writerow(cols.names)
    n = 0
    for row in _chain_rows(head, rows):
        writer.writerow([_cell(v) for v in flatten(row, cols)])
        n += 1
    return n


def write_parquet(spec: RunSpec, rows: Iterator[ResultRow], path: str) -> int:
    """Parquet needs the ``parquet`` extra (pyarrow); values of mixed types are written as JSON."""
    try:
        import pyarrow as pa  # noqa: PLC0415 - optional extra
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError:
        raise needs_extra("Parquet", "parquet") from None
    head = [row for _, row in zip(range(1000), rows, strict=False)]
    cols = columns(spec, head)
    writer = None
    n = 0
    batch: list[list[Any]] = []

    def flush() -> None:
        nonlocal writer
        table_cols = {name: [r[k] for r in batch] for k, name in enumerate(cols.names)}
        arrays = {}
        for name, values in table_cols.items():
            try:
                arrays[name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                arrays[name] = pa.array([None if v is None else json.dumps(v) for v in values])
        table = pa.table(arrays)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        elif table.schema != writer.schema:
            table = table.cast(writer.schema, safe=False)
        writer.write_table(table)
        batch.clear()

    try:
        for row in _chain_rows(head, rows):
            batch.append(flatten(row, cols))
            n += 1
            if len(batch) >= PARQUET_BATCH:
                flush()
        if batch or writer is None:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return n


def table_cells(
    spec: RunSpec, rows: Iterator[ResultRow], *, traceback: bool = True
) -> tuple[list[str], list[list[Any]]]:
    """Column names and flat rows, as CSV and Parquet lay them out (for a DataFrame)."""
    head = [row for _, row in zip(range(1000), rows, strict=False)]
    cols = columns(spec, head, traceback=traceback)
    return cols.names, [flatten(row, cols) for row in _chain_rows(head, rows)]


def write_chunks_csv(rows: Iterable[Row], out: IO[str]) -> int:
    """The per-chunk view as CSV: results and parameter errors as JSON cells."""
    writer = csv.writer(out)
    writer.writerow(CHUNK_FIELDS)
    n = 0
    for r in rows:
        writer.writerow(
            [json.dumps(r[k]) if k in ("result", "param_errors") else r[k] for k in CHUNK_FIELDS]
        )
        n += 1
    return n


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


def _chain_rows(head: list[ResultRow], rest: Iterator[ResultRow]) -> Iterator[ResultRow]:
    yield from head
    yield from rest


def aggregate(how: str, rows: Iterable[Row], *, field: str | None = None) -> dict[str, Any]:
    """Reduce the results of the rows whose status is ok.

    ``how`` is one of ``AGGREGATES`` (numeric results; with ``field``, the
    field of that name of dict results), or ``module:function``, called with an
    iterator of the rows and returning something JSON can hold.

    Raises:
        UsageError: unknown reduction, or a result that is not a number.
    """
    ok = (r for r in rows if r["status"] == "ok")
    if field is not None:
        ok = ({**r, "result": _field(r, field)} for r in ok)
    if ":" in how:
        module_name, _, attr = how.partition(":")
        try:
            fn: Callable[[Iterator[Row]], Any] = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"--aggregate {how!r}: {e}") from None
        return {"aggregate": how, "value": fn(ok)}
    if how not in AGGREGATES:
        raise UsageError(f"--aggregate {how!r}: choose {', '.join(AGGREGATES)} or module:function")
    count, total = 0, 0.0
    low, high = math.inf, -math.inf
    for r in ok:
        v = r["result"]
        if not isinstance(v, int | float) or isinstance(v, bool):
            hint = " (dict results: --field NAME)" if isinstance(v, dict) else ""
            raise UsageError(
                f"--aggregate {how}: result of parameter {r['index']} is not a number: "
                f"{_short(v)}{hint}"
            )
        count += 1
        total += v
        low, high = min(low, v), max(high, v)
    value: Any = {
        "sum": total,
        "min": low if count else None,
        "max": high if count else None,
        "mean": total / count if count else None,
    }[how]
    if how == "sum" and float(value).is_integer():
        value = int(value)
    out: dict[str, Any] = {"aggregate": how, "value": value, "count": count}
    if field is not None:
        out["field"] = field
    return out


def _field(row: Row, name: str) -> Any:
    result = row["result"]
    if not isinstance(result, dict) or name not in result:
        raise UsageError(
            f"--field {name}: result of parameter {row['index']} has no field {name!r}: "
            f"{_short(result)}"
        )
    return result[name]


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 200 else text[:199] + "…"


def check_writable(path: str | None) -> None:
    """Refuse, before any work, an output file that cannot be written.

    Raises:
        UsageError: its directory is missing or not writable, or it is a directory.
    """
    if not path:
        return
    target = Path(path)
    folder = target.parent if str(target.parent) else Path()
    if target.is_dir():
        raise UsageError(f"--output {path}: is a directory")
    if not folder.is_dir():
        raise UsageError(f"--output {path}: no directory {folder}")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"--output {path}: not writable")


@contextlib.contextmanager
def output(path: str | None, stdout: IO[str]) -> Iterator[IO[str]]:
    """``path`` opened for writing (one-line error if it cannot be), or ``stdout``."""
    if not path:
        yield stdout
        return
    try:
        f = open(path, "w", newline="")  # noqa: SIM115 - closed below
    except OSError as e:
        raise UsageError(f"--output {path}: {e.strerror}") from None
    with f:
        yield f
