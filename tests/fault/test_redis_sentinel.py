"""Redis with Sentinel on this machine loses its master mid-run; the run loses nothing.

One master, two replicas, three sentinels (what the chart runs with
``redis.replicas=3``), workers and commands given ``redis+sentinel://``. The
master is SIGKILLed at 30%: the sentinels promote a replica and every client
finds it through them.

Replication is asynchronous, so the new master may lack the last writes the
old one acknowledged: a chunk's result and its acknowledgement are one Lua
script, replicated as one unit, so a lost write loses both, and the chunk is
still pending for the worker that computed it. That worker adopts entries
pending for it that it does not hold (consumer ``_adopt``), and computes the
chunk again: nothing is lost, at most some work is done twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests import scenarios
from tests.conftest import BackendEnv
from tests.fault.conftest import LocalHarness, seed
from tests.helpers import eventually
from ttg.brokers.redis.client import key
from ttg.processes import LocalWorkers
from ttg.processes.cluster import RedisSentinels

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.slow]

WORKERS = 3
#: 240 chunks of 60 ms: about 5 s of work for 3 workers, most of it after the kill.
PARAMS, CHUNK = 24_000, 100
#: Chunks the master acknowledges while its replicas are frozen, before it dies.
LOST = 3
#: Sentinels declare the master down after this much silence (the chart's default is 5 s).
DOWN_AFTER_MS = 1000
#: Every node's and sentinel's password (with characters a URL must quote).
PASSWORD = "p@ss:word"  # noqa: S105 - a throwaway test broker's


@pytest.fixture
def sentinels() -> Iterator[RedisSentinels]:
    """Master, 2 replicas, 3 sentinels, with a password, for this test alone: it kills one."""
    s = RedisSentinels(2, 3, password=PASSWORD, down_after_ms=DOWN_AFTER_MS).start()
    yield s
    s.stop()


@pytest.fixture
def backend(sentinels: RedisSentinels) -> BackendEnv:
    # Its runs are not deleted afterwards: the set goes with the test.
    return BackendEnv("redis", sentinels.url, lambda: None)


def node_client(sentinels: RedisSentinels, node: int) -> redis.Redis:
    return redis.Redis(port=sentinels.nodes[node].port, password=PASSWORD, decode_responses=True)


def ledger(sentinels: RedisSentinels, node: int, run: str) -> set[str]:
    """Chunk ids in ``run``'s ledger on ``node``, asked of that node alone."""
    with node_client(sentinels, node) as client:
        return set(client.hkeys(key(run, "ledger")))


def test_losing_the_master_at_30_percent_loses_nothing(
    sentinels: RedisSentinels,
    harness: LocalHarness,
    workers: LocalWorkers,
    run_id: str,
) -> None:
    """The worst case of asynchronous replication: the master acknowledges chunks its
    replicas never receive, then dies. The promoted replica lacks those results; the
    run still completes and verifies.

    To make it happen at will, the replicas are cut off just before the kill (their
    link closed, their ``masterauth`` made wrong so they cannot sync again) and the
    master is let write without them (``min-replicas-to-write 0``: with the chart's 1 it
    would refuse writes no replica is there to receive, which narrows this window to
    what the replicas have not received yet of an open link).
    """
    seed(harness.backend, run_id, "--params", str(PARAMS), "--chunk-size", str(CHUNK),
         "--work-ms", "60")  # fmt: skip
    names = workers.start(WORKERS, TTG_LEASE_SECONDS="2")
    first = sentinels.master()
    replicas = [i for i in range(len(sentinels.nodes)) if i != first]
    acknowledged: set[str] = set()
    replicas_had: dict[int, set[str]] = {}

    def kill_master(_s: dict[str, Any]) -> str:
        with node_client(sentinels, first) as master:
            master.config_set("min-replicas-to-write", 0)
            for i in replicas:
                with node_client(sentinels, i) as replica:
                    replica.config_set("masterauth", "wrong")
            master.client_kill_filter(_type="replica")
            cut = ledger(sentinels, first, run_id)
            eventually(
                lambda: len(ledger(sentinels, first, run_id) - cut) >= LOST,
                timeout=30,
                interval=0.01,
                what="chunks the replicas never saw",
            )
            acknowledged.update(ledger(sentinels, first, run_id))
        sentinels.kill(first)
        for i in replicas:
            replicas_had[i] = ledger(sentinels, i, run_id)
            with node_client(sentinels, i) as replica:
                replica.config_set("masterauth", PASSWORD)
        return f"node {first} (master)"

    record = scenarios.kill_broker_node_at(harness, run_id, 0.3, kill_master)
    promoted = sentinels.master()
    lost = acknowledged - replicas_had[promoted]
    assert len(lost) >= LOST, "the promoted replica had every acknowledged result"
    assert record.finished_before < 0.8 * PARAMS / CHUNK, "the master died too late to matter"
    scenarios.wait_complete(harness, run_id, timeout=180)
    report = scenarios.assert_verified(harness, run_id)
    assert report["closed_form"] == "match", report
    assert promoted != first
    assert sorted(workers.alive()) == sorted(names), "a worker died with the master"
    print(  # noqa: T201 - the figure for the README, in the test's output (-s, or -rP)
        f"\nmaster loss, Redis + 2 replicas + 3 sentinels (down-after {DOWN_AFTER_MS} ms): "
        f"killed {record.node} at {record.finished_before}/{report['total_chunks']} chunks; "
        f"progress again within {record.progress_again_s:.2f} s (status reads take "
        f"{record.status_read_s:.2f} s); {len(lost)} acknowledged results the promoted "
        f"replica lacked, computed again; duplicates absorbed: {report['duplicates']}"
    )
