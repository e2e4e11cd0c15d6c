"""One chunk's results as one Parquet object: the layout of a run's dataset.

    <base>/runs/<RUN>/chunk-<CHUNK, 9 digits>-g<ROUND>-a<ATTEMPT>-<12 hex>.parquet

One row per parameter of the chunk, in index order:

    index    int64    the parameter's index in the run
    value    int64    the parameter, for a range space; for a grid, one column per
                      axis instead, typed by the axis's values (int64, double, bool or
                      string; JSON text when an axis mixes kinds)
    result   string   the result as JSON text (null where the parameter failed): a
                      compute's results need not share a type, and every object of a
                      dataset must share one schema
    status   string   ok | error
    error    string   why the parameter failed (null when ok)
    chunk    int64    the chunk

The random tail makes every write a new object: a redelivered chunk or a
duplicate never overwrites the one the ledger counts. A grid axis named like one
of the other columns is written as ``param.NAME``. The file's key-value metadata
``ttg`` holds run, chunk, round, attempt and worker as JSON.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ttg.errors import StoreError
from ttg.run import RunSpec
from ttg.space import GridSpace, RangeSpace

#: Every run's objects live under this folder of the store's base.
RUNS = "runs"
#: Columns besides the parameter's.
FIXED_COLUMNS = ("index", "result", "status", "error", "chunk")
#: An object's name: the chunk comes first, so a listing sorts by chunk.
OBJECT_NAME = re.compile(
    r"(?P<chunk>\d{9})-g(?P<round>\d+)-a(?P<attempt>\d+)-(?P<token>[0-9a-f]{12})\.parquet"
)
#: Compression of every object: zstd, which pandas, Polars, DuckDB and Spark all read.
COMPRESSION = "zstd"

_INT64 = (-(2**63), 2**63 - 1)


class BadObject(Exception):
    """An object that is not what the ledger says (rows, indexes, format)."""


def run_prefix(run: str) -> str:
    """The folder holding ``run``'s objects (``pd.read_parquet`` reads it as one dataset)."""
    return f"{RUNS}/{run}/"


def object_name(run: str, chunk: int, round_: int, attempt: int) -> str:
    """A new, never-used name for one write of ``chunk``'s results."""
    token = uuid.uuid4().hex[:12]
    return f"{run_prefix(run)}chunk-{chunk:09d}-g{round_}-a{attempt}-{token}.parquet"


def chunk_of(name: str) -> int | None:
    """The chunk an object of a run's folder holds, from its name; None if not a chunk object."""
    base = name.rsplit("/", 1)[-1]
    if not base.startswith("chunk-"):
        return None
    m = OBJECT_NAME.fullmatch(base[len("chunk-") :])
    return int(m["chunk"]) if m else None


def _pa() -> Any:
    try:
        import pyarrow as pa  # noqa: PLC0415 - the parquet extra, loaded only for a store
        import pyarrow.parquet  # noqa: PLC0415
    except ImportError:
        raise StoreError("a results store needs pyarrow: pip install 'ttg[parquet]'") from None
    return pa


def _kind(values: Sequence[Any]) -> tuple[Any, Callable[[Any], Any]]:
    """The Arrow type of a column holding ``values``, and how a value becomes a cell."""
    pa = _pa()
    if all(type(v) is bool for v in values):
        return pa.bool_(), lambda v: v
    if all(type(v) is int and _INT64[0] <= v <= _INT64[1] for v in values):
        return pa.int64(), lambda v: v
    if all(type(v) in (int, float) for v in values):
        return pa.float64(), float
    if all(type(v) is str for v in values):
        return pa.string(), lambda v: v
    return pa.string(), lambda v: json.dumps(v, separators=(",", ":"))


def param_columns(spec: RunSpec) -> list[tuple[str, str | None, Any, Callable[[Any], Any]]]:
    """``(column, grid axis or None, Arrow type, to cell)`` for the parameter's columns.

    Decided from the whole space, never from one chunk: every object of a run has
    the same schema, so the folder reads as one dataset.
    """
    space = spec.parameter_space
    if isinstance(space, GridSpace):
        out: list[tuple[str, str | None, Any, Callable[[Any], Any]]] = []
        for name, vals in space.axes:
            column = f"param.{name}" if name in FIXED_COLUMNS else name
            out.append((column, name, *_kind(vals)))
        return out
    if isinstance(space, RangeSpace):
        ends = [space.value(0), space.value(space.size - 1)]
        return [("value", None, *_kind(ends))]
    pa = _pa()
    return [("value", None, pa.string(), lambda v: json.dumps(v, separators=(",", ":")))]


def encode(
    spec: RunSpec,
    chunk: int,
    texts: Sequence[str | None],
    errors: dict[int, str],
    meta: dict[str, Any],
) -> bytes:
    """The Parquet bytes of one chunk: ``texts`` are its results as JSON (None: failed)."""
    pa = _pa()
    import pyarrow.parquet as pq  # noqa: PLC0415

    lo, hi = spec.bounds(chunk)
    values = list(spec.parameter_space.values(lo, hi))
    arrays: dict[str, Any] = {"index": pa.array(range(lo, hi), pa.int64())}
    for column, axis, type_, cell in param_columns(spec):
        picked = values if axis is None else [v[axis] for v in values]  # type: ignore[index,call-overload]
        arrays[column] = pa.array([cell(v) for v in picked], type_)
    arrays["result"] = pa.array(texts, pa.string())
    arrays["status"] = pa.array(["error" if i in errors else "ok" for i in range(lo, hi)])
    arrays["error"] = pa.array([errors.get(i) for i in range(lo, hi)], pa.string())
    arrays["chunk"] = pa.array([chunk] * (hi - lo), pa.int64())
    table = pa.table(arrays).replace_schema_metadata({"ttg": json.dumps(meta)})
    out = io.BytesIO()
    # No dictionaries (a chunk's values rarely repeat) and statistics only where readers
    # prune files by them: a third less time per object, and smaller objects.
    pq.write_table(
        table,
        out,
        compression=COMPRESSION,
        use_dictionary=False,
        write_statistics=["index", "chunk"],
    )
    return out.getvalue()


def decode(spec: RunSpec, chunk: int, data: bytes) -> list[str | None]:
    """The chunk's results as JSON texts (None where a parameter failed), from its object.

    Raises:
        BadObject: not Parquet, or not the rows of ``chunk`` in index order.
    """
    pa = _pa()
    import pyarrow.parquet as pq  # noqa: PLC0415

    lo, hi = spec.bounds(chunk)
    try:
        # On this thread: pyarrow's CPU pool, once started, was sometimes torn down while
        # running at a command's exit ("terminate called", exit -6).
        table = pq.read_table(pa.BufferReader(data), columns=["index", "result"], use_threads=False)
    except (pa.ArrowException, OSError, KeyError, ValueError) as e:
        raise BadObject(f"not a readable chunk object: {' '.join(str(e).split())[:200]}") from None
    if table.num_rows != hi - lo:
        raise BadObject(f"holds {table.num_rows} rows, the chunk has {hi - lo}")
    if table.column("index").to_pylist() != list(range(lo, hi)):
        raise BadObject(f"does not hold parameters {lo}..{hi - 1} in order")
    try:
        texts: list[str | None] = table.column("result").cast(pa.string()).to_pylist()
    except pa.ArrowException as e:
        raise BadObject(f"result column is not text: {e}") from None
    return texts
