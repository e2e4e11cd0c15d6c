"""The Redis backend on a 3-master Redis Cluster, with real ``ttg worker`` processes.

Every key of a run carries the run's hash tag, so a run lives on one master and
each Lua script touches one slot; different runs spread over the masters.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import BackendEnv, backend_env
from tests.fault.conftest import LocalHarness, two_runs_at_once

# The shared fault test, collected here too: it runs unchanged on this module's
# `backend`, the Redis Cluster.
from tests.fault.test_faults import (  # noqa: F401 - collected by pytest
    test_sigkill_worker_holding_chunk_is_redelivered_within_lease,
)
from ttg.brokers.redis.client import RUN_KEYS, key
from ttg.processes.cluster import RedisCluster

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def backend(redis_cluster: RedisCluster) -> Iterator[BackendEnv]:
    """The session's Redis Cluster, given to every command and worker as ``redis+cluster://``."""
    yield from backend_env("redis", redis_cluster)


def run_on_another_master(cluster: RedisCluster, run: str) -> tuple[str, int, int]:
    """A run id derived from ``run`` whose keys live on another master; both masters."""
    first = cluster.master_of(cluster.keyslot(key(run, "tasks")))
    for i in range(100):
        other = f"{run}-{i}"
        master = cluster.master_of(cluster.keyslot(key(other, "tasks")))
        if master != first:
            return other, first, master
    raise AssertionError("no run id on another master in 100 tries")


def test_two_runs_on_different_masters_both_complete_and_verify(
    redis_cluster: RedisCluster, harness: LocalHarness, run_id: str
) -> None:
    other, master_a, master_b = run_on_another_master(redis_cluster, run_id)
    two_runs_at_once(harness, run_id, other)
    # Each run's keys are all in its one slot, on its own master.
    for run, master in ((run_id, master_a), (other, master_b)):
        slot = redis_cluster.keyslot(key(run, "tasks"))
        listed = redis_cluster.redis_cli(master, "cluster", "getkeysinslot", str(slot), "100")
        held = {k for k in listed.split() if k.startswith(f"ttg:{{{run}}}:")}
        expected = {key(run, n) for n in ("spec", "meta", "tasks", "ledger", "stats")}
        assert expected <= held <= {key(run, n) for n in RUN_KEYS}, (run, held)
