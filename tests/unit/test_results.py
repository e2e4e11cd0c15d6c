"""The exporters' row encodings (the real-broker paths are in tests/integration)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from ttg.errors import UsageError
from ttg.export import aggregate, write_parquet
from ttg.results import (
    Shape,
    columns,
    in_chunk_order,
    parameter_rows,
    write_csv,
    write_jsonl,
    write_parameters_jsonl,
)
from ttg.run import Outcome, RunSpec, Status

GRID = RunSpec(
    "grid",
    {"kind": "grid", "axes": [["lr", [0.1, 0.01, "x\u00e9"]], ["depth", [1, 2, None, True]]]},
    5,
    "ttg.compute:checksum",
)
RANGE = RunSpec(
    "range", {"kind": "range", "start": 3, "stop": 15, "step": 1}, 5, "ttg.compute:checksum"
)
OUTCOMES = [
    Outcome(0, Status.OK, 5, "w\u00e9", 2, 1.5, started_at=1.0,
            result=[{"a": 1.5, "b": [1]}, None, float("nan"), True, 'q",x\n'],
            param_errors=((1, 'boom "x"'),)),
    Outcome(1, Status.DEAD, 5, "w", 3, 2.0, error="dead\nreason"),
    Outcome(2, Status.OK, 2, "w", 1, 3.25, result=[[1, 2], 10**30]),
]  # fmt: skip
#: A chunk whose worker kept tracebacks: entries of three, or two where none was kept.
WITH_TRACEBACKS = Outcome(
    0, Status.ERRORS, 5, "w", 1, 1.0, result=[0, None, 4, None, 16],
    param_errors=((1, "ZeroDivisionError: division by zero",  # type: ignore[arg-type]
                   'File "sim.py", line 3, in f\n  1 / 0\nZeroDivisionError: division by zero'),
                  (3, "ValueError: no")),
)  # fmt: skip


@pytest.mark.parametrize("spec", [GRID, RANGE], ids=["grid", "range"])
def test_fast_jsonl_is_the_reference_encoding_byte_for_byte(spec: RunSpec) -> None:
    reference, fast = io.StringIO(), io.StringIO()
    n_ref = write_jsonl(parameter_rows(spec, [*OUTCOMES, WITH_TRACEBACKS]), reference)
    n_fast = write_parameters_jsonl(spec, [*OUTCOMES, WITH_TRACEBACKS], fast)
    assert fast.getvalue() == reference.getvalue()
    assert n_fast == n_ref == 17
    rows = [json.loads(line) for line in fast.getvalue().splitlines()]
    statuses = [r["status"] for r in rows]
    assert statuses[:12] == ["ok", "error", "ok", "ok", "ok", *["dead"] * 5, "ok", "ok"]
    assert [r["traceback"] for r in rows[12:]] == [
        None, 'File "sim.py", line 3, in f\n  1 / 0\nZeroDivisionError: division by zero',
        None, None, None,
    ]  # fmt: skip
    assert rows[15]["error"] == "ValueError: no" and rows[15]["traceback"] is None


def shape_of(spec: RunSpec, outcomes: list[Outcome]) -> Shape:
    shape = Shape()
    for o in outcomes:
        shape.observe(o, spec.bounds(o.chunk)[0])
    return shape


def test_csv_has_one_column_per_axis_and_mixed_results_in_one_column() -> None:
    out = io.StringIO()
    cols = columns(GRID, shape_of(GRID, OUTCOMES))
    write_csv(GRID, parameter_rows(GRID, OUTCOMES), out, cols)
    lines = out.getvalue().splitlines()
    assert lines[0].split(",") == [
        "index", "lr", "depth", "result", "status", "error", "chunk", "worker", "attempt",
        "finished_at",
    ]  # fmt: skip
    assert lines[1] == '0,0.1,1,"{""a"": 1.5, ""b"": [1]}",ok,,0,w\u00e9,2,1.5'
    assert lines[2] == '1,0.1,2,,error,"boom ""x""",0,w\u00e9,2,1.5'
    assert lines[3] == "2,0.1,,nan,ok,,0,w\u00e9,2,1.5"
    assert cols.params == ("lr", "depth")


def test_csv_has_a_column_per_key_when_every_result_has_the_same_keys() -> None:
    outcomes = [
        Outcome(0, Status.OK, 5, "w", 1, 1.0, result=[{"b": i, "a": -i} for i in range(5)]),
        Outcome(1, Status.ERRORS, 5, "w", 1, 1.0,
                result=[{"a": 0, "b": 1}, None, *[{"a": 1, "b": 2}] * 3],
                param_errors=((6, "ValueError: x"),)),
    ]  # fmt: skip
    out = io.StringIO()
    cols = columns(RANGE, shape_of(RANGE, outcomes))
    assert cols.result_keys == ("b", "a"), "in the order of the first result"
    write_csv(RANGE, parameter_rows(RANGE, outcomes), out, cols)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("index,value,result.b,result.a,status")
    assert lines[2].startswith("1,4,1,-1,ok")
    assert lines[7].startswith("6,9,,,error")


def test_chunks_come_out_in_order_past_the_in_memory_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ttg.results.IN_MEMORY_CHUNKS", 3)
    order = (5, 1, 4, 0, 3, 2, 6)
    shuffled = [Outcome(c, Status.OK, 1, "w", 1, float(c), result=[c]) for c in order]
    assert [o.chunk for o in in_chunk_order(shuffled)] == list(range(7))


def test_csv_traceback_column_only_when_asked() -> None:
    plain, full = io.StringIO(), io.StringIO()
    shape = shape_of(RANGE, [WITH_TRACEBACKS])
    rows = parameter_rows(RANGE, [WITH_TRACEBACKS])
    write_csv(RANGE, rows, plain, columns(RANGE, shape))
    rows = parameter_rows(RANGE, [WITH_TRACEBACKS])
    write_csv(RANGE, rows, full, columns(RANGE, shape, traceback=True))
    assert "traceback" not in plain.getvalue().splitlines()[0]
    rows = list(csv.DictReader(io.StringIO(full.getvalue())))
    assert list(rows[0])[5] == "traceback"
    assert rows[1]["traceback"].endswith("ZeroDivisionError: division by zero")
    assert rows[0]["traceback"] == rows[3]["traceback"] == ""
    assert rows[3]["error"] == "ValueError: no"


def test_aggregate_a_field_of_dict_results() -> None:
    rows = [
        {"index": 0, "status": "ok", "result": {"y": 1.5, "z": 1}},
        {"index": 1, "status": "error", "result": None},
        {"index": 2, "status": "ok", "result": {"y": 2.5, "z": 2}},
    ]
    assert aggregate("mean", rows, field="y") == {
        "aggregate": "mean", "value": 2.0, "count": 2, "field": "y",
    }  # fmt: skip
    with pytest.raises(UsageError, match=r"\(dict results: --field NAME\)"):
        aggregate("sum", rows)
    with pytest.raises(UsageError, match="--field w: result of parameter 0 has no field 'w'"):
        aggregate("sum", rows, field="w")


def test_parquet_has_the_traceback_column(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "r.parquet"
    write_parquet(RANGE, [WITH_TRACEBACKS], str(path))
    table = pq.read_table(path)
    assert "traceback" in table.column_names
    tracebacks = table.column("traceback").to_pylist()
    assert tracebacks[1].endswith("ZeroDivisionError: division by zero")
    assert tracebacks[0] is None and tracebacks[3] is None
