"""Redis backend details the shared conformance suite cannot see from the interface."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import ConsumerFactory
from tests.helpers import eventually
from ttg import compute
from ttg.brokers.redis import RedisBroker, RedisConsumer
from ttg.brokers.redis.client import GROUP, Scripts, key
from ttg.endpoint import TLS
from ttg.processes import RedisServer
from ttg.run import Delivery, Outcome, Recorded, RunSpec, Status
from ttg.space import RangeSpace

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[RedisBroker]:
    b = RedisBroker(redis_server.url, TLS())
    before = set(b.runs())
    yield b
    for run in set(b.runs()) - before:
        b.delete(run)
    b.close()


def consumer(
    new_consumer: ConsumerFactory, broker: RedisBroker, name: str, lease: float = 1.0
) -> RedisConsumer:
    c = new_consumer(broker, name, lease=lease, prefetch=10)
    assert isinstance(c, RedisConsumer)
    return c


def seed(broker: RedisBroker, run: str, params: int = 50) -> RunSpec:
    spec = RunSpec(run, RangeSpace(0, params).to_spec(), 10, compute.DEFAULT_COMPUTE)
    broker.seed(spec)
    return spec


def ghost_takes(broker: RedisBroker, run: str, name: str, count: int) -> list[str]:
    """Deliver entries to consumer ``name`` by hand: a worker that read them, then vanished."""
    reply = broker.client.xreadgroup(GROUP, name, {key(run, "tasks"): ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]]


def ok(d: Delivery, worker: str) -> Outcome:
    return Outcome(
        d.chunk, Status.OK, d.hi - d.lo, worker, d.attempt, time.time(), [0] * (d.hi - d.lo)
    )


def test_dead_consumers_chunks_go_to_exactly_one_live_consumer(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id)
    taken = ghost_takes(broker, run_id, "ghost", 3)  # never held a lease: dead
    # It had begun the first; the others it had only read ahead.
    assert (
        Scripts(broker.client).begin(
            keys=[key(run_id, "tasks"), key(run_id, "begun")], args=[GROUP, taken[0], "ghost"]
        )
        == 1
    )
    a, b = consumer(new_consumer, broker, "a"), consumer(new_consumer, broker, "b")
    for c in (a, b):
        c._rescan()  # serve the run: its lease is written there first
    # Both look at once; the claim is one Lua step, so they cannot split or share.
    got_a = a._reclaim(run_id, 10)
    got_b = b._reclaim(run_id, 10)
    assert sorted(d.chunk for d in got_a + got_b) == [0, 1, 2]
    assert not (got_a and got_b)
    assert {d.chunk: d.attempt for d in got_a + got_b} == {0: 2, 1: 1, 2: 1}
    assert broker.client.hlen(key(run_id, "begun")) == 0, "the claimer has begun nothing yet"
    assert broker.progress(run_id).redelivered == 3
    names = {c["name"] for c in broker.client.xinfo_consumers(key(run_id, "tasks"), GROUP)}
    assert "ghost" not in names, "a consumer with nothing pending is forgotten"
    events = [e for e in broker.events(run_id) if e.kind == "redelivered"]
    assert {e.previous_worker for e in events} == {"ghost"} and len(events) == 3


def test_live_consumers_chunks_are_never_claimed(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id)
    holder = consumer(new_consumer, broker, "holder")
    held = eventually(lambda: holder.fetch(0.1, 5), what="a delivery")
    other = consumer(new_consumer, broker, "other")
    other._rescan()
    for _ in range(3):
        assert other._reclaim(run_id, 10) == []
    assert broker.progress(run_id).redelivered == 0
    assert holder.complete([(d, ok(d, "holder")) for d in held]) == [Recorded.COUNTED] * len(held)


def test_a_consumer_that_could_not_renew_its_lease_claims_nothing(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id)
    ghost_takes(broker, run_id, "ghost", 2)
    c = consumer(new_consumer, broker, "c", lease=1.0)
    c._rescan()
    # Its own renewal just failed (a broker refusing writes): the others' leases
    # may have lapsed for the same reason, so it steals from nobody for a lease.
    c._last_beat_failed = time.monotonic()
    assert c._reclaim(run_id, 10) == []
    # A lease later, with its own renewals healthy again, it takes them.
    eventually(c._may_reclaim, timeout=10, what="a lease after the failed renewal")
    assert sorted(d.chunk for d in c._reclaim(run_id, 10)) == [0, 1]


def test_entries_lost_in_flight_to_ourselves_are_adopted(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id)
    me = consumer(new_consumer, broker, "me", lease=0.5)
    # A read whose reply never arrived (connection cut, client retried): the
    # entries sit in our own pending list, and our lease keeps others away.
    lost = ghost_takes(broker, run_id, "me", 2)

    def adopted() -> list[int]:
        return [d.chunk for d in me.fetch(0.1, 10) if d.handle in lost]

    assert sorted(eventually(adopted, timeout=10, what="lost entries adopted")) == [0, 1]


def test_begun_marks_are_removed_with_their_entries_and_garbage_in_them_counts(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id)
    c = consumer(new_consumer, broker, "c")
    held = eventually(lambda: c.fetch(0.1, 2), what="a delivery")
    for d in held:
        c.begin(d)
    # Written without waiting for a reply: there a moment later.
    eventually(lambda: broker.client.hlen(key(run_id, "begun")) == len(held), what="marks")
    c.complete([(d, ok(d, "c")) for d in held])
    assert broker.client.hlen(key(run_id, "begun")) == 0, "marks outlive their entries"
    # Garbage where the marks live: nothing breaks, and a death counts, as before marks.
    broker.client.set(key(run_id, "begun"), "garbage")
    (mine,) = eventually(lambda: c.fetch(0.1, 1), what="a delivery")
    c.begin(mine)  # refused (not a hash): said in the log, the compute goes on
    assert c.complete([(mine, ok(mine, "c"))]) == [Recorded.COUNTED]
    ghost_takes(broker, run_id, "ghost", 2)
    c._rescan()
    back = c._reclaim(run_id, 10)
    assert sorted(d.attempt for d in back) == [2, 2]
    assert c.complete([(d, ok(d, "c")) for d in back]) == [Recorded.COUNTED] * 2


def test_acknowledged_entries_are_removed_and_a_complete_run_is_no_longer_served(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id, params=100)
    c = consumer(new_consumer, broker, "c")
    done = [0]

    def drained() -> bool:
        batch = c.fetch(0.1, 10)
        c.complete([(d, ok(d, "c")) for d in batch])
        done[0] += len(batch)
        return done[0] == 10

    eventually(drained, timeout=30, interval=0, what="every chunk completed")
    assert broker.client.xlen(key(run_id, "tasks")) == 0
    assert broker.client.hget(key(run_id, "meta"), "completed_at")
    c._next_rescan = 0.0
    c._rescan()
    assert run_id not in c._serving, "a complete run is no longer read"


def test_recording_into_a_deleted_run_writes_nothing(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id, params=10)
    c = consumer(new_consumer, broker, "c")
    (d,) = eventually(lambda: c.fetch(0.1, 1), what="a delivery")
    broker.delete(run_id)
    assert c.complete([(d, ok(d, "c"))]) == [Recorded.GONE]
    assert broker.client.keys(f"ttg:{{{run_id}}}:*") == []


def test_seeders_racing_publish_each_chunk_once(broker: RedisBroker, run_id: str) -> None:
    spec = RunSpec(run_id, RangeSpace(0, 10_000).to_spec(), 1, compute.DEFAULT_COMPUTE)
    broker.seed(spec, on_progress=lambda *_: None)
    # A second seeder that read the cursor before the first one moved it: its
    # batch is refused, not added a second time.
    stale = broker.scripts.seed(keys=[key(run_id, "meta"), key(run_id, "tasks")], args=[0, 2000])
    assert int(stale) == 10_000
    assert broker.client.xlen(key(run_id, "tasks")) == 10_000
