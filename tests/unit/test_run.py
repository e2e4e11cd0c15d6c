from __future__ import annotations

import json

import pytest

from ttg import limits
from ttg import run as runs
from ttg.decode import DecodeError
from ttg.errors import RunDataError, UnsupportedRun, UsageError
from ttg.run import FORMAT, Outcome, Progress, RunSpec, Status, check_run_id
from ttg.space import RangeSpace


def spec(**kw: object) -> RunSpec:
    args: dict = {
        "run": "r1",
        "space": RangeSpace(0, 1005).to_spec(),
        "chunk_size": 100,
        "compute": "ttg.compute:square",
    }
    args.update(kw)
    return RunSpec(**args)


def test_chunks_cover_the_space_exactly_once() -> None:
    s = spec()
    assert s.total_chunks == 11
    covered = [i for c in range(s.total_chunks) for i in range(*s.bounds(c))]
    assert covered == list(range(1005))


def test_spec_json_round_trip() -> None:
    s = spec(work_ms=5, max_deliveries=3)
    assert RunSpec.from_json(s.to_json()) == s


@pytest.mark.parametrize("bad", ["", "Upper", "-lead", "a_b", "x" * 64, "a.b"])
def test_bad_run_ids_are_rejected(bad: str) -> None:
    with pytest.raises(UsageError):
        check_run_id(bad)


@pytest.mark.parametrize(
    "kw",
    [
        {"chunk_size": 0},
        {"work_ms": -1},
        {"max_deliveries": 0},
        {"run": "Bad"},
        {"chunk_size": 1.5},
        {"chunk_size": True},
        {"work_ms": 10**12},
        {"space": {"kind": "range", "start": 0, "stop": 2**64}},
        {"space": {"kind": "range", "start": 0, "stop": 10**9}, "chunk_size": 1},
        {"compute": 7},
        {"compute": "no colon"},
        {"requires": ("teleport",)},
        {"space": {"kind": "grid", "axes": [["x", [1.0, float("nan")]]]}},
        {"space": {"kind": "grid", "axes": [["x", [{"a": [float("inf")]}]]]}},
    ],
)
def test_bad_specs_are_rejected(kw: dict) -> None:
    with pytest.raises(UsageError):
        spec(**kw)


def test_outcome_json_round_trip() -> None:
    dead = Outcome(7, Status.DEAD, 100, "w1", 5, 1700000000.123, None, "boom")
    assert Outcome.from_json(7, dead.to_json()) == dead
    errors = Outcome(
        8, Status.ERRORS, 2, "w1", 1, 1700000000.5, [None, 4], "parameter 800: x",
        ((800, "ValueError: x"),), 1700000000.25, 2,
    )  # fmt: skip
    assert Outcome.from_json(8, errors.to_json()) == errors
    assert errors.to_json().startswith('{"w":"w1","a":1,')


def test_progress_states() -> None:
    p = Progress("r", total_chunks=10, total_params=100, seeded_chunks=4)
    assert p.state == "seeding"
    p.seeded_chunks, p.done = 10, 9
    assert p.state == "running" and not p.complete and p.waiting == p.queue_depth
    p.control = "paused"
    assert p.state == "paused" and p.waiting == 0
    p.control = "running"
    p.errors = 1
    assert p.state == "complete-with-failures" and p.complete and p.ratio == 1.0
    p.errors, p.done = 0, 10
    assert p.state == "complete" and p.failures == 0


#: The fields a format-1 reader (ttg 0.3: ``RunSpec(**stored)``) accepts, and no other.
FORMAT_1 = {"run", "space", "chunk_size", "compute", "work_ms", "max_deliveries"}


def test_a_spec_that_requires_nothing_is_stored_as_format_1_for_older_readers() -> None:
    d = json.loads(spec(work_ms=5).to_json())
    assert set(d) == FORMAT_1, "a 0.3 worker reads it: new seeder, old workers"
    assert RunSpec.from_json(spec(work_ms=5).to_json(), "r1").format == 1


def test_a_spec_that_requires_a_feature_is_stored_as_format_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(runs.FEATURE_FIELDS, "work_ms", "simulated-cost")
    monkeypatch.setattr(runs, "FEATURES", frozenset({"simulated-cost"}))
    d = json.loads(spec(work_ms=5).to_json())
    assert d["format"] == FORMAT == 2 and d["requires"] == ["simulated-cost"]
    assert set(json.loads(spec().to_json())) == FORMAT_1 - {"work_ms"}, "off: left out"


def test_a_spec_without_format_is_format_1_and_still_the_same_run() -> None:
    d = spec().to_dict()
    assert "format" not in d
    old = RunSpec.from_dict(d, "r1")
    assert old.format == 1 and old == spec(), "re-seeding an old run must not conflict"


def test_unknown_fields_are_ignored_unless_a_feature_is_required() -> None:
    d = {**spec().to_dict(), "format": 3, "colour": "blue", "extra": {"deep": [1, 2]}}
    assert RunSpec.from_dict(d, "r1") == spec()
    d["requires"] = ["colour", "teleport"]
    with pytest.raises(UnsupportedRun, match="requires colour, teleport") as e:
        RunSpec.from_dict(d, "r1")
    assert e.value.run == "r1" and e.value.exit_code == 5


def test_a_field_off_by_default_requires_its_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    # A field another version adds: its feature is required whenever it is not "off".
    monkeypatch.setitem(runs.FEATURE_FIELDS, "work_ms", "simulated-cost")
    monkeypatch.setattr(runs, "FEATURES", frozenset({"simulated-cost"}))
    assert spec().requires == ()
    costly = spec(work_ms=5)
    assert costly.requires == ("simulated-cost",)
    assert RunSpec.from_json(costly.to_json(), "r1") == costly
    monkeypatch.setattr(runs, "FEATURES", frozenset())
    with pytest.raises(UnsupportedRun, match="simulated-cost"):
        RunSpec.from_json(costly.to_json(), "r1")


#: Stored specs that must be refused as one run's unreadable data, never crash a reader.
GARBAGE_SPECS = [
    "",
    "not json",
    "[1, 2]",
    "null",
    '"a string"',
    "[" * 100_000 + "]" * 100_000,
    '{"run": "r1"}',
    '{"run": "r1", "space": {"kind": "range", "start": 0, "stop": 10}, "chunk_size": 1, '
    '"compute": 5}',
    '{"run": "r1", "space": {"kind": "range", "start": 0, "stop": 10}, "chunk_size": NaN, '
    '"compute": "ttg.compute:square"}',
    '{"run": "r1", "space": {"kind": "range", "start": 0, "stop": 1e400}, "chunk_size": 1, '
    '"compute": "ttg.compute:square"}',
    '{"run": "r1", "space": {"kind": "range", "start": 0, "stop": 10}, "chunk_size": 1, '
    '"compute": "ttg.compute:square", "format": "two"}',
    '{"run": "r1", "space": {"kind": "range", "start": 0, "stop": 10}, "chunk_size": 1, '
    '"compute": "ttg.compute:square", "requires": "everything"}',
    '{"run": "r1", "space": {"kind": "grid", "axes": [["x", ' + "[" * 60 + "1" + "]" * 60 + "]]}, "
    '"chunk_size": 1, "compute": "ttg.compute:square"}',
    '{"run": "r1", "space": {"kind": "grid", "axes": "xy"}, "chunk_size": 1, '
    '"compute": "ttg.compute:square"}',
    '{"run": "r1", "space": {"kind": "range", "start": 0, "stop": ' + "9" * 4000 + "}, "
    '"chunk_size": 1, "compute": "ttg.compute:square"}',
    '{"run": "r1", "space": {"kind": "range", "start": 0, "stop": ' + "9" * 5000 + "}, "
    '"chunk_size": 1, "compute": "ttg.compute:square"}',
    '{"run": "r1", "space": {"kind": "range", "start": 0, "stop": 10}, "chunk_size": 1, '
    '"compute": "ttg.compute:square", "max_deliveries": true}',
    '{"run": "r1", "space": {"kind": "zigzag"}, "chunk_size": 1, "compute": "ttg.compute:square"}',
    '{"run": "r1", "space": {"kind": "range", "start": 0, "stop": 10}, "chunk_size": 1, '
    '"compute": "ttg.compute:square", "work_ms": 1e300}',
    "x" * (limits.MAX_SPEC_BYTES + 1),
]


@pytest.mark.parametrize("text", GARBAGE_SPECS, ids=range(len(GARBAGE_SPECS)))
def test_garbage_specs_are_one_runs_unreadable_data(text: str) -> None:
    with pytest.raises(RunDataError, match=r"^run r1: unreadable spec: ") as e:
        RunSpec.from_json(text, "r1")
    assert len(str(e.value)) < 500, "a problem is described, not quoted whole"


def test_a_spec_stored_under_another_run_is_refused() -> None:
    with pytest.raises(RunDataError, match="names run 'r1', not the run it is stored under"):
        RunSpec.from_json(spec().to_json(), "other")


#: Ledger entries that must be refused as one chunk's unreadable record.
GARBAGE_OUTCOMES = [
    "[]",
    '{"s": "ok"}',
    '{"w": "w", "a": 1, "s": "fine", "n": 1, "t": 1}',
    '{"w": "w", "a": "1", "s": "ok", "n": 1, "t": 1, "r": [1]}',
    '{"w": ["w"], "a": 1, "s": "ok", "n": 1, "t": 1, "r": [1]}',
    '{"w": "w", "a": 1, "s": "ok", "n": 1, "t": NaN, "r": [1]}',
    '{"w": "w", "a": 1, "s": "ok", "n": -1, "t": 1, "r": [1]}',
    '{"w": "w", "a": 1, "s": "ok", "n": 1, "t": 1, "r": {"a": 1}}',
    '{"w": "w", "a": 1, "s": "errors", "n": 1, "t": 1, "r": [null], "pe": [[0]]}',
    '{"w": "w", "a": 1, "s": "errors", "n": 1, "t": 1, "r": [null], "pe": [["x", "e"]]}',
    '{"w": "w", "a": 1, "s": "ok", "n": 1, "t": 1, "r": [' + "[" * 100_000 + "]" * 100_000 + "]}",
    '{"w": "w", "a": 1, "s": "ok", "n": 1, "t": 1, "g": 1.5, "r": [1]}',
    '{"w": "w", "a": 1, "s": "ok", "n": 1, "t": 1, "e": 7, "r": [1]}',
]


@pytest.mark.parametrize("text", GARBAGE_OUTCOMES, ids=range(len(GARBAGE_OUTCOMES)))
def test_garbage_outcomes_raise_decode_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        Outcome.from_json(3, text)


def test_outcomes_keep_nan_results_and_tracebacks() -> None:
    o = Outcome.from_json(
        3,
        '{"w": "w", "a": 1, "s": "errors", "n": 2, "t": 1, "r": [NaN, null], '
        '"pe": [[7, "ValueError: x", "file.py:3 in f"]], "extra": "ignored"}',
    )
    assert o.param_errors == ((7, "ValueError: x", "file.py:3 in f"),)
    assert o.result is not None and o.result[0] != o.result[0]


@pytest.mark.parametrize(
    "garbage",
    [
        "not a list",
        [[1, 2, 3]],  # three fields, not four
        [[7, 13, 1.0, None]],  # chunk 7 of a run of 4 chunks
        [[1, -1, 1.0, None]],  # a negative parameter
        [[1, 13, "yesterday", None]],
        [[1, 13, 1.0, "fast"]],
        [[1, 13, 1.0, None]] * (limits.MAX_LONG_PARAMS + 1),
    ],
)
def test_long_running_parameters_from_a_broker_are_checked(garbage: object) -> None:
    """What a worker wrote about its long-running parameters is read as untrusted."""
    with pytest.raises(DecodeError):
        runs.LongParam.from_lists("r", garbage, total_chunks=4)


def test_a_long_running_parameter_names_a_likely_hang_past_ten_medians() -> None:
    (p,) = runs.LongParam.from_lists("r", [[1, 13, 1000.0, 0.5]], total_chunks=4).values()
    assert (p.chunk, p.param, p.since, p.median_s) == (1, 13, 1000.0, 0.5)
    held = runs.InFlight(1, "w-1", 1, 3.0)
    assert held.with_long(None, 1004.0) is held and not held.likely_hang
    assert held.with_long(p, 1004.0).param_s == 4.0 and not held.with_long(p, 1004.0).likely_hang
    hung = held.with_long(p, 1006.0)
    assert (hung.param, hung.param_s, hung.likely_hang) == (13, 6.0, True)
    unknown = held.with_long(runs.LongParam("r", 1, 13, 1000.0, None), 2000.0)
    assert unknown.param == 13 and not unknown.likely_hang  # no median: no verdict
