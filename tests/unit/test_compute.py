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
    r = compute.run_chunk(compute.square, RangeSpace(0, 100), 10, 15, 0)
    assert r.results == [100, 121, 144, 169, 196] and r.errors == []


def test_an_error_stays_with_its_parameter_and_nothing_is_computed_twice() -> None:
    calls: list[int] = []

    def f(x: int) -> int:
        calls.append(x)
        if x in (11, 13):
            raise ValueError(f"no {x}") if x == 11 else OSError("disk")
        return x

    r = compute.run_chunk(f, RangeSpace(0, 100), 10, 15, 0)
    assert calls == [10, 11, 12, 13, 14]
    assert r.results == [10, None, 12, None, 14]
    assert r.errors == [(11, "ValueError: no 11", True), (13, "OSError: disk", False)]
    assert r.transient and r.first_error() == "parameter 11: ValueError: no 11"


def test_error_classification_is_explicit_and_overridable() -> None:
    assert compute.is_permanent(TypeError())
    assert not compute.is_permanent(RuntimeError())
    assert compute.is_permanent(compute.PermanentError())
    assert not compute.is_permanent(compute.TransientError())

    def fn(x: int) -> int:
        return x

    fn.permanent_errors = (RuntimeError,)  # type: ignore[attr-defined]
    assert compute.is_permanent(RuntimeError(), fn) and not compute.is_permanent(TypeError(), fn)


def test_unserialisable_results_become_errors_of_their_parameters() -> None:
    text, bad = compute.encode_results([1, {2}, 3, object()], lo=100)
    assert text == "[1,null,3,null]"
    assert [i for i, _ in bad] == [101, 103] and "not JSON-serialisable" in bad[0][1]


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("ttg.compute:square", True),
        ("mypkg.sim:run", True),
        ("mypkg:run", True),
        ("mypkgx:run", False),
        ("os:system", False),
        ("ttg:main", False),
    ],
)
def test_only_allowed_modules_may_be_computes(name: str, allowed: bool) -> None:
    allow = compute.parse_allow("mypkg")
    if allowed:
        compute.check_allowed(name, allow)
    else:
        with pytest.raises(UsageError, match="not allowed"):
            compute.check_allowed(name, allow)


@pytest.mark.parametrize(
    "name", ["nocolon", "no_such_module_xyz:f", "ttg.compute:no_such_function", ":f", "m:"]
)
def test_load_rejects_bad_names(name: str) -> None:
    with pytest.raises(UsageError):
        compute.load(name)
