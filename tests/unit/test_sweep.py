"""ttg.Sweep without a broker process: names, refusals, defaults, and seeding conflicts."""

from __future__ import annotations

import pytest

import ttg
from ttg.brokers.memory import MemoryBroker
from ttg.endpoint import Endpoint
from ttg.errors import RunConflict, UsageError
from ttg.space import RangeSpace
from ttg.sweep import compute_name, default_chunk_size, make_space


def on_memory(sweep: ttg.Sweep, broker: MemoryBroker) -> ttg.Sweep:
    sweep._broker = broker  # the in-memory backend, as the worker's unit tests use it
    return sweep


def test_compute_names_from_strings_and_importable_functions() -> None:
    from tests.computes import label  # noqa: PLC0415

    assert compute_name("m.n:f") == "m.n:f"
    assert compute_name(label) == "tests.computes:label"
    with pytest.raises(UsageError, match="expected module:function"):
        compute_name("nocolon")


def test_lambdas_nested_functions_and_main_are_refused_with_a_reason() -> None:
    def nested(x: int) -> int:
        return x

    with pytest.raises(UsageError, match="only a module's top-level function"):
        compute_name(nested)
    with pytest.raises(UsageError, match="only a module's top-level function"):
        compute_name(lambda x: x)
    main = type("F", (), {"__module__": "__main__", "__qualname__": "f", "__call__": None})()
    main.__module__, main.__qualname__ = "__main__", "f"  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="is defined in __main__"):
        compute_name(main)  # type: ignore[arg-type]


def test_default_chunk_size_aims_at_a_few_hundred_chunks() -> None:
    assert default_chunk_size(15) == 1
    assert default_chunk_size(100_000) == 390
    assert default_chunk_size(10**8) == 1000
    assert ttg.Sweep("r", space=10_000, broker=Endpoint()).spec.chunk_size == 39


def test_a_grid_without_a_compute_is_refused() -> None:
    with pytest.raises(UsageError, match="a grid space needs a compute"):
        ttg.Sweep("r", space=ttg.grid(a=[1, 2]), broker=Endpoint())
    with pytest.raises(UsageError, match="a table space needs a compute"):
        ttg.Sweep("r", space=ttg.table([{"a": 1}]), broker=Endpoint())


def test_reseeding_with_other_parameters_names_what_differs() -> None:
    broker = MemoryBroker()
    on_memory(ttg.Sweep("r1", space=100, chunk_size=10, broker=Endpoint()), broker).seed()
    again = on_memory(ttg.Sweep("r1", space=100, chunk_size=10, broker=Endpoint()), broker)
    assert again.seed().already_seeded
    other = on_memory(ttg.Sweep("r1", space=100, chunk_size=20, broker=Endpoint()), broker)
    with pytest.raises(RunConflict) as e:
        other.seed()
    assert str(e.value) == (
        "run 'r1' exists with different parameters: chunk_size 10 there, 20 here; pick a new run id"
    )
    grid = ttg.Sweep(
        "r1", compute="tests.computes:label", space=ttg.grid(a=range(100)), chunk_size=10,
        broker=Endpoint(),
    )  # fmt: skip
    with pytest.raises(RunConflict, match="space range of 100 parameters there, grid of 100"):
        on_memory(grid, broker).seed()


def test_broker_argument_forms() -> None:
    assert ttg.Sweep("r", space=1, broker="amqp://u:p@h/v").endpoint.backend == "rabbitmq"
    assert ttg.Sweep("r", space=1, broker="rediss://h:1/0").endpoint.backend == "redis"
    with pytest.raises(UsageError, match="scheme 'http'"):
        ttg.Sweep("r", space=1, broker="http://h")


def test_no_broker_named_is_refused_rather_than_the_default_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TTG_BROKER_URL", raising=False)
    with pytest.raises(UsageError, match="no broker: pass broker="):
        ttg.Sweep("r", space=10)
    monkeypatch.setenv("TTG_BROKER_URL", "amqp://u:p@h/v")
    assert ttg.Sweep("r", space=10).endpoint.backend == "rabbitmq"


def test_a_python_range_is_a_space_and_other_objects_are_refused_in_one_line() -> None:
    assert make_space(range(3, 20, 4)) == RangeSpace(3, 20, 4)
    assert make_space(range(200)).size == 200
    for odd in ([1, 2, 3], {"a": 1}, 2.5, object()):
        with pytest.raises(UsageError, match="is not a parameter space"):
            make_space(odd)  # type: ignore[arg-type]
