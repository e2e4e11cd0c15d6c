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
    assert [e[:3] for e in r.errors] == [
        (11, "ValueError: no 11", True),
        (13, "OSError: disk", False),
    ]
    # Each keeps its traceback: the user's frame (file:line, function, source), then the error.
    tb = r.errors[0][3].splitlines()
    assert tb[0].endswith(f"test_compute.py:{f.__code__.co_firstlineno + 3} in f")
    assert tb[1].strip().startswith("raise ValueError")
    assert tb[-1] == "ValueError: no 11"
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
        ("ttg.compute:describe", False),
        ("ttg.compute:run_chunk", False),
        ("lab.sim:energy", True),
        ("lab.sim:other", False),
        ("lab:energy", False),
        ("mypkg:_private", False),
        ("exec:/opt/sim/run", True),
        ("exec:/bin/sh", False),
    ],
)
def test_only_allowed_computes_may_run(name: str, allowed: bool) -> None:
    allow = compute.parse_allow("mypkg, lab.sim:energy, exec:/opt/sim/run")
    if allowed:
        compute.check_allowed(name, allow)
    else:
        with pytest.raises(UsageError, match="not allowed"):
            compute.check_allowed(name, allow)


def test_the_default_allowlist_is_exactly_the_default_compute() -> None:
    allow = compute.parse_allow("")
    assert allow == ("ttg.compute:square",)
    compute.check_allowed("ttg.compute:square", allow)
    assert compute.load("ttg.compute:square", allow) is compute.square
    with pytest.raises(UsageError, match="not allowed"):
        compute.load("ttg.compute:closed_form_total", allow)


@pytest.mark.parametrize(
    "text", ["not a module", "os;rm", "exec:", "exec:a b", "a:b:c", "mod:", ":f", "m:1x"]
)
def test_allowlist_entries_must_be_computes(text: str) -> None:
    with pytest.raises(ValueError, match="not a module"):
        compute.parse_allow(text)


@pytest.mark.parametrize(
    "name", ["nocolon", "no_such_module_xyz:f", "ttg.compute:no_such_function", ":f", "m:"]
)
def test_load_rejects_bad_names(name: str) -> None:
    with pytest.raises(UsageError):
        compute.load(name, ("no_such_module_xyz", "ttg.compute", "m"))


#: The hostile package's own functions, and what it imported or holds that is callable.
HOSTILE = "tests.hostile_pkg"


@pytest.mark.parametrize("allow", [("tests",), (HOSTILE,)])
@pytest.mark.parametrize(
    ("attr", "why"),
    [
        ("check_output", "defined in 'subprocess'"),
        ("system", "builtin_function_or_method"),
        ("shell", "partial"),
        ("opener", "builtin_function_or_method"),
        ("bound", "method"),
        ("Runner", "class"),
        ("functools", "module"),
    ],
)
def test_load_refuses_what_an_allowed_module_did_not_define(
    allow: tuple[str, ...], attr: str, why: str
) -> None:
    with pytest.raises(UsageError, match=why):
        compute.load(f"{HOSTILE}:{attr}", allow)


def test_load_accepts_functions_defined_under_the_allowed_prefix() -> None:
    from tests import hostile_pkg  # noqa: PLC0415

    assert compute.load(f"{HOSTILE}:scaled", (HOSTILE,)) is hostile_pkg.scaled
    # Imported from another allowed module: defined under the prefix all the same.
    assert compute.load(f"{HOSTILE}:explode_on_13", ("tests",)).__module__ == "tests.computes"
    with pytest.raises(UsageError, match=r"defined in 'tests\.computes'"):
        compute.load(f"{HOSTILE}:explode_on_13", (HOSTILE,))


def test_an_exact_entry_allows_one_function_and_never_an_imported_one() -> None:
    exact = compute.parse_allow(f"{HOSTILE}:scaled,{HOSTILE}:check_output")
    assert compute.load(f"{HOSTILE}:scaled", exact)(2) == 6
    with pytest.raises(UsageError, match="not allowed"):
        compute.load(f"{HOSTILE}:describe_axes", exact)
    with pytest.raises(UsageError, match="defined in 'subprocess'"):
        compute.load(f"{HOSTILE}:check_output", exact)
    with pytest.raises(UsageError, match="private"):
        compute.load(f"{HOSTILE}:_private", (HOSTILE,))
    assert compute.load(f"{HOSTILE}:_private", (f"{HOSTILE}:_private",))(4) == 4
    with pytest.raises(UsageError, match="program"):
        compute.load("exec:/opt/sim/run", ("exec:/opt/sim/run",))


def test_a_traceback_keeps_the_innermost_frames_within_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def deep(n: int) -> int:
        if n == 0:
            raise RuntimeError("x" * 5000)
        return deep(n - 1)

    monkeypatch.setattr(compute, "TRACEBACK_CHARS", 300)
    r = compute.run_chunk(deep, RangeSpace(0, 100), 50, 51, 0)
    tb = r.errors[0][3]
    assert len(tb) == 300 and tb.startswith("…") and tb.endswith("xxx")
    monkeypatch.undo()
    r = compute.run_chunk(lambda n: deep(30), RangeSpace(0, 1), 0, 1, 0)
    lines = r.errors[0][3].splitlines()
    assert sum(1 for line in lines if " in deep" in line) == compute.TRACEBACK_FRAMES
