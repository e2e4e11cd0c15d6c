from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from ttg import space
from ttg.errors import UsageError


def test_range_space_values_match_python_range() -> None:
    s = space.RangeSpace(5, 100, 7)
    assert s.size == len(range(5, 100, 7))
    assert [s.value(i) for i in range(s.size)] == list(range(5, 100, 7))
    assert list(s.values(3, 6)) == list(range(5, 100, 7))[3:6]


def test_range_space_negative_step() -> None:
    s = space.RangeSpace(10, 0, -3)
    assert list(s.values(0, s.size)) == [10, 7, 4, 1]


def test_grid_space_order_is_itertools_product() -> None:
    s = space.parse("grid:lr=0.1,0.01;depth=2,4,8;act=relu,tanh")
    expected = [
        {"lr": lr, "depth": d, "act": a}
        for lr, d, a in itertools.product([0.1, 0.01], [2, 4, 8], ["relu", "tanh"])
    ]
    assert s.size == 12
    assert [s.value(i) for i in range(12)] == expected
    assert list(s.values(4, 7)) == expected[4:7]


@pytest.mark.parametrize(
    "text",
    [
        "range:1",
        "range:a:b",
        "range:5:5",
        "range:0:10:0",
        "grid:",
        "grid:x=",
        "grid:=1",
        "cube:1",
        "grid:a=1;a=2",
    ],
)
def test_parse_rejects_malformed_spaces(text: str) -> None:
    with pytest.raises(UsageError):
        space.parse(text)


def test_spec_round_trip() -> None:
    for s in (space.parse("range:3:30:3"), space.parse('grid:a=1,"x",true;b=null,2.5')):
        assert space.from_spec(s.to_spec()) == s


# -- forms people use ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("range:0:1:0.1", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ("range:2.5:3:0.25", [2.5, 2.75]),  # the stop itself is never a value
        ("range:1:0:-0.25", [1.0, 0.75, 0.5, 0.25]),
        ("range:0:1.05:0.35", [0.0, 0.35, 0.7, 1.05][:3]),  # 1.05 excluded exactly
        ("linspace:0:1:5", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("linspace:1:0:3", [1.0, 0.5, 0.0]),
        ("linspace:3:7:1", [3.0]),
        ("logspace:0:3:4", [1.0, 10.0, 100.0, 1000.0]),
        ("logspace:-2:0:3", [0.01, 0.1, 1.0]),
    ],
)
def test_one_dimensional_forms_give_exact_values(text: str, values: list[float]) -> None:
    s = space.parse(text)
    assert s.size == len(values)
    assert list(s.values(0, s.size)) == values
    assert space.from_spec(s.to_spec()) == s  # the spec keeps the bounds as written


def test_float_range_count_has_no_drift() -> None:
    # 1.5 / 0.01 is 150.00000000000003 in binary floating point: 151 values, one past STOP.
    s = space.parse("range:2.5:4.0:0.01")
    assert s.size == 150 and s.value(149) == 3.99 and s.value(3) == 2.53
    with pytest.raises(IndexError):
        s.value(150)
    # Python's float steps drift; these do not.
    assert [space.arange(0, 1, 0.1).value(i) for i in (3, 7)] == [0.3, 0.7]
    assert space.linspace(0, 0.3, 4).value(3) == 0.3


def test_python_mirrors_of_the_forms() -> None:
    assert space.arange(5) == space.RangeSpace(0, 5)
    assert space.arange(2, 10, 3) == space.RangeSpace(2, 10, 3)
    assert list(space.arange(0, 1, 0.25).values(0, 4)) == [0.0, 0.25, 0.5, 0.75]
    assert space.linspace(0, 1, 5) == space.parse("linspace:0:1:5")
    assert space.logspace(0, 2, 3) == space.parse("logspace:0:2:3")


def test_grid_axes_may_be_lists_ranges_and_forms() -> None:
    s = space.parse("grid:omega=0.5,1,2;zeta=linspace:0:1:3;n=range:1:3;r=range:2.5:2.6:0.05")
    assert s.size == 3 * 3 * 2 * 2
    assert s.value(0) == {"omega": 0.5, "zeta": 0.0, "n": 1, "r": 2.5}
    assert s.value(s.size - 1) == {"omega": 2, "zeta": 1.0, "n": 2, "r": 2.55}
    py = space.grid(omega=[0.5, 1, 2], zeta=space.linspace(0, 1, 3), n=range(1, 3),
                    r=space.arange(2.5, 2.6, 0.05))  # fmt: skip
    assert py == s


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("grid:r=range:2.5:4.0:x", "'r'"),
        ("grid:a=1,2;r=range:2.5", "'r'"),
        ("grid:z=linspace:0:1", "'z'"),
        ("grid:z=linspace:0:1:2.5", "'z'"),
        ("grid:z=logspace:0:1:0", "'z'"),
        ("grid:z=range:0:1:0", "'z'"),
        ("grid:z=range:1:1", "'z'"),
        ("grid:z=linspace(0,1,5)", "'z'"),
    ],
)
def test_a_value_that_looks_like_a_form_but_does_not_parse_is_refused(
    text: str, names: str
) -> None:
    with pytest.raises(UsageError) as e:
        space.parse(text)
    assert f"axis {names}" in str(e.value)


@pytest.mark.parametrize(
    "text",
    ["linspace:0:1", "linspace:0:1:x", "logspace:a:1:3", "range:0:1:0.0", "grid:a=NaN",
     "grid:a=1,Infinity", "range:nan:1"],
)  # fmt: skip
def test_malformed_forms_and_numbers_json_cannot_hold_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        space.parse(text)


def test_python_grid_refuses_strings_and_nan_and_takes_numpy_like_scalars() -> None:
    class Scalar:  # what numpy.float64 offers: .item()
        def __init__(self, v: float) -> None:
            self.v = v

        def item(self) -> float:
            return self.v

    assert space.grid(a=[Scalar(0.5)]).value(0) == {"a": 0.5}
    with pytest.raises(UsageError, match="not str"):
        space.grid(a="0.5,1")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="nan"):
        space.grid(a=[float("nan")])


# -- tables --------------------------------------------------------------------------------------


def test_table_rows_and_dataframe_like_objects() -> None:
    t = space.table([{"a": 1, "b": "x"}, {"b": "y", "a": 2}])
    assert t.size == 2 and t.value(1) == {"a": 2, "b": "y"} and t.names == ("a", "b")
    assert space.from_spec(t.to_spec()) == t

    class Frame:
        def to_dict(self, orient: str) -> list[dict[str, object]]:
            assert orient == "records"
            return [{"a": 1}]

    assert space.table(Frame()).value(0) == {"a": 1}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "at least one row"),
        ([{"a": 1}, {"b": 2}], "table row 2 has columns"),
        ([{"a": float("inf")}], "JSON has no inf"),
        ([[1, 2]], "not a mapping"),
    ],
)
def test_table_refusals(rows: list[object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        space.table(rows)


def test_space_file_csv_keeps_types(tmp_path: Path) -> None:
    f = tmp_path / "c.csv"
    f.write_text('name,n,lr,flag,note\nsmall,2,0.1,true,\n"a, b",8,1e-3,false,"""q"""\n\n')
    t = space.read_table(str(f))
    assert t.value(0) == {"name": "small", "n": 2, "lr": 0.1, "flag": True, "note": None}
    assert t.value(1) == {"name": "a, b", "n": 8, "lr": 0.001, "flag": False, "note": "q"}


def test_space_file_jsonl_keeps_types(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text('{"a": 1, "b": [1, 2]}\n\n{"a": "2", "b": null}\n')
    t = space.table(f)
    assert [t.value(i) for i in range(2)] == [{"a": 1, "b": [1, 2]}, {"a": "2", "b": None}]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.csv", "a,b\n1\n", "line 2 has 1 cells"),
        ("empty.csv", "", "expected a CSV header"),
        ("bad.jsonl", '{"a": 1}\n[1]\n', "line 2 is not a JSON object"),
        ("bad2.jsonl", '{"a": 1}\n{"a": \n', "line 2 is not JSON"),
        ("nan.jsonl", '{"a": NaN}\n', "JSON has no nan"),
    ],
)
def test_space_file_refusals_name_the_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(UsageError, match=message):
        space.read_table(str(f))
    with pytest.raises(UsageError, match="No such file"):
        space.read_table(str(tmp_path / "missing.csv"))


def test_a_big_table_is_refused_before_it_reaches_a_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    from ttg import tables  # noqa: PLC0415

    monkeypatch.setattr(tables, "MAX_TABLE_BYTES", 1000)
    with pytest.raises(UsageError, match="over the 0 MiB a run's spec may hold"):
        space.table([{"a": i} for i in range(500)])
