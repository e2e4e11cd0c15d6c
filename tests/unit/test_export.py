"""Exports that never lose or alter data (DESIGN.md invariant 13), on synthetic ledgers."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ttg.errors import Interrupted, UsageError
from ttg.export import ExactSum, ExportOptions, aggregate, aggregate_ledger, export
from ttg.outputs import check_output
from ttg.results import parameter_rows
from ttg.run import Outcome, RunSpec, Status
from ttg.space import RangeSpace


def spec(params: int, chunk: int = 10) -> RunSpec:
    return RunSpec("r", RangeSpace(0, params).to_spec(), chunk, "tests.computes:any")


def ledger(s: RunSpec, result: Any) -> list[Outcome]:
    """Every chunk ok, parameter i's result ``result(i)``; in reverse order, as brokers may."""
    out = []
    for c in range(s.total_chunks):
        lo, hi = s.bounds(c)
        out.append(Outcome(c, Status.OK, hi - lo, "w", 1, 1.0, [result(i) for i in range(lo, hi)]))
    return out[::-1]


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def run_export(s: RunSpec, outcomes: list[Outcome], **kw: Any) -> str:
    out = io.StringIO()
    export(s, outcomes, ExportOptions(**kw), out)
    return out.getvalue()


def strict_json(line: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


# -- columns from the whole run ------------------------------------------------------------


#: Results whose shape changes after the first thousand rows.
LATE_SHAPES = {
    "dict then plain": lambda i: {"x": i} if i < 1500 else i,
    "plain then dict": lambda i: i if i < 1500 else {"x": i},
    "a late key": lambda i: {"x": i} if i < 1500 else {"x": i, "late": -i},
    "mixed types": lambda i: i if i % 3 else str(i),
}


@pytest.mark.parametrize("make", LATE_SHAPES.values(), ids=LATE_SHAPES.keys())
def test_csv_never_leaves_an_ok_rows_result_empty(make: Any) -> None:
    s = spec(3000)
    rows = csv_rows(run_export(s, ledger(s, make), format="csv"))
    assert len(rows) == 3000
    for row in rows:
        i = int(row["index"])
        want = make(i)
        cells = {k: v for k, v in row.items() if k.startswith("result")}
        assert all(v != "" for v in cells.values()), row
        got = cells["result"] if "result" in cells else {k[7:]: int(v) for k, v in cells.items()}
        if isinstance(want, dict) and "result" in cells:
            got = json.loads(got)
        assert str(got) == str(want), row


@pytest.mark.parametrize("make", LATE_SHAPES.values(), ids=LATE_SHAPES.keys())
def test_parquet_holds_every_result_as_it_was(make: Any, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    s = spec(3000)
    target = tmp_path / "r.parquet"
    export(s, ledger(s, make), ExportOptions("parquet", str(target)), io.StringIO())
    table = pq.read_table(target).to_pylist()
    assert len(table) == 3000
    for row in table:
        want = make(row["index"])
        got = row["result"] if "result" in row else {"x": row["result.x"]}
        if isinstance(got, str):  # a mixed column holds JSON text, even for text
            got = json.loads(got)
        assert got == want, row


def test_parquet_types_follow_every_value() -> None:
    pa = pytest.importorskip("pyarrow")
    s = spec(30)
    from ttg.export import parquet_types  # noqa: PLC0415
    from ttg.results import Shape, columns  # noqa: PLC0415

    cases = {
        "ints": (lambda i: i, "int64"),
        "floats": (lambda i: i / 2, "float64"),
        "ints and floats": (lambda i: i if i % 2 else i / 2, "float64"),
        "big ints and floats": (lambda i: 2**60 if i == 3 else i / 2, None),
        "huge ints": (lambda i: 2**70 + i, None),
        "text": (lambda i: f"t{i}", "string"),
        "bools": (lambda i: i % 2 == 0, "bool_"),
        "nullable ints": (lambda i: None if i == 4 else i, "int64"),
    }
    for name, (make, want) in cases.items():
        shape = Shape()
        for o in ledger(s, make):
            shape.observe(o, s.bounds(o.chunk)[0])
        assert parquet_types(s, columns(s, shape), shape)["result"] == want, name
    assert pa  # the extra is there


# -- valid JSON, exact sums, neutral cells ------------------------------------------------------


def test_jsonl_holds_nan_and_infinities_as_strings() -> None:
    s = spec(4, 4)
    values = [math.nan, math.inf, -math.inf, {"a": [math.nan]}]
    lines = run_export(s, ledger(s, lambda i: values[i])).splitlines()
    got = [strict_json(line)["result"] for line in lines]
    assert got == ["NaN", "Infinity", "-Infinity", {"a": ["NaN"]}]
    chunks = run_export(s, ledger(s, lambda i: values[i]), chunks=True)
    assert strict_json(chunks)["result"] == got


def test_sums_of_integers_are_exact() -> None:
    # The squares of 0..3*10^6-1: float arithmetic is off by millions here.
    n = 3_000_000
    total = ExactSum()
    for i in range(n):
        total.add(i * i)
    assert total.value() == (n - 1) * n * (2 * n - 1) // 6
    rows = [{"status": "ok", "result": v, "index": 0} for v in (2**60, 1, -(2**60), 3)]
    assert aggregate("sum", rows)["value"] == 4
    assert aggregate("mean", rows)["value"] == 1
    rows = [{"status": "ok", "result": v, "index": 0} for v in (2**60 + 1, 2**60 + 1)]
    assert aggregate("mean", rows)["value"] == 2**60 + 1


def test_sums_of_floats_are_rounded_once() -> None:
    rows = [{"status": "ok", "result": v, "index": 0} for v in (1e16, 1.0, -1e16, 0.1, 0.2)]
    assert aggregate("sum", rows)["value"] == math.fsum([1e16, 1.0, -1e16, 0.1, 0.2]) == 1.3
    nan = [{"status": "ok", "result": v, "index": 0} for v in (1.0, math.nan, 2.0)]
    assert all(math.isnan(aggregate(h, nan)["value"]) for h in ("sum", "min", "max", "mean"))
    inf = [{"status": "ok", "result": v, "index": 0} for v in (1, math.inf)]
    assert aggregate("sum", inf)["value"] == math.inf


def test_a_raising_aggregate_function_is_one_line() -> None:
    s = spec(20)
    with pytest.raises(UsageError, match=r"raised ZeroDivisionError: division by zero"):
        aggregate_ledger(s, ledger(s, lambda i: i), "tests.computes_agg:boom")
    with pytest.raises(UsageError, match="cannot load it"):
        aggregate_ledger(s, ledger(s, lambda i: i), "tests.no_such_module:f")


@pytest.mark.parametrize("cell", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"])
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(cell: str) -> None:
    s = spec(2, 2)
    rows = csv_rows(run_export(s, ledger(s, lambda i: cell if i == 0 else -5), format="csv"))
    assert rows[0]["result"] == "'" + cell and rows[1]["result"] == "-5"
    raw = csv_rows(run_export(s, ledger(s, lambda i: cell), format="csv", raw=True))
    assert raw[0]["result"] == cell


# -- files replaced whole or not at all ------------------------------------------------------


def interrupted(outcomes: list[Outcome], after: int) -> Iterator[Outcome]:
    for n, o in enumerate(outcomes):
        if n == after:
            raise KeyboardInterrupt
        yield o


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_an_interrupted_export_leaves_the_old_file_as_it_was(fmt: str, tmp_path: Path) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    s = spec(100_000, 10)
    target = tmp_path / "results.out"
    target.write_text("the previous export\n")
    target.chmod(0o640)
    outcomes = ledger(s, lambda i: i)
    with pytest.raises(Interrupted, match="left as it was") as e:
        export(s, interrupted(outcomes, 9000), ExportOptions(fmt, str(target)), io.StringIO())
    assert e.value.exit_code == 130
    assert target.read_text() == "the previous export\n"
    assert os.listdir(tmp_path) == ["results.out"], "no temporary file left behind"
    export(s, outcomes[:5], ExportOptions(fmt, str(target)), io.StringIO())
    assert target.read_bytes() != b"the previous export\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640, "the file keeps its permissions"


def test_outputs_that_are_not_regular_files_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real = tmp_path / "real.csv"
    real.write_text("keep\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path, kind in (
            (fifo, "a FIFO"),
            (link, "a symbolic link"),
            (Path("/dev/null"), "a character device"),
            (sock_path, "a socket"),
            (tmp_path, "a directory"),
        ):
            with pytest.raises(UsageError, match=kind):
                check_output(path)
            s = spec(10)
            with pytest.raises(UsageError, match=kind):
                export(s, ledger(s, lambda i: i), ExportOptions("csv", str(path)), io.StringIO())
    finally:
        sock.close()
    assert real.read_text() == "keep\n" and link.is_symlink()
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_rows_are_those_of_every_parameter() -> None:
    s = spec(25, 10)
    assert [
        r["index"] for r in parameter_rows(s, sorted(ledger(s, int), key=lambda o: o.chunk))
    ] == list(range(25))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_csv_on_a_terminal_shows_control_characters_escaped() -> None:
    s = spec(2, 2)
    evil = "ok\x1b]0;pwned\x07\x1b[2J"
    out = Terminal()
    export(s, ledger(s, lambda i: evil), ExportOptions("csv"), out)
    assert "\x1b" not in out.getvalue() and "\\x1b]0;pwned\\x07" in out.getvalue()
    assert evil in run_export(s, ledger(s, lambda i: evil), format="csv"), "a file keeps it"
