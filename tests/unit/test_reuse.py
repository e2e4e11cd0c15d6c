"""Sweeps that grow, in process: matching by value, the reordered space, provenance checks.

The in-memory backend, chunks recorded as a worker would; the real brokers and processes are in
tests/integration/test_reuse.py and tests/fault/test_reuse_seed.py.
"""

from __future__ import annotations

import time

import pytest

import ttg
from ttg import compute
from ttg import space as spaces
from ttg.brokers.memory import MemoryBroker
from ttg.endpoint import Endpoint
from ttg.errors import UsageError
from ttg.reuse import canonical, quantile
from ttg.run import Outcome, RunSpec, Status


def test_canonical_values_match_across_spaces_and_key_orders() -> None:
    assert canonical(ttg.linspace(0, 1, 11).value(1)) == canonical(ttg.arange(0, 1, 0.1).value(1))
    assert canonical({"b": 1, "a": [0.5, None]}) == canonical({"a": [0.5, None], "b": 1})
    assert canonical(1) != canonical(1.0)  # another type: another value


def test_reordered_space_puts_what_to_compute_first_and_keeps_each_chunk_one_range() -> None:
    base = spaces.RangeSpace(100, 120)
    spec = RunSpec("r", base.to_spec(), 3, compute.DEFAULT_COMPUTE,
                   reuse={"from": ["r0"], "compute": [[2, 4], [10, 11], [19, 20]]})  # fmt: skip
    space = spec.parameter_space
    assert isinstance(space, spaces.Reordered) and spec.computed_params == 4
    order = [space.index(p) for p in range(20)]
    assert order[:4] == [2, 3, 10, 19] and sorted(order) == list(range(20))
    assert list(space.values(0, 20)) == [100 + i for i in order]
    assert (spec.task_chunks, spec.total_chunks) == (2, 2 + 6)
    assert [spec.bounds(c) for c in (0, 1, 2, 7)] == [(0, 3), (3, 4), (4, 7), (19, 20)]
    # A reader that does not know the feature skips the run (docs/contract.md).
    assert spec.requires == ("reuse",)
    assert RunSpec.from_json(spec.to_json(), "r") == spec
    with pytest.raises(UsageError, match="not sorted or out of bounds"):
        RunSpec("r", base.to_spec(), 3, compute.DEFAULT_COMPUTE,
                reuse={"from": ["r0"], "compute": [[4, 30]]})  # fmt: skip


def test_quantiles_by_nearest_rank() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([float(i) for i in range(100)], 0.95) == 94.0


def record(b: MemoryBroker, run: str, *, poison: int | None = 13) -> None:
    """Record every chunk ``run`` has to compute, as a worker would: squares, and an error
    for the parameter of value ``poison``."""
    consumer = b.consumer(f"w-{run}", lease_seconds=5, prefetch=64)
    consumer.start()
    items = []
    for d in consumer.fetch(0.1, 64):
        values = list(d.spec.parameter_space.values(d.lo, d.hi))
        errors = tuple(
            (d.lo + k, "ValueError: poison") for k, v in enumerate(values) if v == poison
        )
        results = [None if v == poison else v * v for v in values]
        status = Status.ERRORS if errors else Status.OK
        items.append((d, Outcome(d.chunk, status, len(values), consumer.name, d.attempt,
                                 time.time(), result=results, param_errors=errors,
                                 started_at=time.time() - 0.01)))  # fmt: skip
    consumer.complete(items)
    consumer.close()
    assert b.progress(run).complete


def sweep(b: MemoryBroker, run: str, space: object, **kw: object) -> ttg.Sweep:
    s = ttg.Sweep(run, compute="tests.computes:explode_on_13", space=space,  # type: ignore[arg-type]
                  chunk_size=5, broker=Endpoint(), **kw)  # fmt: skip
    s._broker = b  # the in-memory backend, as the worker's unit tests use it
    return s


def test_reuse_skips_failed_parameters_and_verify_sees_a_replaced_source() -> None:
    broker = MemoryBroker()
    first = sweep(broker, "r1", 20)
    first.seed()
    record(broker, "r1")
    assert first.verify(allow_failed=True).verified  # 13 failed: the rest is reusable

    estimate = sweep(broker, "r2", 30, reuse=["r1"]).estimate(workers=2)
    assert (estimate.reused, estimate.to_compute, estimate.compute_chunks) == (19, 11, 3)
    assert "r2" not in broker.runs()  # a dry run seeds nothing

    grown = sweep(broker, "r2", 30, reuse=["r1"])
    assert grown.seed().reused_params == 19
    record(broker, "r2")
    rows = list(grown.rows())
    assert [r["index"] for r in rows] == list(range(30))
    assert [r["source"] for r in rows if r["source"] != "reused:r1"] == ["computed"] * 11
    report = grown.verify(allow_failed=True)
    assert report.verified and report.reused_params == 19 and report.failed_params == 1

    with pytest.raises(UsageError, match="reused by r2"):
        first.delete()
    first.retry()  # chunk 2 (10..14) is computed again: its outcome is replaced
    record(broker, "r1", poison=None)
    report = grown.verify(allow_failed=True)
    assert not report.verified
    (problem,) = report.problems
    assert "4 reused parameters came from run r1 chunk 2" in problem


def test_several_reused_runs_the_first_named_wins_and_other_computes_give_nothing() -> None:
    broker = MemoryBroker()
    for run, space in (("a", "range:0:10"), ("b", "range:5:20")):
        sweep(broker, run, space).seed()
        record(broker, run, poison=None)
    grown = sweep(broker, "c", 30, reuse=["b", "a"])
    assert grown.seed().reused_params == 20
    record(broker, "c", poison=None)
    sources = [r["source"] for r in grown.rows()]
    assert sources == ["reused:a"] * 5 + ["reused:b"] * 15 + ["computed"] * 10
    assert grown.spec.reuse == {"from": ["b", "a"], "compute": [[20, 30]]}

    other = ttg.Sweep("d", compute="tests.computes:set_on_13", space=30, chunk_size=5,
                      broker=Endpoint(), reuse=["a"])  # fmt: skip
    other._broker = broker
    seeded = other.seed()
    assert seeded.reused_params == 0 and "nothing reused from run a" in seeded.warnings[0]
    assert other.spec.reuse is None  # an ordinary run


def test_a_compute_identity_names_the_distribution_importlib_metadata_names() -> None:
    """The identity's distribution is ``packages_distributions()``'s first, for every
    top-level package installed here (declared, inferred from files, editable), found
    without walking every distribution's file list."""
    import importlib.metadata  # noqa: PLC0415 - only this test compares with it

    from ttg import identity  # noqa: PLC0415

    provided = importlib.metadata.packages_distributions()
    assert {"sweep_sim", "yaml", "_pytest"} <= provided.keys()  # editable, declared, inferred
    for top, names in provided.items():
        found = identity._provider(top)
        assert found is not None and found.metadata["Name"] == names[0], top
    version = importlib.metadata.version("sweep-sim")
    assert identity.identity("sweep_sim.model:run") == f"sweep_sim.model:run sweep-sim=={version}"
    # No distribution provides a module on PYTHONPATH: its source file's digest stands in.
    assert identity._provider("tests") is None
    line = identity.identity("tests.computes:square")
    assert line.startswith("tests.computes:square file=") and "unknown" not in line
