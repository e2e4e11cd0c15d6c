"""Redis backend details the shared conformance suite cannot see from the interface."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import ConsumerFactory
from tests.helpers import eventually
from ttg import compute
from ttg.brokers.redis import GROUP, RedisBroker, RedisConsumer, _key
from ttg.errors import RunNotFound
from ttg.local import RedisServer
from ttg.run import Outcome, RunSpec
from ttg.space import RangeSpace

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[RedisBroker]:
    b = RedisBroker(redis_server.url)
    yield b
    for run in b.runs():
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
    reply = broker.client.xreadgroup(GROUP, name, {_key(run, "tasks"): ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]]


def test_dead_consumers_chunks_go_to_exactly_one_live_consumer(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id)
    ghost_takes(broker, run_id, "ghost", 3)  # never had a heartbeat key: dead
    a, b = consumer(new_consumer, broker, "a"), consumer(new_consumer, broker, "b")
    # Both look at once; the claim is one Lua step, so they cannot split or share.
    got_a = [d for d in a._reclaim(run_id, 10)]
    got_b = [d for d in b._reclaim(run_id, 10)]
    assert sorted(d.chunk for d in got_a + got_b) == [0, 1, 2]
    assert not (got_a and got_b)
    assert all(d.attempt == 2 for d in got_a + got_b)
    assert broker.progress(run_id).redelivered == 3
    names = {c["name"] for c in broker.client.xinfo_consumers(_key(run_id, "tasks"), GROUP)}
    assert "ghost" not in names, "a consumer with nothing pending is forgotten"


def test_live_consumers_chunks_are_never_claimed(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id)
    holder = consumer(new_consumer, broker, "holder")
    held = eventually(lambda: holder.fetch(0.1), what="a delivery")
    other = consumer(new_consumer, broker, "other")
    for _ in range(3):
        assert other._reclaim(run_id, 10) == []
    assert broker.progress(run_id).redelivered == 0
    assert all(holder.complete(d, Outcome.ok(d, "holder", [0] * (d.hi - d.lo))) for d in held)


def test_entries_lost_in_flight_to_ourselves_are_adopted(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id)
    me = consumer(new_consumer, broker, "me", lease=0.5)
    # A read whose reply never arrived (connection cut, client retried): the
    # entries sit in our own pending list, and our heartbeat keeps others away.
    lost = ghost_takes(broker, run_id, "me", 2)

    def adopted() -> list[int]:
        return [d.chunk for d in me.fetch(0.1) if d.handle in lost]

    assert sorted(eventually(adopted, timeout=10, what="lost entries adopted")) == [0, 1]


def test_recording_the_same_delivery_twice_is_not_a_duplicate(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id, params=10)
    c = consumer(new_consumer, broker, "c")
    (d,) = eventually(lambda: c.fetch(0.1), what="a delivery")
    outcome = Outcome.ok(d, "c", [x * x for x in range(10)])
    assert c.complete(d, outcome)
    # The reply was lost and the worker retried: same worker, same attempt.
    assert c.complete(d, outcome)
    p = broker.progress(run_id)
    assert (p.done, p.duplicates) == (1, 0)


def test_acknowledged_entries_are_removed_so_memory_stays_bounded(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id, params=100)
    c = consumer(new_consumer, broker, "c")
    done = 0
    while done < 10:
        for d in c.fetch(0.1):
            c.complete(d, Outcome.ok(d, "c", [0] * 10))
            done += 1
    assert broker.client.xlen(_key(run_id, "tasks")) == 0
    assert run_id not in broker.client.smembers("ttg:runs:live"), (
        "a complete run is no longer polled"
    )


def test_recording_into_a_deleted_run_writes_nothing(
    broker: RedisBroker, new_consumer: ConsumerFactory, run_id: str
) -> None:
    seed(broker, run_id, params=10)
    c = consumer(new_consumer, broker, "c")
    (d,) = eventually(lambda: c.fetch(0.1), what="a delivery")
    broker.delete(run_id)
    with pytest.raises(RunNotFound):
        c.complete(d, Outcome.ok(d, "c", [0] * 10))
    assert broker.client.keys(f"ttg:{{{run_id}}}:*") == []
