"""One conformance suite for every backend, through the Broker/Consumer interface.

Runs unchanged against each backend in ``tests.conftest.CONFORMANCE_BACKENDS``:
the in-memory one, and each real backend as a real server process started by
the fixtures.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.conftest import BackendEnv, ConsumerFactory
from tests.helpers import ALONE, eventually
from tests.injections import inject_task as broker_inject
from ttg import compute
from ttg.broker import Broker, Consumer
from ttg.errors import RunConflict, RunNotFound
from ttg.run import Delivery, Outcome, Recorded, RunSpec, Status
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
def backend(any_backend: BackendEnv) -> BackendEnv:
    return any_backend


@pytest.fixture
def broker(backend: BackendEnv) -> Broker:
    return backend.broker()


def inject_task(backend: BackendEnv, run: str, fields: dict[str, Any]) -> None:
    """Put a raw task message into a run's queue, as a buggy or hostile publisher would."""
    if backend.memory is not None:
        backend.memory.inject(run, fields)
    else:
        broker_inject(backend, run, fields)


def fetch_one(c: Consumer, run: str, timeout: float = 10) -> Delivery:
    def got() -> Delivery | None:
        return next((d for d in c.fetch(0.2, 1) if d.run == run), None)

    return eventually(got, timeout=timeout, interval=0, what=f"a delivery of {run}")


def hands_out_nothing(c: Consumer, run: str, seconds: float) -> None:
    """Fetch for ``seconds``: not one delivery of ``run`` may come."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert [d for d in c.fetch(0.1, 10) if d.run == run] == []


def delivered_twice(c: Consumer, run: str) -> tuple[Delivery, Delivery]:
    """A chunk's first delivery, given up on (as if its worker were presumed dead), and
    the delivery that follows."""
    first = fetch_one(c, run)
    c.begin(first)
    c.abandon(first)
    again = fetch_one(c, run, timeout=15)
    assert again.chunk == first.chunk and again.attempt == first.attempt + 1
    return first, again


def ok(d: Delivery, worker: str, result: list[int] | None = None) -> Outcome:
    result = result if result is not None else [x * x for x in range(d.lo, d.hi)]
    return Outcome(d.chunk, Status.OK, d.hi - d.lo, worker, d.attempt, time.time(), result,
                   round=d.round)  # fmt: skip


def complete(c: Consumer, d: Delivery, outcome: Outcome | None = None) -> Recorded:
    (r,) = c.complete([(d, outcome or ok(d, c.name))])
    return r


def counted(r: Recorded) -> bool:
    return r in (Recorded.COUNTED, Recorded.RECORDED)


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
    p = broker.progress(run_id)
    assert p.queue_depth == 10 and p.state == "running"


def test_unknown_run_raises_run_not_found(broker: Broker) -> None:
    with pytest.raises(RunNotFound):
        broker.spec("no-such-run")
    with pytest.raises(RunNotFound):
        broker.progress("no-such-run")


def test_every_chunk_is_delivered_with_its_spec_and_recorded_once(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    spec = make_spec(run_id, params=95)
    broker.seed(spec)
    c = new_consumer(broker, "c1")
    seen = set()
    for _ in range(spec.total_chunks):
        d = fetch_one(c, run_id)
        assert d.attempt == 1 and d.spec == spec
        assert (d.lo, d.hi) == spec.bounds(d.chunk)
        seen.add(d.chunk)
        assert counted(complete(c, d))
    assert seen == set(range(10))
    report = verify(broker, run_id)
    assert report["ok"] and report["closed_form"] == "match", report
    assert report["done_params"] == 95
    rows = {o.chunk: o for o in broker.ledger(run_id)}
    assert rows[9].params == 5 and rows[9].worker == "c1" and rows[9].attempt == 1


def test_complete_returns_once_the_outcome_is_durable(
    broker: Broker, backend: BackendEnv, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=30))
    c = new_consumer(broker, "c1")
    batch = [fetch_one(c, run_id) for _ in range(3)]
    items = [(d, ok(d, "c1")) for d in batch]
    assert all(counted(r) for r in c.complete(items))
    # Read by another client, at once: nothing is still on its way.
    fresh = backend.broker()
    assert {o.chunk for o in fresh.ledger(run_id)} == {d.chunk for d in batch}
    assert fresh.progress(run_id).done == len(batch)


def test_the_same_record_sent_twice_counts_once(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10))
    c = new_consumer(broker, "c1")
    d = fetch_one(c, run_id)
    outcome = ok(d, "c1")
    assert counted(complete(c, d, outcome))
    # The reply was lost and the worker sent it again: same worker, same attempt.
    assert complete(c, d, outcome) is not Recorded.DUPLICATE
    p = broker.progress(run_id)
    assert (p.done, p.done_params, p.duplicates) == (1, 10, 0)


def test_a_second_result_is_a_visible_duplicate_that_changes_no_total(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10))
    c = new_consumer(broker, "c1", lease=1.0)
    first, again = delivered_twice(c, run_id)
    assert counted(complete(c, again))
    # The first delivery's holder finishes after all (a zombie): a visible duplicate.
    late = complete(c, first, ok(first, "zombie", [0] * 10))
    assert late in (Recorded.DUPLICATE, Recorded.RECORDED), late
    p = broker.progress(run_id)
    assert (p.done, p.done_params, p.duplicates) == (1, 10, 1)
    (only,) = list(broker.ledger(run_id))
    assert only.worker == "c1" and only.attempt == again.attempt
    assert only.result == [x * x for x in range(10)]
    assert verify(broker, run_id)["ok"]


def test_the_same_worker_recording_a_chunk_on_another_delivery_is_a_duplicate(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    # Same worker, another delivery (attempt): not the same record sent again.
    broker.seed(make_spec(run_id, params=10))
    c = new_consumer(broker, "c1", lease=1.0)
    first, again = delivered_twice(c, run_id)
    assert counted(complete(c, again))
    complete(c, first)
    p = broker.progress(run_id)
    assert (p.done, p.duplicates) == (1, 1), p


def test_retry_waits_for_its_delay_and_counts_the_attempt(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10, max_deliveries=3))
    c = new_consumer(broker, "c1")
    d = fetch_one(c, run_id)
    failed_at = time.monotonic()
    c.retry(d, "boom 1", delay=1.5)
    again = fetch_one(c, run_id)
    assert again.chunk == d.chunk and again.attempt == 2
    assert time.monotonic() - failed_at >= 1.4
    p = broker.progress(run_id)
    assert p.failed == 1 and "boom 1" in p.recent_errors, p


def test_outcomes_of_every_status_are_counted_apart(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=30))
    c = new_consumer(broker, "c1")
    a, b, e = (fetch_one(c, run_id) for _ in range(3))
    with_errors = Outcome(
        b.chunk, Status.ERRORS, 10, "c1", 1, time.time(),
        [None, *[x * x for x in range(b.lo + 1, b.hi)]],
        error="parameter 0: ValueError", param_errors=((b.lo, "ValueError: bad"),),
    )  # fmt: skip
    results = c.complete(
        [(a, ok(a, "c1")), (b, with_errors), (e, Outcome.dead(e, "c1", "cannot import"))]
    )
    assert all(counted(r) for r in results)
    p = broker.progress(run_id)
    assert (p.done, p.errors, p.dead, p.param_errors, p.done_params) == (1, 1, 1, 1, 19), p
    assert p.complete and p.state == "complete-with-failures"
    report = verify(broker, run_id)
    assert report["verified"] and not report["ok"], report
    assert verify(broker, run_id, allow_failed=True)["ok"]
    rows = {o.chunk: o for o in broker.ledger(run_id)}
    assert rows[b.chunk].param_errors == ((b.lo, "ValueError: bad"),)
    assert rows[e.chunk].error == "cannot import" and rows[e.chunk].status is Status.DEAD


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
    again = fetch_one(b, run_id, timeout=5)
    assert again.chunk == d.chunk
    assert again.attempt == d.attempt, "a release is not a failed delivery"
    assert counted(complete(b, again))
    assert verify(broker, run_id)["ok"]


def test_a_consumer_that_leaves_holding_a_chunk_has_it_redelivered(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10))
    gone = new_consumer(broker, "gone", lease=1.0)
    d = fetch_one(gone, run_id)
    gone.begin(d)
    live = new_consumer(broker, "live", lease=1.0)
    gone.close()
    again = fetch_one(live, run_id, timeout=10)
    assert again.chunk == d.chunk and again.attempt == 2
    assert counted(complete(live, again))
    report = verify(broker, run_id)
    assert report["ok"] and report["redelivered"] >= 1, report


def test_a_lost_consumer_s_read_ahead_comes_back_uncounted(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    # Issue 17 item 5: a dead worker's death counts against the chunk it had begun,
    # never against what it had fetched ahead and not begun.
    # One chunk per message on RabbitMQ too (a group is marked whole).
    broker.seed(make_spec(run_id, params=30 * ALONE, chunk=ALONE))
    gone = new_consumer(broker, "gone", lease=1.0, prefetch=4)
    held: list[Delivery] = []

    def three() -> bool:
        held.extend(d for d in gone.fetch(0.2, 3 - len(held)) if d.run == run_id)
        return len(held) >= 3

    eventually(three, what="three chunks held")
    begun = held[0]
    gone.begin(begun)
    live = new_consumer(broker, "live", lease=1.0, prefetch=30)
    gone.close()
    back: dict[int, int] = {}

    def all_back() -> bool:
        for d in live.fetch(0.2, 30):
            if d.run == run_id:
                back[d.chunk] = d.attempt
                assert counted(complete(live, d))
        return {d.chunk for d in held} <= set(back)

    eventually(all_back, timeout=20, what="the lost consumer's chunks back")
    assert back[begun.chunk] == begun.attempt + 1, back
    for d in held[1:]:
        assert back[d.chunk] == d.attempt, (d.chunk, back)


def test_abandoned_delivery_comes_back(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10))
    c = new_consumer(broker, "c1", lease=1.0)
    d = fetch_one(c, run_id)
    c.begin(d)
    c.abandon(d)  # as a worker does when the broker would not take it back
    again = fetch_one(c, run_id, timeout=10)
    assert again.chunk == d.chunk and again.attempt == d.attempt + 1
    assert counted(complete(c, again))


def test_malformed_task_messages_are_recorded_and_never_delivered(
    broker: Broker, backend: BackendEnv, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=20))
    inject_task(backend, run_id, {})
    inject_task(backend, run_id, {"c": "not a number", "a": 0})
    inject_task(backend, run_id, {"c": 99, "a": 0})
    c = new_consumer(broker, "c1")
    for _ in range(2):
        assert counted(complete(c, fetch_one(c, run_id)))
    # What is left is unreadable: never handed out, each recorded once.
    assert [d for d in c.fetch(0.5, 10) if d.run == run_id] == []

    def recorded() -> Any:
        p = broker.progress(run_id)
        return p.malformed == 3 and p

    p = eventually(recorded, what="3 malformed messages recorded")
    assert p.complete and any("malformed" in e for e in p.recent_errors), p


def test_paused_run_hands_out_nothing_until_resumed(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=20))
    broker.set_control(run_id, "paused")
    c = new_consumer(broker, "c1", lease=1.0)
    hands_out_nothing(c, run_id, seconds=2)
    assert broker.progress(run_id).state == "paused"
    broker.set_control(run_id, "running")
    assert counted(complete(c, fetch_one(c, run_id)))
    broker.set_control(run_id, "cancelled")
    assert broker.progress(run_id).state == "cancelled"


def test_retry_requeues_failed_chunks_and_keeps_the_good_ones(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=30))
    c = new_consumer(broker, "c1")
    a, b, e = (fetch_one(c, run_id) for _ in range(3))
    bad = Outcome(
        b.chunk, Status.ERRORS, 10, "c1", 1, time.time(), [None] * 10,
        error="parameter: boom", param_errors=tuple((i, "boom") for i in range(b.lo, b.hi)),
    )  # fmt: skip
    c.complete([(a, ok(a, "c1")), (b, bad), (e, Outcome.dead(e, "c1", "lost"))])
    report = broker.retry(run_id, dead=True, errors=True)
    assert (report.dead, report.errors) == (1, 1) and report.round >= 1
    p = broker.progress(run_id)
    assert (p.done, p.errors, p.dead) == (1, 0, 0) and not p.complete, p
    again = {d.chunk: d for d in (fetch_one(c, run_id), fetch_one(c, run_id))}
    assert set(again) == {b.chunk, e.chunk}
    assert all(d.round == report.round and d.attempt == 2 for d in again.values())
    # A result from before the retry, arriving late, is a duplicate.
    late = Delivery(b.spec, b.chunk, 1, again[b.chunk].handle, round=0)
    c.complete([(late, ok(late, "zombie"))])
    for d in again.values():
        assert counted(complete(c, d))
    report2 = verify(broker, run_id)
    assert report2["ok"] and report2["duplicates"] == 1, report2
    rows = {o.chunk: o for o in broker.ledger(run_id)}
    assert rows[b.chunk].worker == "c1" and rows[b.chunk].attempt == 2
    assert rows[a.chunk].attempt == 1


def test_progress_lists_chunks_in_flight_with_their_worker(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=30))
    c = new_consumer(broker, "holder")
    d = fetch_one(c, run_id)

    def listed() -> list[tuple[int, str]]:
        # A consumer may hold more than it handed out (read ahead, a group of chunks)
        # for a moment; what stays listed is the chunk the worker holds.
        return [(f.chunk, f.worker) for f in broker.progress(run_id).in_flight]

    eventually(lambda: listed() == [(d.chunk, "holder")], what="the held chunk listed alone")
    assert eventually(lambda: broker.progress(run_id).workers, what="a live worker") >= 1


def test_runs_are_isolated(broker: Broker, new_consumer: ConsumerFactory, run_id: str) -> None:
    other = f"{run_id}-2"
    broker.seed(make_spec(run_id, params=50))
    broker.seed(make_spec(other, params=20, chunk=5))
    c = new_consumer(broker, "c1")
    got: dict[str, list[int]] = {run_id: [], other: []}

    def work() -> bool:
        batch = [d for d in c.fetch(0.2, 10) if d.run in got]
        for d in batch:
            got[d.run].append(d.chunk)
        assert all(counted(r) for r in c.complete([(d, ok(d, c.name)) for d in batch]))
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
    for _ in range(2):
        complete(c, fetch_one(c, run_id))
    report = verify(broker, run_id)
    assert not report["ok"] and report["missing"] == 1 and report["state"] == "running"


def test_verify_notices_a_wrong_result(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=20))
    c = new_consumer(broker, "c1")
    d = fetch_one(c, run_id)
    complete(c, d)
    d2 = fetch_one(c, run_id)
    complete(c, d2, ok(d2, "c1", [x * x + (x == d2.lo) for x in range(d2.lo, d2.hi)]))
    report = verify(broker, run_id)
    assert report["closed_form"] == "mismatch" and not report["ok"], report


def test_delete_removes_the_run(broker: Broker, run_id: str) -> None:
    broker.seed(make_spec(run_id))
    assert broker.delete(run_id) is True
    assert run_id not in broker.runs()
    with pytest.raises(RunNotFound):
        broker.spec(run_id)
    assert broker.delete(run_id) is False


def test_outcomes_for_a_deleted_run_are_gone_not_errors(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker.seed(make_spec(run_id, params=10))
    c = new_consumer(broker, "c1")
    d = fetch_one(c, run_id)
    broker.delete(run_id)
    assert complete(c, d) is Recorded.GONE


def test_a_consumer_that_joins_while_a_run_is_paused_counts_no_delivery(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    # What a worker that starts, or reconnects, after a pause and a resume sees: the
    # run's history replayed. Nothing in it may count as a delivery of any chunk.
    broker.seed(make_spec(run_id, params=50))
    broker.set_control(run_id, "paused")
    c = new_consumer(broker, "late", lease=1.0)
    hands_out_nothing(c, run_id, seconds=1)
    broker.set_control(run_id, "running")
    got = [fetch_one(c, run_id) for _ in range(5)]
    assert [d.attempt for d in got] == [1] * 5, [(d.chunk, d.attempt) for d in got]


#: A watcher's interval in the wake-up test: far longer than its run takes, even loaded.
WATCH_INTERVAL = 120.0


def test_a_watcher_wakes_when_the_last_outcome_arrives_not_an_interval_later(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    # Sweep.wait (`ttg status --watch`, `run()`) waits between two reads with
    # wait_progress: it must end with the run's last outcome, not run out its interval.
    broker.seed(make_spec(run_id, params=40))
    assert broker.progress(run_id).finished == 0  # the watcher's first read
    c = new_consumer(broker, f"{run_id}-filler")

    def fill() -> None:
        done = 0
        while done < 4:
            for d in c.fetch(0.5, 4):
                assert counted(complete(c, d))
                done += 1

    filler = threading.Thread(target=fill, daemon=True)
    started = time.monotonic()
    filler.start()
    broker.wait_progress(run_id, WATCH_INTERVAL)
    waited = time.monotonic() - started
    filler.join(timeout=60)
    # It ended with the run, long before its interval (a sleep would have run it out).
    assert waited < WATCH_INTERVAL / 2, waited
    p = broker.progress(run_id)
    assert (p.finished, p.done_params) == (4, 40), p


def test_a_run_completed_between_a_read_and_the_wait_ends_the_wait_at_once(
    broker: Broker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    # The watcher read the run unfinished; its last outcome came before the watcher
    # began to wait (Redis: before it subscribed, so the publish went unheard).
    broker.seed(make_spec(run_id, params=20))
    assert broker.progress(run_id).finished == 0
    c = new_consumer(broker, f"{run_id}-filler")
    done = 0
    while done < 2:
        for d in c.fetch(0.5, 2):
            assert counted(complete(c, d))
            done += 1
    started = time.monotonic()
    broker.wait_progress(run_id, WATCH_INTERVAL)
    assert time.monotonic() - started < WATCH_INTERVAL / 2
    assert broker.progress(run_id).finished == 2
