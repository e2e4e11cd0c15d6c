"""One conformance suite for every backend, through the Broker/Consumer interface.

Runs unchanged against each backend in ``tests.conftest.BACKENDS``, each a real
server process started by the fixtures.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import BackendEnv, ConsumerFactory
from tests.helpers import eventually
from ttg import compute
from ttg.broker import Broker, Consumer
from ttg.errors import RunConflict, RunNotFound
from ttg.run import Delivery, Outcome, RunSpec
from ttg.space import RangeSpace
from ttg.verify import verify

pytestmark = pytest.mark.integration


def make_spec(run: str, params: int = 100, chunk: int = 10, **kw: object) -> RunSpec:
    return RunSpec(
        run=run,
        space=RangeSpace(0, params).to_spec(),
        chunk_size=chunk,
        compute=compute.DEFAULT_COMPUTE,
        **kw,
    )  # type: ignore[arg-type]


@pytest.fixture
def broker(backend: BackendEnv) -> Broker:
    return backend.broker()


def fetch_one(c: Consumer, run: str, timeout: float = 10) -> Delivery:
    def got() -> Delivery | None:
        return next((d for d in c.fetch(0.2) if d.run == run), None)

    return eventually(got, timeout=timeout, interval=0, what=f"a delivery of {run}")


def result_of(d: Delivery) -> list[int]:
    return [x * x for x in range(d.lo, d.hi)]


def drain(c: Consumer, run: str, total: int) -> None:
    for _ in range(total):
        d = fetch_one(c, run)
        assert c.complete(d, Outcome.ok(d, c.name, result_of(d)))


def test_seed_is_idempotent_and_rejects_a_changed_spec(broker: Broker, run_id: str) -> None:
    spec = make_spec(run_id, params=95)
    first = broker.seed(spec)
    again = broker.seed(spec)
    assert (first.total_chunks, first.added, first.seeded_chunks) == (10, 10, 10)
    assert again.added == 0 and again.already_seeded
    assert broker.spec(run_id) == spec
    assert run_id in broker.runs()
    with pytest.raises(RunConflict):
        broker.seed(make_spec(run_id, params=96))
    assert broker.progress(run_id).queue_depth == 10


def test_unknown_run_raises_run_not_found(broker: Broker) -> None:
    with pytest.raises(RunNotFound):
        broker.spec("no-such-run")


def test_every_chunk_is_delivered_and_recorded_once(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    spec = make_spec(run_id, params=95)
    broker.seed(spec)
    c = new_consumer(broker, "c1")
    seen = set()
    for _ in range(spec.total_chunks):
        d = fetch_one(c, run_id)
        assert d.attempt == 1
        assert (d.lo, d.hi) == spec.bounds(d.chunk)
        seen.add(d.chunk)
        assert c.complete(d, Outcome.ok(d, c.name, result_of(d))) is True
    assert seen == set(range(10))
    report = verify(broker, run_id)
    assert report["ok"] and report["closed_form"] == "match", report
    assert report["done_params"] == 95
    rows = {o.chunk: o for o in broker.ledger(run_id)}
    assert rows[9].params == 5 and rows[9].worker == "c1" and rows[9].attempt == 1


def test_a_second_result_is_a_visible_duplicate_that_changes_no_total(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10))
    c = new_consumer(broker, "c1")
    d = fetch_one(c, run_id)
    assert c.complete(d, Outcome.ok(d, "c1", result_of(d)))
    # A zombie worker that was presumed dead finishes the same chunk later.
    zombie = Delivery(d.run, d.chunk, d.lo, d.hi, d.attempt + 1, d.handle)
    c.complete(zombie, Outcome.ok(zombie, "zombie", [0] * 10))
    p = broker.progress(run_id)
    assert (p.done, p.done_params, p.duplicates) == (1, 10, 1)
    (only,) = list(broker.ledger(run_id))
    assert only.worker == "c1" and only.result == result_of(d)
    assert verify(broker, run_id)["ok"]


def test_failure_retries_with_backoff_then_dead_letters(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10, max_deliveries=3))
    c = new_consumer(broker, "c1")
    attempts = []
    for verdict in ("retry", "retry", "dead"):
        d = fetch_one(c, run_id)
        attempts.append(d.attempt)
        failed_at = time.monotonic()
        assert c.fail(d, f"boom {d.attempt}", max_deliveries=3, delay=0.3) == verdict
    assert attempts == [1, 2, 3]
    assert time.monotonic() - failed_at < 5
    p = broker.progress(run_id)
    assert (p.dead, p.failed, p.done, p.complete) == (1, 3, 0, True)
    (dead,) = list(broker.ledger(run_id))
    assert dead.status == "dead" and dead.error == "boom 3" and dead.attempt == 3
    report = verify(broker, run_id)
    assert report["ok"] and report["state"] == "complete-with-dead"


def test_retry_waits_for_its_delay(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10))
    c = new_consumer(broker, "c1")
    d = fetch_one(c, run_id)
    failed_at = time.monotonic()
    c.fail(d, "boom", max_deliveries=5, delay=1.5)
    again = fetch_one(c, run_id)
    assert again.chunk == d.chunk and again.attempt == 2
    assert time.monotonic() - failed_at >= 1.4


def test_released_chunk_goes_to_another_consumer_at_once(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10))
    a = new_consumer(broker, "a")
    d = fetch_one(a, run_id)
    # Joins once the chunk is taken: a push broker would otherwise pick either.
    b = new_consumer(broker, "b")
    a.stop_fetching()  # as a worker does when it shuts down
    a.release(d)
    again = fetch_one(b, run_id, timeout=2)
    assert again.chunk == d.chunk
    assert again.attempt == d.attempt, "a release is not a failed delivery"
    assert b.complete(again, Outcome.ok(again, "b", result_of(again)))
    assert verify(broker, run_id)["ok"]


def test_progress_lists_chunks_in_flight_with_their_worker(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=30))
    c = new_consumer(broker, "holder")
    d = fetch_one(c, run_id)
    flights = eventually(lambda: broker.progress(run_id).in_flight, what="in_flight listed")
    assert [(f.chunk, f.worker) for f in flights] == [(d.chunk, "holder")]


def test_runs_are_isolated(broker: Broker, new_consumer: ConsumerFactory, run_id: str) -> None:
    other = f"{run_id}-2"
    broker.seed(make_spec(run_id, params=50))
    broker.seed(make_spec(other, params=20, chunk=5))
    c = new_consumer(broker, "c1")
    got: dict[str, list[int]] = {run_id: [], other: []}

    def work() -> bool:
        for d in c.fetch(0.2):
            got[d.run].append(d.chunk)
            assert c.complete(d, Outcome.ok(d, c.name, result_of(d)))
        return len(got[run_id]) + len(got[other]) == 9

    eventually(work, interval=0, what="both runs drained")
    assert sorted(got[run_id]) == list(range(5)) and sorted(got[other]) == list(range(4))
    for run, params in ((run_id, 50), (other, 20)):
        report = verify(broker, run)
        assert report["ok"] and report["done_params"] == params, report


def test_verify_reports_missing_chunks(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=30))
    c = new_consumer(broker, "c1")
    drain(c, run_id, 2)
    report = verify(broker, run_id)
    assert not report["ok"] and report["missing"] == 1 and report["state"] == "incomplete"


def test_delete_removes_the_run(broker: Broker, run_id: str) -> None:
    broker.seed(make_spec(run_id))
    assert broker.delete(run_id) is True
    assert run_id not in broker.runs()
    with pytest.raises(RunNotFound):
        broker.spec(run_id)
    assert broker.delete(run_id) is False
