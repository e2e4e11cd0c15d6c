from __future__ import annotations

from ttg.run import Outcome, RunSpec, Status
from ttg.space import RangeSpace
from ttg.verify import _scan

SPEC = RunSpec("r", RangeSpace(0, 30).to_spec(), 10, "ttg.compute:square")


def ok(chunk: int, params: int = 10) -> Outcome:
    lo = chunk * 10
    return Outcome(chunk, "ok", params, "w", 1, 0.0, [x * x for x in range(lo, lo + params)])


def test_scan_accepts_a_complete_ledger() -> None:
    t = _scan(SPEC, [ok(0), ok(1), ok(2)])
    assert t.problems == [] and t.ok_chunks == 3 and t.ok_params == 30
    assert t.result_sum == sum(x * x for x in range(30))


def test_scan_flags_a_chunk_counted_twice() -> None:
    t = _scan(SPEC, [ok(0), ok(1), ok(1), ok(2)])
    assert t.problems == ["chunk 1 is counted twice"]
    assert t.ok_chunks == 3


def test_scan_flags_partial_chunks_and_strangers() -> None:
    t = _scan(SPEC, [ok(0, params=7), ok(5)])
    assert "chunk 0 result covers 7 of 10 parameters" in t.problems
    assert any("outside" in p for p in t.problems)
    assert bytes(t.seen) == b"\x01\x00\x00"


def test_scan_groups_errors_by_type_and_message_with_the_lowest_example() -> None:
    from ttg.verify import _groups  # noqa: PLC0415

    tb = 'File "sim.py", line 9, in f\nZeroDivisionError: division by zero'
    errors = Outcome(
        1, Status.ERRORS, 10, "w", 1, 0.0, [None] * 10,
        param_errors=((17, "ZeroDivisionError: division by zero", tb),  # type: ignore[arg-type]
                      (12, "parameter 12: ZeroDivisionError: division by zero"),
                      (15, "KeyError: 'x'")),
    )  # fmt: skip
    dead = Outcome(2, Status.DEAD, 10, "w", 5, 0.0, error="parameter 21: MemoryError")
    t = _scan(SPEC, [ok(0), errors, dead])
    groups = {g.error: g for g in _groups(SPEC, t)}
    zero = groups["ZeroDivisionError: division by zero"]
    assert (zero.kind, zero.type, zero.params, zero.chunks) == ("failed", "ZeroDivisionError", 2, 1)
    assert zero.example is not None and zero.example.index == 12  # the lowest, not the first
    assert zero.example.param == 12 and zero.example.traceback is None
    assert groups["KeyError: 'x'"].params == 1
    memory = groups["MemoryError"]
    assert (memory.kind, memory.params, memory.chunks) == ("dead", 10, 1)
    assert memory.example is not None and memory.example.index == 21
    assert t.dead_params == 10 and t.param_errors == 3


def test_a_reports_object_is_what_asdict_makes_of_it() -> None:
    from dataclasses import asdict, fields  # noqa: PLC0415

    from ttg.failures import ErrorGroup  # noqa: PLC0415
    from ttg.run import InFlight, Progress  # noqa: PLC0415
    from ttg.verify import VerifyReport, status_report  # noqa: PLC0415

    flights = [InFlight(1, "w1", 1, 0.5), InFlight(2, "w2", 2, 0.25, 27, 3.0, 0.2)]
    status = status_report(Progress("r", 3, 30, 3, done=1, done_params=10, in_flight=flights))
    assert status.to_dict() == asdict(status)
    assert status.to_dict()["in_flight"][1] == {
        "chunk": 2, "worker": "w2", "deliveries": 2, "idle_s": 0.25,
        "param": 27, "param_s": 3.0, "median_s": 0.2,
    }  # fmt: skip
    # The verify report nests dataclasses beyond the flights: each a plain dict too.
    groups = [ErrorGroup("failed", "ValueError: x", "ValueError", 2, 1)]
    verdict = VerifyReport(
        **{f.name: getattr(status, f.name) for f in fields(status)}, error_groups=groups
    )
    assert verdict.to_dict() == asdict(verdict)
    assert verdict.to_dict()["error_groups"][0]["params"] == 2
