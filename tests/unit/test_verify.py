from __future__ import annotations

from ttg.run import Outcome, RunSpec
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
