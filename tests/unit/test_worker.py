"""The worker loop on the in-memory backend: every settle path, retries, shutdown.

The in-memory backend passes the same conformance suite as Redis and RabbitMQ
(tests/integration/test_conformance.py), so what these tests show of the
worker holds against the broker contract itself.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from tests import computes
from tests.helpers import eventually
from ttg import compute
from ttg.brokers.memory import MemoryBroker, MemoryConsumer
from ttg.metrics import Metrics, Probes
from ttg.run import Delivery, Outcome, Recorded, RunSpec, Status
from ttg.space import RangeSpace
from ttg.verify import verify
from ttg.worker import ReadAhead, Worker

ALLOW = (*compute.DEFAULT_ALLOW, "tests")


def spec(run: str = "r", params: int = 40, chunk: int = 10, **kw: object) -> RunSpec:
    kw.setdefault("compute", compute.DEFAULT_COMPUTE)
    return RunSpec(run, RangeSpace(0, params).to_spec(), chunk, **kw)  # type: ignore[arg-type]


@dataclass
class Running:
    broker: MemoryBroker
    worker: Worker
    consumer: MemoryConsumer
    thread: threading.Thread
    exit_code: list[int]

    def stop(self, timeout: float = 10) -> int:
        self.worker.request_stop("test")
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        return self.exit_code[0]


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def start(broker: MemoryBroker) -> Iterator[object]:
    started: list[Running] = []

    def make(
        name: str = "w1",
        *,
        grace: float = 5.0,
        lease: float = 1.0,
        cap: int = 8,
        concurrency: int = 1,
        consumer: MemoryConsumer | None = None,
    ) -> Running:
        """A worker named ``name`` on ``broker`` (or on ``consumer``, a consumer of it)."""
        consumer = consumer or broker.consumer(name, lease_seconds=lease, prefetch=cap)
        worker = Worker(
            consumer,
            metrics=Metrics(),
            probes=Probes(ready=lambda: consumer.connected),
            grace_seconds=grace,
            retry_delay=0.01,
            read_ahead_cap=cap,
            compute_allow=ALLOW,
            fetch_timeout=0.05,
            concurrency=concurrency,
        )
        code: list[int] = []
        thread = threading.Thread(target=lambda: code.append(worker.run()), daemon=True)
        thread.start()
        r = Running(broker, worker, consumer, thread, code)
        started.append(r)
        return r

    yield make
    for r in started:
        if r.thread.is_alive():
            r.stop()


def finished(broker: MemoryBroker, run: str = "r") -> bool:
    return broker.progress(run).complete


def outcomes(broker: MemoryBroker, run: str = "r") -> dict[int, Outcome]:
    return {o.chunk: o for o in broker.ledger(run)}


def test_worker_completes_every_chunk_once(broker: MemoryBroker, start) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec())
    w = start()
    eventually(lambda: finished(broker), timeout=10)
    assert w.stop() == 0
    report = verify(broker, "r")
    assert report["ok"] and report["closed_form"] == "match", report
    assert {o.attempt for o in broker.ledger("r")} == {1}


def test_permanent_parameter_error_keeps_the_other_results_without_retry(
    broker: MemoryBroker, start
) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(compute="tests.computes:explode_on_13"))
    start()
    eventually(lambda: finished(broker), timeout=10)
    o = outcomes(broker)[1]
    assert o.status is Status.ERRORS and o.attempt == 1, o
    assert [p[:2] for p in o.param_errors] == [(13, "ValueError: cannot compute parameter 13")]
    assert o.param_errors[0][2].startswith(f"{computes.__file__}:")  # type: ignore[misc]
    assert o.result is not None and o.result[3] is None and o.result[4] == 14 * 14
    p = broker.progress("r")
    assert (p.done, p.errors, p.param_errors, p.dead) == (3, 1, 1, 0)
    assert p.state == "complete-with-failures"


def test_transient_error_is_retried_then_recorded_with_its_errors(
    broker: MemoryBroker, start
) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(params=10, compute="tests.computes:flaky_on_13", max_deliveries=3))
    broker.seed(spec("ok", params=20, compute="tests.computes:flaky_on_13", max_deliveries=3))
    start()
    eventually(lambda: finished(broker) and finished(broker, "ok"), timeout=10)
    # Chunk 1 of run r holds 13: it failed twice, then kept its results on the last delivery.
    assert {c: o.status for c, o in outcomes(broker, "ok").items()} == {
        0: Status.OK,
        1: Status.ERRORS,
    }
    o = outcomes(broker, "ok")[1]
    assert o.attempt == 3 and o.param_errors[0][0] == 13
    assert broker.progress("ok").failed == 3


def test_unserialisable_result_is_an_error_of_that_parameter(broker: MemoryBroker, start) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(params=20, compute="tests.computes:set_on_13"))
    start()
    eventually(lambda: finished(broker), timeout=10)
    o = outcomes(broker)[1]
    assert o.status is Status.ERRORS and o.attempt == 1
    assert o.param_errors[0][0] == 13 and "not JSON-serialisable" in o.param_errors[0][1]


@pytest.mark.parametrize(
    ("compute_name", "reason"),
    [
        ("os:system", "is not allowed"),
        ("tests.no_such_module:f", "cannot import"),
        ("tests.computes:no_such_function", "has no function"),
    ],
)
def test_a_compute_that_cannot_run_is_declined_never_dead(
    broker: MemoryBroker, start, compute_name: str, reason: str
) -> None:  # type: ignore[no-untyped-def]
    """A worker that cannot run a compute gives its chunks back uncounted, saying why."""
    broker.seed(spec(params=20, compute=compute_name))
    start()

    def declined() -> list[str]:
        return [
            e.detail
            for e in broker._runs["r"].events
            if e.kind == "released" and e.detail and reason in e.detail
        ]

    eventually(declined, timeout=10, what="a chunk declined with the reason")
    assert "cannot run compute" in declined()[0]
    assert outcomes(broker) == {}, "nothing recorded: not dead, not computed"
    assert all(fields["a"] == 0 for _, fields in broker._runs["r"].queue), "never counted"


def test_chunk_delivered_past_max_deliveries_is_dead_without_running(
    broker: MemoryBroker, start
) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(params=10, max_deliveries=2))
    # Replace its task by one delivered twice already (its holders died each time).
    broker._runs["r"].queue.clear()
    broker.inject("r", {"c": 0, "a": 2, "g": 0})
    start()
    eventually(lambda: finished(broker), timeout=10)
    (o,) = outcomes(broker).values()
    assert o.status is Status.DEAD and o.attempt == 3 and "lost each time" in (o.error or "")


def test_malformed_message_is_recorded_and_never_stops_the_worker(
    broker: MemoryBroker, start
) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec())
    broker.inject("r", {"x": "garbage"})
    broker.inject("r", {"c": "999", "a": "0"})
    w = start()
    eventually(lambda: finished(broker), timeout=10)
    p = broker.progress("r")
    assert p.malformed == 2 and any("malformed" in e for e in p.recent_errors), p
    assert w.thread.is_alive()
    assert verify(broker, "r")["ok"]


def test_refused_writes_delay_outcomes_but_lose_none(broker: MemoryBroker, start) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(params=200, chunk=5))
    start("w1")
    start("w2")
    eventually(lambda: broker.progress("r").done >= 5, timeout=10)
    broker.refuse_writes(1.5)
    eventually(lambda: finished(broker), timeout=30)
    report = verify(broker, "r")
    assert report["ok"], report
    assert report["dead"] == 0


def test_run_deleted_mid_chunk_is_forgotten(broker: MemoryBroker, start) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(params=10, work_ms=500))
    w = start()
    eventually(lambda: broker.progress("r").in_flight, timeout=10)
    broker.delete("r")
    broker.seed(spec("next", params=10))
    eventually(lambda: finished(broker, "next"), timeout=10)
    assert w.thread.is_alive()


def test_stop_within_grace_records_the_chunk_in_hand(broker: MemoryBroker, start) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(params=10, work_ms=300))
    w = start(grace=5)
    eventually(lambda: broker.progress("r").in_flight, timeout=10)
    assert w.stop() == 0
    (o,) = outcomes(broker).values()
    assert o.status is Status.OK and o.attempt == 1


def test_stop_past_grace_gives_the_chunk_back_whole(broker: MemoryBroker, start) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(params=10, work_ms=3000))
    w = start(grace=0.2)
    eventually(lambda: broker.progress("r").in_flight, timeout=10)
    w.worker.request_stop("test")
    w.thread.join(10)
    # The compute thread still runs (it cannot be interrupted); the chunk is back in the queue.
    p = broker.progress("r")
    assert p.done == 0 and p.queue_depth == 1 and not p.in_flight, p
    (event,) = [e for e in broker.events("r") if e.kind == "released"]
    assert event.chunk == 0
    # Given back, not failed: the next delivery is still the first attempt... plus one.
    other = start("w2")
    eventually(lambda: finished(broker), timeout=10)
    assert outcomes(broker)[0].attempt == 1
    other.stop()


def test_frozen_worker_s_chunks_go_to_a_live_one_and_its_late_result_is_a_duplicate(
    broker: MemoryBroker, start
) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(params=10, work_ms=1500))
    frozen = start("frozen", lease=0.5)
    eventually(lambda: broker.progress("r").in_flight, timeout=10)
    frozen.consumer.freeze()
    start("live", lease=0.5)
    eventually(lambda: broker.progress("r").duplicates == 1, timeout=15)
    # Both computed it; whichever recorded first counts, the other is a visible duplicate.
    (o,) = outcomes(broker).values()
    assert (o.worker, o.attempt) in {("frozen", 1), ("live", 2)}, o
    report = verify(broker, "r")
    assert report["ok"] and report["duplicates"] == 1, report


def test_read_ahead_grows_for_short_chunks_and_stays_at_one_for_long() -> None:
    ra = ReadAhead(cap=64, budget_s=1.0)
    assert ra.limit == 1
    for _ in range(20):
        ra.observe(0.0005)
    assert ra.limit == 64
    ra = ReadAhead(cap=64, budget_s=1.0)
    for _ in range(5):
        ra.observe(2.0)
    assert ra.limit == 1
    ra = ReadAhead(cap=64, budget_s=1.0)
    for _ in range(30):
        ra.observe(0.1)
    assert 8 <= ra.limit <= 11


def test_read_ahead_of_a_stopping_worker_goes_back_unstarted(broker: MemoryBroker, start) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec(params=400, chunk=1, work_ms=20))
    w = start(cap=50)
    eventually(lambda: broker.progress("r").done >= 30, timeout=20)
    assert w.stop() == 0
    p = broker.progress("r")
    assert not p.in_flight and p.done + p.queue_depth == 400, p
    assert all(o.attempt == 1 for o in broker.ledger("r"))


def test_worker_waits_for_the_broker_then_starts(broker: MemoryBroker, start) -> None:  # type: ignore[no-untyped-def]
    broker.seed(spec())
    broker.refuse_writes(0.8)
    began = time.monotonic()
    start()
    eventually(lambda: finished(broker), timeout=15)
    assert time.monotonic() - began >= 0.7


def test_a_long_chunk_holds_up_no_other(
    broker: MemoryBroker, start, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # One compute process stays on chunk 0 until the test opens its gate; the other
    # computes the rest meanwhile: the worker fetches on while a chunk is out, and
    # chunks wait for whichever compute process is free, not behind the long one.
    gate = tmp_path / "gate"
    monkeypatch.setenv(computes.GATE_ENV, str(gate))
    broker.seed(spec(params=60, chunk=1, compute="tests.computes:gated_zero"))
    w = start(concurrency=2)
    eventually(lambda: broker.progress("r").done == 59, timeout=60, what="all but chunk 0")
    assert 0 not in outcomes(broker)
    gate.touch()
    eventually(lambda: finished(broker), timeout=30)
    assert w.stop() == 0
    assert verify(broker, "r")["ok"]


def test_two_compute_processes_compute_at_once(
    broker: MemoryBroker, start, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TTG_TEST_RENDEZVOUS", str(tmp_path))
    broker.seed(spec(params=2, chunk=1, compute="tests.computes:rendezvous"))
    start(lease=5, concurrency=2)
    eventually(lambda: finished(broker), timeout=60)
    # Each parameter met the other one computing in another process.
    assert [o.result for _, o in sorted(outcomes(broker).items())] == [[1], [1]]
    assert len({name.split("-")[1] for name in os.listdir(tmp_path)}) == 2


class _SlowToRecord(MemoryConsumer):
    """A consumer whose broker is slow to record outcomes (the worker's settle lags its
    compute, as under load); at each begin it notes the chunks it had begun and not settled."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker, "w1", lease_seconds=5)
        self.unsettled_at_begin: list[list[int]] = []

    def begin(self, delivery: Delivery) -> None:
        with self.broker._lock:
            held = self.broker._runs[delivery.run].held.values()
            begun = [int(h.fields["c"]) for h in held if h.consumer == self.name and h.begun]
        self.unsettled_at_begin.append(begun)
        super().begin(delivery)

    def complete(self, items: Sequence[tuple[Delivery, Outcome]]) -> list[Recorded]:
        time.sleep(0.1)
        return super().complete(items)


def test_a_chunk_computed_alone_is_settled_before_the_next_begins(
    broker: MemoryBroker, start
) -> None:  # type: ignore[no-untyped-def]
    # Chunks of a run allowing one delivery are computed alone (as redeliveries are): were
    # the next begun while one's outcome waited to be recorded, a death on the next would
    # count the finished one too, for its neighbour's sake (invariant 6).
    broker.seed(spec(params=20, chunk=1, max_deliveries=1))
    consumer = _SlowToRecord(broker)
    start(consumer=consumer)
    eventually(lambda: finished(broker), timeout=60)
    assert consumer.unsettled_at_begin == [[]] * 20
    assert verify(broker, "r")["ok"]
