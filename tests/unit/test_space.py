from __future__ import annotations

import itertools

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
