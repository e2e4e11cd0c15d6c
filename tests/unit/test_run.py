from __future__ import annotations

import pytest

from ttg.errors import UsageError
from ttg.run import Outcome, Progress, RunSpec, Status, check_run_id
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
    "kw", [{"chunk_size": 0}, {"work_ms": -1}, {"max_deliveries": 0}, {"run": "Bad"}]
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
