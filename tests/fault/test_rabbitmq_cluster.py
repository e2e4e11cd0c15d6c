"""A 3-node RabbitMQ cluster on this machine loses one node mid-run; the run loses nothing.

Quorum queues and streams have a member on every node, so two of three keep
every acknowledged message; workers and commands are given all three URLs and
fail over to a surviving node.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import scenarios
from tests.conftest import BackendEnv
from tests.fault.conftest import LocalHarness, seed
from tests.helpers import eventually
from ttg.processes import LocalWorkers
from ttg.processes.cluster import RabbitMQCluster

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.slow]

WORKERS = 3
#: 240 chunks of 100 ms: about 8 s of work for 3 workers, most of it after the kill.
PARAMS, CHUNK = 24_000, 100


@pytest.fixture
def cluster() -> Iterator[RabbitMQCluster]:
    """Three nodes of one cluster, for this test alone: it kills one of them."""
    c = RabbitMQCluster(3).start()
    yield c
    c.stop()


@pytest.fixture
def backend(cluster: RabbitMQCluster) -> BackendEnv:
    # Its runs are not deleted afterwards: a node is dead and the cluster goes with the test.
    return BackendEnv("rabbitmq", cluster.url, lambda: None)


def worker_connections(cluster: RabbitMQCluster, via: int) -> dict[str, set[int]]:
    """Worker name -> the AMQP ports (one per node) it is connected to, asked of node ``via``."""
    out = cluster.nodes[via].ctl_run(
        "list_connections", "port", "client_properties", "--formatter", "json"
    )
    found: dict[str, set[int]] = {}
    for conn in json.loads(out):
        props = {p[0]: p[2] for p in conn["client_properties"]}
        if "connection_name" in props:
            found.setdefault(props["connection_name"], set()).add(int(conn["port"]))
    return found


def reconnect_delay(log: Path, since: float) -> float:
    """Seconds from ``since`` (wall clock) to the worker's first connection after it (its log)."""
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        ts = dt.datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        if entry["msg"] == "connected to rabbitmq" and ts.timestamp() > since:
            return ts.timestamp() - since
    raise AssertionError(f"{log.name}: no connection after the kill")


def tasks_leader(cluster: RabbitMQCluster, run: str) -> str:
    out = cluster.nodes[0].ctl_run("list_queues", "name", "leader", "--quiet", "--no-table-headers")
    return dict(line.split("\t") for line in out.splitlines() if "\t" in line)[f"ttg.{run}.tasks"]


def test_losing_one_node_of_three_at_30_percent_loses_nothing(
    cluster: RabbitMQCluster,
    backend: BackendEnv,
    harness: LocalHarness,
    workers: LocalWorkers,
    run_id: str,
    tmp_path: Path,
) -> None:
    seed(backend, run_id, "--params", str(PARAMS), "--chunk-size", str(CHUNK), "--work-ms", "100")
    # Paused while we find which node to kill (rabbitmqctl takes seconds on a
    # loaded machine): the kill itself must land at 30%, not after the run.
    assert harness.ttg_json("pause", "--run", run_id)["_exit"] == 0
    names = workers.start(WORKERS, TTG_LEASE_SECONDS="2")
    ports = [n.port for n in cluster.nodes]
    before = eventually(
        lambda: (c := worker_connections(cluster, 0)).keys() >= set(names) and c,
        timeout=60,
        what="every worker connected",
    )
    leader = tasks_leader(cluster, run_id)
    # The node most workers are on (the task queue's leader among equals): its
    # workers must fail over, and possibly the queue's leadership too.
    load = [sum(ports[i] in p for p in before.values()) for i in range(len(ports))]
    victim = max(range(len(ports)), key=lambda i: (load[i], cluster.names[i] == leader))
    moved = [w for w, p in before.items() if ports[victim] in p]
    assert moved, "no worker is connected to the node to kill"

    killed_wall: list[float] = []

    def kill_victim(_s: dict[str, Any]) -> str:
        killed_wall.append(time.time())
        cluster.kill(victim)
        return cluster.names[victim]

    assert harness.ttg_json("resume", "--run", run_id)["_exit"] == 0
    record = scenarios.kill_broker_node_at(harness, run_id, 0.3, kill_victim)

    assert record.finished_before < 0.8 * PARAMS / CHUNK, "the node died too late to matter"
    survivors = [i for i in range(len(ports)) if i != victim]

    def reconnected() -> dict[str, set[int]]:
        now = worker_connections(cluster, survivors[0])
        assert now.keys() >= set(names), now
        assert all(p <= {ports[i] for i in survivors} for p in now.values()), now
        return now

    eventually(reconnected, timeout=60, what="every worker on a surviving node")
    reconnected_s = max(reconnect_delay(tmp_path / f"{w}.log", killed_wall[0]) for w in moved)
    scenarios.wait_complete(harness, run_id, timeout=180)
    report = scenarios.assert_verified(harness, run_id)
    assert report["closed_form"] == "match", report
    assert sorted(workers.alive()) == sorted(names), "a worker died with the broker node"
    print(  # noqa: T201 - the figure for the README, in the test's output (-s, or -rP)
        f"\nnode loss, 3-node RabbitMQ cluster: killed {record.node} (leader of the task "
        f"queue: {record.node == leader}; {len(moved)} of {WORKERS} workers on it) at "
        f"{record.finished_before}/{report['total_chunks']} chunks; progress again within "
        f"{record.progress_again_s:.2f} s (status reads take {record.status_read_s:.2f} s); "
        f"its workers connected to a survivor {reconnected_s:.2f} s after (their logs); "
        f"duplicates absorbed: {report['duplicates']}"
    )
