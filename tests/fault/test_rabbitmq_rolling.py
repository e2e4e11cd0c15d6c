"""A rolling restart of a 3-node RabbitMQ cluster mid-run, each node stopped the way the
chart stops it: nothing is lost and the run never stalls long (issue 20, N4).

The StatefulSet's preStop command is taken from the chart as Helm renders it and
run, as a pod's exec would, against each local node in turn (highest ordinal
first, like a StatefulSet's rolling update); then the node stops (SIGTERM)
and starts again on its data, and the next one goes as soon as it listens (the
pods' readiness), as the StatefulSet controller would: waiting until the node's
queue members caught up is the next preStop's job. The longest
stall is the longest gap between two chunks finishing (their `finished_at`)
while the restarts went on.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import scenarios
from tests.chart.conftest import render
from tests.computes import GATE_ENV, GATE_FROM_ENV
from tests.conftest import BackendEnv
from tests.fault.conftest import LocalHarness, seed
from tests.helpers import eventually, ttg
from ttg.processes import LocalWorkers
from ttg.processes.cluster import RabbitMQCluster

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.slow]

#: 1500 chunks of 100 parameters at 1 ms each (``tests.computes:paced_gated``): 3 workers
#: take about 50 s, and the last chunk waits at a gate the test opens once every node
#: has restarted, so the run cannot end before the restarts, however slow they are.
CHUNKS, CHUNK = 1500, 100
#: The longest a run may go without a chunk finishing while its nodes restart one by one.
STALL_BOUND_S = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitMQCluster]:
    c = RabbitMQCluster(3).start()
    yield c
    c.stop()


@pytest.fixture
def backend(cluster: RabbitMQCluster) -> BackendEnv:
    return BackendEnv("rabbitmq", cluster.url, lambda: None)


def rendered_stop() -> tuple[list[str], int]:
    """The chart's preStop command of a RabbitMQ cluster node, and its grace period."""
    r = render("helm4", "--set", "backend=rabbitmq", "--set", "rabbitmq.replicas=3")
    pod = r.get("StatefulSet", "ttg-rabbitmq")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "rabbitmq"]
    command: list[str] = container["lifecycle"]["preStop"]["exec"]["command"]
    return command, int(pod["terminationGracePeriodSeconds"])


def in_cluster(cluster: RabbitMQCluster, i: int) -> bool:
    """Node i runs, sees all three nodes, is not in maintenance mode (serves clients), and
    every TTG queue and stream has its three members online again (what the next node's
    preStop waits for, for quorum queues; a stream replica still starting refuses reads)."""
    out = cluster.nodes[i].ctl_run(
        "eval",
        "{length(rabbit_nodes:all_running()),"
        " rabbit_maintenance:is_being_drained_local_read(node())}.",
    )
    if out.strip() != "{3,false}":
        return False
    queues = json.loads(
        cluster.nodes[i].ctl_run("list_queues", "name", "online", "--formatter", "json")
    )
    return all(len(q["online"]) == 3 for q in queues if q["name"].startswith("ttg."))


def test_a_rolling_restart_with_the_charts_pre_stop_loses_nothing(
    cluster: RabbitMQCluster,
    backend: BackendEnv,
    harness: LocalHarness,
    workers: LocalWorkers,
    run_id: str,
    tmp_path: Path,
) -> None:
    command, grace = rendered_stop()
    assert "drain" in " ".join(command) and "await_online_quorum_plus_one" in " ".join(command)
    gate = tmp_path / "gate"
    last = (CHUNKS - 1) * CHUNK
    seed(
        backend, run_id, "--params", str(CHUNKS * CHUNK), "--chunk-size", str(CHUNK),
        "--compute", "tests.computes:paced_gated",
    )  # fmt: skip
    names = workers.start(
        3, TTG_LEASE_SECONDS="2", **{GATE_ENV: str(gate), GATE_FROM_ENV: str(last)}
    )
    eventually(lambda: harness.ttg_json("status", "--run", run_id)["finished"] > 0, timeout=60)

    stops: list[float] = []
    restarted: list[float] = []  # wall clock, each node back
    began = time.time()
    for i in (2, 1, 0):
        node = cluster.nodes[i]
        started = time.monotonic()
        pre = subprocess.run(
            command, env=node.cli_env(), capture_output=True, text=True, timeout=grace, check=False
        )
        assert pre.returncode == 0, pre.stderr
        stops.append(time.monotonic() - started)
        node.kill(signal.SIGTERM)
        # Ready as Kubernetes sees it (the AMQP port answers): the StatefulSet goes on to
        # the next pod then, whether or not this node's queue members caught up; that is
        # the next preStop's to wait for.
        node.start()
        restarted.append(time.time())
    gate.touch()
    for j in range(3):
        eventually(
            lambda j=j: in_cluster(cluster, j), timeout=180, interval=1, what=f"node {j} back"
        )

    scenarios.wait_complete(harness, run_id, timeout=300)
    report = scenarios.assert_verified(harness, run_id)
    assert sorted(workers.alive()) == sorted(names), "a worker died with a node"
    rows = ttg("results", "--run", run_id, "--chunks", env=backend.env, check=True).stdout
    finished = {
        (r := json.loads(line))["chunk"]: r["finished_at"] for line in rows.splitlines() if line
    }
    assert len(finished) == CHUNKS
    # Stalls count while the run had free work: until the restarts ended, or until every
    # chunk before the gated one was done if that came first (then the run idles).
    end = min(restarted[-1], max(t for c, t in finished.items() if c != CHUNKS - 1))
    times = [began, *sorted(t for t in finished.values() if began <= t <= end), end]
    stall = max(b - a for a, b in itertools.pairwise(times))
    covered = sum(t <= end for t in restarted)
    print(  # noqa: T201 - the figure for the README, in the test's output (-s, or -rP)
        f"\nrolling restart of 3 RabbitMQ nodes mid-run ({restarted[-1] - began:.0f} s; "
        f"{covered} of 3 restarts while chunks flowed): preStop took "
        f"{', '.join(f'{s:.1f}' for s in stops)} s; longest stall {stall:.1f} s; "
        f"duplicates absorbed: {report['duplicates']}"
    )
    assert covered >= 1, "the run's free chunks were done before a node had restarted"
    assert stall < STALL_BOUND_S, f"the run stalled {stall:.1f} s"
