"""The exporter over the in-memory backend: counters that only grow, an honest ETA, one bad run.

The real brokers, garbage written with their own clients and a real exporter
process are in tests/integration/test_exporter_process.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import eventually
from ttg import compute
from ttg.broker import Consumer
from ttg.brokers.memory import MemoryBroker
from ttg.errors import BrokerConnectionError
from ttg.exporter import Exporter
from ttg.run import Delivery, Outcome, Progress, RunSpec, Status
from ttg.space import RangeSpace


def spec(run: str, chunks: int = 4) -> RunSpec:
    return RunSpec(run, RangeSpace(0, 10 * chunks).to_spec(), 10, compute.DEFAULT_COMPUTE)


def samples(exporter: Exporter) -> dict[tuple[str, str], float]:
    """(sample name, run) -> value of every per-run sample; ("...", "") for the others."""
    text = generate_latest(exporter.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            run = s.labels.get("run", "")
            out[s.name, f"{run}/{s.labels['state']}" if "state" in s.labels else run] = s.value
    return out


def fetch(c: Consumer, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    eventually(lambda: got.extend(c.fetch(0.05, n - len(got))) or len(got) == n, timeout=10)
    return got


def ok(d: Delivery) -> Outcome:
    values = list(range(d.lo, d.hi))
    return Outcome(
        d.chunk, Status.OK, d.hi - d.lo, "w", d.attempt, time.time(), values, round=d.round
    )


def test_a_retry_never_makes_a_counter_go_down() -> None:
    broker = MemoryBroker()
    broker.seed(spec("r1"))
    exporter = Exporter(lambda: broker, "memory")
    c = broker.consumer("w", lease_seconds=30, prefetch=4)
    c.start()
    a, b, d, e = fetch(c, 4)
    bad = Outcome(
        b.chunk, Status.ERRORS, 10, "w", 1, time.time(), [None] * 10, error="boom",
        param_errors=tuple((i, "boom") for i in range(b.lo, b.lo + 3)),
    )  # fmt: skip
    c.complete([(a, ok(a)), (b, bad), (d, Outcome.dead(d, "w", "lost")), (e, ok(e))])
    exporter._read(broker)
    before = samples(exporter)
    assert before[("ttg_run_chunks_finished_total", "r1")] == 4
    assert before[("ttg_run_parameters_finished_total", "r1")] == 27
    # Before, a retry took 2 chunks and 7 parameters back: Prometheus read a reset.
    broker.retry("r1")
    exporter._read(broker)
    during = samples(exporter)
    assert during[("ttg_run_chunks_finished_total", "r1")] == 4
    assert during[("ttg_run_parameters_finished_total", "r1")] == 27
    assert during[("ttg_run_chunks_done", "r1")] == 2  # the gauges say what is true now
    assert before[("ttg_run_chunks_retried_total", "r1")] == 0
    assert during[("ttg_run_chunks_retried_total", "r1")] == 2
    again = fetch(c, 2)
    c.complete([(x, ok(x)) for x in again])
    exporter._read(broker)
    after = samples(exporter)
    assert after[("ttg_run_chunks_finished_total", "r1")] == 6
    assert after[("ttg_run_parameters_finished_total", "r1")] == 47
    assert after[("ttg_run_chunks_done", "r1")] == 4 and after[("ttg_run_eta_seconds", "r1")] == 0


def test_eta_is_unknown_not_huge_once_no_worker_serves_the_run() -> None:
    broker = MemoryBroker()
    broker.seed(spec("r1", chunks=6))
    exporter = Exporter(lambda: broker, "memory")
    c = broker.consumer("w", lease_seconds=30, prefetch=1)
    c.start()
    exporter._read(broker)
    assert ("ttg_run_eta_seconds", "r1") not in samples(exporter)  # no rate yet
    for _ in range(2):
        time.sleep(0.05)
        (d,) = fetch(c, 1)
        c.complete([(d, ok(d))])
        exporter._read(broker)
    eta = samples(exporter)[("ttg_run_eta_seconds", "r1")]
    assert 0 < eta < 10, eta
    # Every worker gone: the old smoothed rate decayed towards 0, the ETA towards
    # 10^13 s. The time left is however long until a worker comes: unknown.
    c.close()
    exporter._read(broker)
    got = samples(exporter)
    assert got[("ttg_run_workers", "r1")] == 0
    assert ("ttg_run_eta_seconds", "r1") not in got
    broker.set_control("r1", "paused")
    c2 = broker.consumer("w2", lease_seconds=30, prefetch=1)
    c2.start()
    exporter._read(broker)
    assert ("ttg_run_eta_seconds", "r1") not in samples(exporter)  # paused: no time left to tell


class GarbageBroker(MemoryBroker):
    """A broker where reading one run fails as garbage in it makes the decoding fail."""

    def __init__(self, failures: dict[str, Exception]) -> None:
        super().__init__()
        self.failures = failures

    def progress(self, run: str) -> Progress:
        if run in self.failures:
            raise self.failures[run]
        return super().progress(run)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("invalid literal for int() with base 10: 'x'"),
        TypeError("RunSpec.__init__() got an unexpected keyword argument 'colour'"),
        RecursionError("maximum recursion depth exceeded"),
        KeyError("s"),
    ],
)
def test_one_runs_garbage_never_stops_the_others(error: Exception) -> None:
    broker = GarbageBroker({})
    for run in ("good", "bad", "never"):
        broker.seed(spec(run))
    exporter = Exporter(lambda: broker, "memory")
    exporter._read(broker)
    broker.failures.update(bad=error, never=error)
    exporter._snapshot.runs.pop("never")  # as if its garbage predates the exporter
    exporter._read(broker)
    got = samples(exporter)
    assert got[("ttg_exporter_broker_up", "")] == 1
    # The good run as usual; the bad one frozen at its last read, and flagged.
    assert got[("ttg_run_queue_depth", "good")] == 4 and got[("ttg_run_problems", "good")] == 0
    assert got[("ttg_run_queue_depth", "bad")] == 4 and got[("ttg_run_problems", "bad")] == 1
    assert got[("ttg_run_info", "never/unreadable")] == 1
    assert got[("ttg_run_problems", "never")] == 1
    assert ("ttg_run_queue_depth", "never") not in got
    queue = exporter.queue_report()
    assert queue["broker_up"] is True and queue["queued"] == 8
    assert queue["runs"]["good"] == {"state": "running", "queued": 4, "workers": 0}
    assert queue["runs"]["bad"]["queued"] == 4 and queue["runs"]["bad"]["problem"]
    assert queue["runs"]["never"]["state"] == "unreadable"
    assert "\n" not in queue["runs"]["never"]["problem"]
    # The run is readable again: the problem goes.
    broker.failures.clear()
    exporter._read(broker)
    assert samples(exporter)[("ttg_run_problems", "bad")] == 0
    assert "problem" not in exporter.queue_report()["runs"]["bad"]


def test_the_broker_going_away_is_the_broker_down_not_a_run_problem() -> None:
    broker = GarbageBroker({})
    broker.seed(spec("good"))
    broker.seed(spec("other"))
    exporter = Exporter(lambda: broker, "memory")
    exporter._read(broker)
    broker.failures["other"] = BrokerConnectionError("redis unreachable: connection refused")
    with pytest.raises(BrokerConnectionError):
        exporter._read(broker)


class BadListing(MemoryBroker):
    """The list of runs holds garbage for a while (a name that is not a string)."""

    def __init__(self) -> None:
        super().__init__()
        self.bad_listings = 3

    def runs(self) -> list[str]:
        if self.bad_listings:
            self.bad_listings -= 1
            raise TypeError("unhashable type: 'list'")
        return super().runs()


def test_garbage_in_the_list_of_runs_never_ends_the_exporter() -> None:
    broker = BadListing()
    broker.seed(spec("good"))
    exporter = Exporter(lambda: broker, "memory", interval=0.01)
    thread = threading.Thread(target=exporter.run, daemon=True)
    thread.start()
    try:
        eventually(lambda: exporter.ready and "good" in exporter._snapshot.runs, timeout=10)
        assert thread.is_alive()
    finally:
        exporter.stop()
        thread.join(10)
