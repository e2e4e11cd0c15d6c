from __future__ import annotations

import pytest

from ttg import compute
from ttg.errors import UsageError
from ttg.space import RangeSpace, parse


@pytest.mark.parametrize(
    ("start", "stop", "step"),
    [(0, 1, 1), (0, 1000, 1), (7, 5000, 13), (-50, 50, 3), (100, -100, -7)],
)
def test_closed_form_equals_brute_force(start: int, stop: int, step: int) -> None:
    s = RangeSpace(start, stop, step)
    assert compute.closed_form_total(s, compute.DEFAULT_COMPUTE) == sum(
        x * x for x in range(start, stop, step)
    )


def test_no_closed_form_for_other_computes_or_grids() -> None:
    assert compute.closed_form_total(RangeSpace(0, 10), "tests.computes:explode_on_13") is None
    assert compute.closed_form_total(parse("grid:a=1,2"), compute.DEFAULT_COMPUTE) is None


def test_square_is_deterministic_for_any_json_value() -> None:
    assert compute.square(12) == 144
    assert compute.square({"a": 1, "b": [2]}) == compute.square({"b": [2], "a": 1})


def test_run_chunk_computes_every_parameter_of_the_chunk() -> None:
    assert compute.run_chunk(compute.square, RangeSpace(0, 100), 10, 15, 0) == [
        100,
        121,
        144,
        169,
        196,
    ]


@pytest.mark.parametrize(
    "name", ["nocolon", "no_such_module_xyz:f", "ttg.compute:no_such_function", ":f", "m:"]
)
def test_load_rejects_bad_names(name: str) -> None:
    with pytest.raises(UsageError):
        compute.load(name)
