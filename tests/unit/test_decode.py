"""The validating decode layers over a corpus of garbage: each record refused, nothing raised."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from ttg import decode
from ttg.brokers.rabbitmq import decode as qdecode
from ttg.brokers.rabbitmq.admin import _RunState, _winners
from ttg.brokers.rabbitmq.ledger import LedgerFold
from ttg.brokers.redis import decode as rdecode
from ttg.decode import DecodeError, Problems
from ttg.errors import RunDataError
from ttg.run import Outcome, RunSpec, Status
from ttg.space import RangeSpace

#: Values of the wrong type, depth, size or number for any field.
DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "x" * 20_000_000
WRONG: list[Any] = [
    None, True, -1, 2**70, 1.5, math.nan, math.inf, "", "12abc", "²", HUGE, [], [1], {}, {"a": 1},
    "9" * 30,
]  # fmt: skip


def spec(total: int = 100, chunk: int = 10) -> RunSpec:
    return RunSpec("r1", RangeSpace(0, total).to_spec(), chunk, "ttg.compute:square")


def ok_outcome(chunk: int, **kw: Any) -> dict[str, Any]:
    o = json.loads(Outcome(chunk, Status.OK, 10, "w1", 1, 1.0, result=[1] * 10).to_json())
    return {**o, "c": chunk, **kw}


# -- the shared checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "nope", DEEP, "NaN", '{"a": Infinity}', "1" * 5000, b"\xff\xfe", "x" * 101]
)
def test_loads_refuses_garbage_in_one_line(text: str | bytes) -> None:
    with pytest.raises(DecodeError) as e:
        decode.loads(text, what="a record", max_bytes=100 if text == "x" * 101 else 10**6)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize("v", WRONG)
def test_integers_are_integers_in_range(v: Any) -> None:
    with pytest.raises(DecodeError):
        decode.as_int(v, "a count", 0, 10**6, text=True)
    assert decode.as_int("42", "a count", 0, 100, text=True) == 42
    with pytest.raises(DecodeError):
        decode.as_int("42", "a count", 0, 100)  # JSON: a string is not a number


def test_preview_is_bounded_whatever_the_size() -> None:
    for v in (HUGE, HUGE.encode(), {"k": HUGE, **{str(i): i for i in range(50)}}, [HUGE] * 50):
        assert len(decode.preview(v)) < 600
    assert "20000000 characters" in decode.preview(HUGE)


def test_printable_neutralises_terminal_escapes() -> None:
    text = "bad\x1b]0;pwned\x07 \x1b[2J\x9bEND\nnext"
    shown = decode.printable(text)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert "\\x1b]0;pwned" in shown and "\n" in shown
    assert "\n" not in decode.one_line(text)


def test_problems_keep_a_few_and_count_the_rest() -> None:
    p = Problems()
    for i in range(12):
        p.add(f"record {i}\x1b[31m")
    assert p.count == 12 and len(p.lines()) == 6
    assert p.lines()[-1] == "… and 7 more unreadable records" and "\x1b" not in p.lines()[0]


# -- Redis ------------------------------------------------------------------------------


@pytest.mark.parametrize("v", WRONG)
def test_redis_tallies_and_meta_fields_become_problems(v: Any) -> None:
    p = Problems()
    stats = rdecode.stats({"done": v, "dead": "3"}, p)
    m = rdecode.meta({"total": v, "cursor": v, "control": v, "seeded_at": v, "round": v}, p)
    assert stats.get("dead") == 3 and p.count >= 1
    assert m.control in ("running", "paused", "cancelled") and m.cursor >= 0


@pytest.mark.parametrize("v", WRONG)
def test_redis_task_entries_are_checked(v: Any) -> None:
    with pytest.raises(DecodeError):
        rdecode.task({"c": v, "a": "0"}, 10)
    with pytest.raises(DecodeError):
        rdecode.task({"c": "1", "a": v if v != "" else "x"}, 10)
    assert rdecode.task({"c": "9", "a": "2", "g": "1"}, 10) == (9, 2, 1)
    with pytest.raises(DecodeError):
        rdecode.task({"c": "10"}, 10)


@pytest.mark.parametrize(
    "fields",
    [{}, {"k": "failed"}, {"k": "zap", "t": "1"}, {"k": "failed", "t": "x"},
     {"k": "failed", "t": "1", "d": ["x"]}, {"k": ["failed"], "t": "1"},
     {"k": "failed", "t": "1", "w": HUGE}],
)  # fmt: skip
def test_redis_events_are_checked(fields: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        rdecode.event(fields)


def test_redis_event_details_lose_their_escapes() -> None:
    e = rdecode.event({"k": "failed", "t": "1500", "c": "3", "d": "boom\x1b[2J\nagain"})
    assert e.chunk == 3 and e.t == 1.5 and e.detail == "boom\\x1b[2J again"


@pytest.mark.parametrize(
    ("chunk", "text"),
    [("x", "{}"), ("-1", "{}"), ("10", "{}"), ("1", "[]"), ("1", DEEP), ("1", 7), ("1", "")],
)
def test_redis_ledger_entries_are_checked(chunk: Any, text: Any) -> None:
    with pytest.raises(DecodeError):
        rdecode.ledger_entry(chunk, text, 10)


# -- RabbitMQ ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [{"spec": {}, "run": "Bad Id"}, {"spec": {}, "run": ["r1"]}, {"spec": {}},
     {"deleted": ["r1"]}, {"deleted": 5}, {"control": "fast", "run": "r1"},
     {"control": ["paused"], "run": "r1"}, {"sync": ["m"]}, {"sync": HUGE}],
)  # fmt: skip
def test_runs_stream_messages_are_checked(msg: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        qdecode.runs_message(msg)


def test_runs_stream_messages_of_a_newer_kind_are_ignored() -> None:
    for msg in ({}, {"run": "r1"}, {"run": "r1", "rename": "r2"}):
        assert qdecode.runs_message(msg).kind == "other"


@pytest.mark.parametrize(
    "raw", [b"", b"garbage", b"[1, 2]", b"null", DEEP.encode(), b"NaN", b"\xff"]
)
def test_stream_bodies_are_json_objects(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        qdecode.message(raw, "a message")


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"c": "1"}, {"c": 1.5}, {"c": True}, {"c": -1}, {"c": 10}, {"c": 5, "n": 6},
     {"c": 5, "n": 0}, {"c": 1, "a": -1}, {"c": 1, "g": "x"}, {"c": 1, "x-delivery-count": "z"},
     {"c": 2**80}],
)  # fmt: skip
def test_task_headers_are_checked(headers: Any) -> None:
    with pytest.raises(DecodeError):
        qdecode.task(headers, 10)


def test_a_ledger_fold_counts_garbage_as_problems_and_folds_the_rest() -> None:
    fold = LedgerFold(10)
    garbage: list[Any] = [
        {"o": 5}, {"o": "abc"}, {"o": [5, "x", None, [1]]}, {"o": [ok_outcome(1, c="x")]},
        {"o": [ok_outcome(1, c=99)]}, {"o": [ok_outcome(1, n="ten")]},
        {"o": [ok_outcome(1, s="great")]}, {"o": [ok_outcome(1, w=["w"])]},
        {"e": "retry", "g": "x", "c": []}, {"e": "retry", "g": 1, "c": "zz"},
        {"e": "retry", "g": 1, "c": [[1, "ok"]]}, {"e": "failed", "d": ["x"], "t": 1},
        {"e": 5}, {"e": "failed", "t": "soon"}, {"e": "failed", "t": 1, "c": 99},
    ]  # fmt: skip
    for msg in garbage:
        fold.add(msg)
    fold.add({"o": [ok_outcome(2)]})
    fold.add({"e": "failed", "t": 1, "c": 3, "d": "boom\x1b[31m"})
    fold.add({"e": "from-the-future", "t": 1})
    assert (fold.done, fold.done_params, fold.failed) == (1, 10, 1)
    assert fold.problems.count == len(garbage) + 3, "one per record: four in the third batch"
    assert fold.recent[0] == "boom\\x1b[31m"


def test_winners_skip_garbage_and_keep_the_first_readable_outcome() -> None:
    problems = Problems()
    messages = [
        {"o": 7},
        {"o": [ok_outcome(1, t="late"), ok_outcome(1, w="first")]},
        {"o": [ok_outcome(1, w="second"), "junk", ok_outcome(12)]},
    ]
    got = list(_winners(iter(messages), 10, {}, problems))
    assert [(o.chunk, o.worker) for o in got] == [(1, "first")]
    assert problems.count == 4


@pytest.mark.parametrize(
    "msg",
    [{"spec": "x"}, {"spec": {**spec().to_dict(), "run": "r2"}}, {"spec": {"run": "r1"}},
     {"spec": {**spec().to_dict(), "requires": ["teleport"]}}],
)  # fmt: skip
def test_a_meta_stream_with_a_bad_spec_makes_the_run_unreadable(msg: dict[str, Any]) -> None:
    state = _RunState("r1")
    with pytest.raises(RunDataError, match=r"^run r1: "):
        state.fold_meta(msg)
    assert state.spec is None and state.spec_error is not None
    state.fold_meta({"spec": spec().to_dict()})  # a later announcement changes nothing
    assert state.spec is None


@pytest.mark.parametrize(
    "msg",
    [{}, {"w": ["w"], "t": 1}, {"w": "w", "t": "x"}, {"w": "w", "t": 1, "h": 5},
     {"w": "w", "t": 1, "h": [[1, 2]]}, {"w": "w", "t": 1, "h": [["a", 1, 1]]},
     {"w": "w", "t": 1, "h": [[1, 1, math.nan]]}],
)  # fmt: skip
def test_activity_snapshots_are_checked(msg: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        qdecode.snapshot(msg)


@pytest.mark.parametrize(
    "msg",
    [{}, {"b": 5}, {"b": [[1]]}, {"b": [[1, 2, 3]]}, {"b": [["a", 1]]}, {"b": [[10, 1]]},
     {"b": [[1, 0]]}, {"b": [[-1, 1]]}, {"sync": ["x"]}, {"sync": "x" * 100}],
)  # fmt: skip
def test_begun_marks_are_checked(msg: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        qdecode.begun_message(msg, 10)


def test_begun_marks_read() -> None:
    assert qdecode.begun_message({"w": "w", "b": [[3, 2], [4, 1]]}, 10).marks == ((3, 2), (4, 1))
    assert qdecode.begun_message({"sync": "abc"}, 10).sync == "abc"
