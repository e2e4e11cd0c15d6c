"""TTG declares nothing on a RabbitMQ cluster still forming; its runs then outlive node 0.

A quorum queue or stream gets a member on each node running in the cluster when
it is declared and keeps that many: declared while the third node was still
joining, a run's queues live on two nodes, and losing node 0 loses their
majority (issue 20, N2). With TTG_RABBITMQ_EXPECT_NODES=3 (what the chart sets
from rabbitmq.replicas), `ttg seed` waits until three nodes run in one cluster,
the run's queues and streams get three members, and a run that loses node 0 at
30% completes; and, the cluster formed once, a command started with node 0
down does not wait for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import scenarios
from tests.conftest import BackendEnv
from tests.fault.conftest import LocalHarness
from tests.helpers import child_env, eventually, ttg_json
from ttg.processes import LocalWorkers
from ttg.processes.cluster import RabbitMQCluster

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.slow]

#: 120 chunks of 100 ms for 3 workers: about 4 s of work, most of it after the kill.
SEED_ARGS = ("--params", "12000", "--chunk-size", "100", "--work-ms", "100")
WAIT = {"TTG_RABBITMQ_EXPECT_NODES": "3"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitMQCluster]:
    """Three nodes; two of them a cluster, the third booted alone and not joined yet."""
    c = RabbitMQCluster(3).start(joined=2)
    yield c
    c.stop()


@pytest.fixture
def backend(cluster: RabbitMQCluster) -> BackendEnv:
    # Its runs are not deleted afterwards: node 0 dies, and the cluster goes with the module.
    return BackendEnv("rabbitmq", cluster.url, lambda: None)


def members(cluster: RabbitMQCluster, via: int, prefix: str) -> dict[str, int]:
    """Queue name -> members, for the queues named ``prefix``…, asked of node ``via``."""
    out = cluster.nodes[via].ctl_run("list_queues", "name", "members", "--formatter", "json")
    return {q["name"]: len(q["members"]) for q in json.loads(out) if q["name"].startswith(prefix)}


def test_a_run_declared_while_a_node_joins_waits_then_outlives_node_0(
    cluster: RabbitMQCluster,
    backend: BackendEnv,
    harness: LocalHarness,
    workers: LocalWorkers,
    run_id: str,
    tmp_path: Path,
) -> None:
    err = tmp_path / "seed.err"
    with err.open("wb") as out:
        seeder = subprocess.Popen(
            [sys.executable, "-m", "ttg", "seed", "--run", run_id, *SEED_ARGS, "--json"],
            env=child_env({**backend.env, **WAIT, "TTG_CONNECT_TIMEOUT_SECONDS": "180"}),
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        eventually(
            lambda: "2 of the 3 nodes expected" in err.read_text() or seeder.poll() is not None,
            timeout=60,
            what="the seeder waiting for the third node",
        )
        assert seeder.poll() is None, f"seeded on a cluster of 2: {err.read_text()}"
        assert members(cluster, 0, "ttg.") == {}, "declared before the cluster was whole"
        cluster.join(2)
        assert seeder.wait(timeout=180) == 0, err.read_text()
    finally:
        if seeder.poll() is None:
            seeder.kill()
            seeder.wait()
    owned = members(cluster, 0, "ttg.")
    assert f"ttg.{run_id}.tasks" in owned and "ttg.runs" in owned, owned
    assert set(owned.values()) == {3}, f"queues and streams not on every node: {owned}"

    workers.start(3, TTG_LEASE_SECONDS="2", **WAIT)

    def kill_node_0(_s: dict[str, Any]) -> str:
        cluster.kill(0)
        return cluster.names[0]

    record = scenarios.kill_broker_node_at(harness, run_id, 0.3, kill_node_0)
    assert record.finished_before < 0.8 * 120, "node 0 died too late to matter"
    scenarios.wait_complete(harness, run_id, timeout=180)
    report = scenarios.assert_verified(harness, run_id)
    assert report["closed_form"] == "match", report
    # Formed once, a cluster with a node down is not waited for: commands and workers
    # started now must work on the two left.
    now = ttg_json("status", "--run", run_id, env={**backend.env, **WAIT})
    assert now["_exit"] == 0 and now["complete"], now
