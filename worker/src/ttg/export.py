"""``ttg results``: a run's ledger exported (JSONL, CSV, Parquet) or reduced, lossless.

The rows and their encodings are in :mod:`ttg.results`; this module chooses
the columns from the whole run, writes the file beside its target and renames
it when complete (:mod:`ttg.outputs`), writes Parquet with a type per column
that holds every value, and reduces results exactly.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import IO, Any

from ttg import space as spaces
from ttg.compute import describe
from ttg.errors import UsageError, needs_extra
from ttg.outputs import AGGREGATES, FORMATS, replacing
from ttg.results import (
    PARQUET_BATCH,
    Columns,
    Shape,
    chunk_rows,
    columns,
    dumps,
    flatten,
    in_chunk_order,
    kind_of,
    observer,
    parameter_rows,
    write_chunks_csv,
    write_csv,
    write_jsonl,
    write_parameters_jsonl,
)
from ttg.run import Outcome, RunSpec
from ttg.space import GridSpace, RangeSpace
from ttg.tables import TableSpace


@dataclass(frozen=True)
class ExportOptions:
    """What ``ttg results`` was asked for."""

    format: str = "jsonl"
    #: A file (written beside, then renamed over), or None for stdout.
    output: str | None = None
    #: One row per chunk instead of per parameter.
    chunks: bool = False
    #: CSV cells exactly as they are (no formula neutralising).
    raw: bool = False
    #: CSV: a ``traceback`` column too (JSONL and Parquet always have it; it is long).
    traceback: bool = False


def export(spec: RunSpec, ledger: Iterable[Outcome], opts: ExportOptions, stdout: IO[str]) -> int:
    """Write ``spec``'s results from ``ledger`` (any order) as ``opts`` say; the rows written.

    Raises:
        UsageError: an option does not fit (Parquet without a file, ``--chunks``
            with Parquet), or the output cannot be written.
        Interrupted: SIGINT or SIGTERM; a file being replaced is left as it was.
    """
    if opts.format not in FORMATS:
        raise UsageError(f"--format {opts.format!r}: choose {', '.join(FORMATS)}")
    if opts.format == "parquet":
        if not opts.output:
            raise UsageError("--format parquet needs --output FILE")
        if opts.chunks:
            raise UsageError("--chunks is for jsonl and csv")
        _pyarrow()  # missing extra: say so before reading the ledger
        with replacing(opts.output) as tmp:
            return write_parquet(spec, ledger, str(tmp))
    if not opts.output:
        return _write(spec, ledger, opts, stdout)
    with replacing(opts.output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        return _write(spec, ledger, opts, out)


def _write(spec: RunSpec, ledger: Iterable[Outcome], opts: ExportOptions, out: IO[str]) -> int:
    if opts.chunks:
        rows = chunk_rows(in_chunk_order(ledger))
        if opts.format == "csv":
            return write_chunks_csv(rows, out, raw=opts.raw)
        return write_jsonl(rows, out)
    if opts.format == "jsonl":
        return write_parameters_jsonl(spec, in_chunk_order(ledger), out)
    outcomes, cols, _ = _with_columns(spec, ledger, traceback=opts.traceback)
    return write_csv(spec, parameter_rows(spec, outcomes), out, cols, raw=opts.raw)


def _with_columns(
    spec: RunSpec, ledger: Iterable[Outcome], *, traceback: bool
) -> tuple[Iterator[Outcome], Columns, Shape]:
    """The outcomes in order, and the columns every one of them fits (learnt while sorting)."""
    shape = Shape()
    ordered = in_chunk_order(ledger, observer(spec, shape))
    first = next(ordered, None)  # the sort has seen every outcome once this returns
    rest = ordered if first is None else _prepend(first, ordered)
    return rest, columns(spec, shape, traceback=traceback), shape


def table_cells(
    spec: RunSpec, ledger: Iterable[Outcome], *, traceback: bool = True
) -> tuple[list[str], list[list[Any]]]:
    """Column names and flat rows, as CSV and Parquet lay them out (for a DataFrame)."""
    outcomes, cols, _ = _with_columns(spec, ledger, traceback=traceback)
    return cols.names, [flatten(row, cols) for row in parameter_rows(spec, outcomes)]


def _prepend(first: Outcome, rest: Iterator[Outcome]) -> Iterator[Outcome]:
    yield first
    yield from rest


# -- Parquet -----------------------------------------------------------------------------------


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: PLC0415 - optional extra
        import pyarrow.parquet  # noqa: PLC0415
    except ImportError:
        raise needs_extra("Parquet", "parquet") from None
    return pyarrow


#: Parquet types by the kinds a column holds (besides null); any other mix is JSON text.
_TYPES = {
    frozenset({"bool"}): "bool_",
    frozenset({"int"}): "int64",
    frozenset({"int64"}): "int64",
    frozenset({"int", "int64"}): "int64",
    frozenset({"float"}): "float64",
    frozenset({"int", "float"}): "float64",
    frozenset({"str"}): "string",
    frozenset(): "string",
}
#: The columns whose type never depends on the run.
_FIXED = {
    "index": "int64",
    "status": "string",
    "error": "string",
    "traceback": "string",
    "source": "string",
    "chunk": "int64",
    "worker": "string",
    "attempt": "int64",
    "finished_at": "float64",
}


def _type_name(kinds: set[str]) -> str | None:
    """The Parquet type of a column holding values of ``kinds``; None: JSON text."""
    return _TYPES.get(frozenset(kinds - {"null"}))


def parquet_types(spec: RunSpec, cols: Columns, shape: Shape) -> dict[str, str | None]:
    """Each column's Parquet type (a pyarrow factory name), or None where it holds JSON text."""
    params = _param_kinds(spec)
    out: dict[str, str | None] = {}
    for name in cols.names:
        if name in _FIXED:
            out[name] = _FIXED[name]
        elif name in params:
            out[name] = _type_name(params[name])
        else:
            out[name] = _type_name(shape.kinds.get("" if name == "result" else name, set()))
    return out


def _param_kinds(spec: RunSpec) -> dict[str, set[str]]:
    """The kinds of values each parameter column holds, from the space itself."""
    space = spaces.base_of(spec.parameter_space)
    if isinstance(space, GridSpace):
        return {name: {kind_of(v) for v in values} for name, values in space.axes}
    if isinstance(space, TableSpace):
        # A table lives in the run's spec (bounded): every row is at hand.
        kinds: dict[str, set[str]] = {name: set() for name in space.names}
        for row in space.values(0, space.size):
            for name in space.names:
                kinds[name].add(kind_of(row.get(name)))
        return kinds
    if isinstance(space, RangeSpace):
        return {"value": {"int64"}}
    # Float ranges, linspace, logspace: numbers, some of them whole.
    return {"value": {"int", "float"}}


def write_parquet(spec: RunSpec, ledger: Iterable[Outcome], path: str) -> int:
    """Parquet (the ``parquet`` extra): a type per column that holds all its values, or JSON."""
    pa = _pyarrow()
    import pyarrow.parquet as pq  # noqa: PLC0415 - optional extra

    outcomes, cols, shape = _with_columns(spec, ledger, traceback=True)
    types = parquet_types(spec, cols, shape)
    schema = pa.schema([(name, getattr(pa, t or "string")()) for name, t in types.items()])
    n = 0
    batch: list[list[Any]] = []
    with pq.ParquetWriter(path, schema) as writer:

        def flush() -> None:
            arrays = []
            for k, (name, t) in enumerate(types.items()):
                values = [r[k] for r in batch]
                if t is None:
                    values = [None if v is None else dumps(v) for v in values]
                arrays.append(pa.array(values, type=schema.field(name).type))
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            batch.clear()

        for row in parameter_rows(spec, outcomes):
            batch.append(flatten(row, cols))
            n += 1
            if len(batch) >= PARQUET_BATCH:
                flush()
        if batch:
            flush()
    return n


# -- aggregates ----------------------------------------------------------------------------


@dataclass
class ExactSum:
    """A sum without rounding: integers as Python ints, floats as exact partial sums.

    The float part keeps Shewchuk's non-overlapping partials (the idea behind
    ``math.fsum``, fed one value at a time so nothing is held), and the result
    is rounded once, at the end. NaN and the infinities are IEEE's.
    """

    ints: int = 0
    partials: list[float] = field(default_factory=list)
    floats: bool = False
    specials: set[str] = field(default_factory=set)

    def add(self, v: int | float) -> None:
        if type(v) is int:
            self.ints += v
            return
        self.floats = True
        if not math.isfinite(v):
            self.specials.add(repr(v))
            return
        x, i = float(v), 0
        for p in self.partials:
            big, small = (p, x) if abs(x) < abs(p) else (x, p)
            hi = big + small
            lo = small - (hi - big)
            if lo:
                self.partials[i] = lo
                i += 1
            x = hi
        self.partials[i:] = [x]

    def exact(self) -> Fraction:
        return Fraction(self.ints) + sum(map(Fraction, self.partials), Fraction(0))

    def value(self, divisor: int = 1) -> int | float:
        """The sum (divided by ``divisor``), exact for integers, else rounded once."""
        if "nan" in self.specials or {"inf", "-inf"} <= self.specials:
            return math.nan
        if self.specials:
            return math.inf if "inf" in self.specials else -math.inf
        if not all(math.isfinite(p) for p in self.partials):
            # The floats' sum is beyond a float's range: an infinity of its sign.
            return math.inf if self.partials[-1] > 0 else -math.inf
        total = self.exact() / divisor
        if not self.floats and total.denominator == 1:
            return int(total)
        try:
            return float(total)
        except OverflowError:
            return math.inf if total > 0 else -math.inf


def aggregate(
    how: str, rows: Iterable[Mapping[str, Any]], *, field: str | None = None
) -> dict[str, Any]:
    """Reduce the results of the rows whose status is ok.

    ``how`` is one of ``AGGREGATES`` (numeric results; with ``field``, the
    field of that name of dict results), or ``module:function``, called with an
    iterator of the rows and returning something JSON can hold.
    Integers are summed exactly and a mean of integers is rounded once; a NaN
    result makes every reduction NaN.

    Raises:
        UsageError: unknown reduction, a result that is not a number, or a
            ``module:function`` that cannot be imported or raised.
    """
    ok: Iterator[Mapping[str, Any]] = (r for r in rows if r["status"] == "ok")
    if field is not None:
        ok = ({**r, "result": _field(r, field)} for r in ok)
    if ":" in how:
        return {"aggregate": how, "value": _custom(how, ok)}
    if how not in AGGREGATES:
        raise UsageError(f"--aggregate {how!r}: choose {', '.join(AGGREGATES)} or module:function")
    total, count, nan = ExactSum(), 0, False
    low: int | float | None = None
    high: int | float | None = None
    for r in ok:
        v = r["result"]
        if type(v) not in (int, float):
            hint = " (dict results: --field NAME)" if isinstance(v, dict) else ""
            raise UsageError(
                f"--aggregate {how}: result of parameter {r['index']} is not a number: "
                f"{dumps(v)[:80]}{hint}"
            )
        count += 1
        total.add(v)
        if math.isnan(v):  # NaN has no order: min and max are NaN too
            nan = True
        else:
            low = v if low is None or v < low else low
            high = v if high is None or v > high else high
    value: Any = {
        "sum": total.value(),
        "min": math.nan if nan else low,
        "max": math.nan if nan else high,
        "mean": total.value(count) if count else None,
    }[how]
    out: dict[str, Any] = {"aggregate": how, "value": value, "count": count}
    if field is not None:
        out["field"] = field
    return out


def _field(row: Mapping[str, Any], name: str) -> Any:
    result = row["result"]
    if not isinstance(result, dict) or name not in result:
        raise UsageError(
            f"--field {name}: result of parameter {row['index']} has no field {name!r}: "
            f"{dumps(result)[:80]}"
        )
    return result[name]


def _custom(how: str, ok: Iterator[Mapping[str, Any]]) -> Any:
    module_name, _, attr = how.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except Exception as e:
        raise UsageError(f"--aggregate {how!r}: cannot load it ({describe(e)})") from None
    try:
        return fn(ok)
    except Exception as e:
        raise UsageError(f"--aggregate {how!r} raised {describe(e)}") from None


def aggregate_ledger(
    spec: RunSpec, ledger: Iterable[Outcome], how: str, *, field: str | None = None
) -> dict[str, Any]:
    """``aggregate`` over a ledger: the built-in reductions in any order, a function's in order."""
    outcomes: Iterable[Outcome] = ledger if how in AGGREGATES else in_chunk_order(ledger)
    return aggregate(how, parameter_rows(spec, outcomes), field=field)
