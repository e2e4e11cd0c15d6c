"""A three-node RabbitMQ cluster from the rendered chart loses a node mid-run; the run verifies.

The rendered StatefulSet's pods run as three local RabbitMQ nodes
(tests/chart/brokers.py says what is substituted: local node names, and
classic peer discovery doing what the Kubernetes plugin does). They start at
once, as `podManagementPolicy: Parallel` starts them, and must form one
cluster. Then the rendered seeding Job, test pod and three workers run a sweep
with the rendered TTG_BROKER_URL (every node's address, each pointed at its
local node), and the shared scenario (tests/scenarios.py, also run on Kind by
tests/e2e) SIGKILLs the node serving the most connections at 30%. While it is
down the run must go on and every worker be ready again (reconnected to
another node); restarted on its volume, as the kubelet restarts a crashed
container, the node must rejoin; the run must verify.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import scenarios
from tests.chart.brokers import RabbitMQCluster, rabbitmq_cluster
from tests.chart.conftest import render
from tests.chart.pods import Pod
from tests.chart.wiring import print_logs, ttg_json, ttg_pod
from tests.helpers import eventually
from ttg.errors import BrokerError

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.slow]

RUN = "cluster-1"
#: 150 chunks of 0.3 s on 3 workers: ~15 s of work, so the kill lands mid-run.
PARAMS, CHUNK_SIZE, WORK_MS = 15_000, 100, 300
CHUNKS = PARAMS // CHUNK_SIZE
#: How long a `ttg` call may go unanswered before it counts as a broker error.
CALL_RETRY_S = 30.0


@dataclass
class LocalClusterHarness:
    """``tests.scenarios.ClusterHarness`` on the local cluster; status through the test pod."""

    cluster: RabbitMQCluster
    test_pod: Pod
    killed: list[int] = field(default_factory=list)

    def ttg_json(self, *args: str) -> dict[str, Any]:
        """``ttg ARGS --json`` from the test pod; no answer is a broker error (retried).

        Right after a node rejoins, a command connected to it may be refused
        for a moment (3.10: a stream replica not running there yet), as a call
        in a pod may meet a node that is restarting.
        """
        deadline = time.monotonic() + CALL_RETRY_S
        while True:
            try:
                return ttg_json(self.test_pod, "status", *args)
            except AssertionError as e:
                if time.monotonic() > deadline:
                    raise BrokerError(str(e)) from None
                time.sleep(1)

    def done(self) -> int:
        try:
            return int(self.ttg_json("status", "--run", RUN)["done"])
        except BrokerError:
            return -1

    def kill_worker(self, worker: str, sig: int) -> None:
        raise NotImplementedError("this scenario kills a broker node")

    def restart_broker(self) -> None:
        raise NotImplementedError("this scenario kills one node of the cluster")

    def kill_broker_node(self) -> str:
        per_node = self.cluster.connections()
        busiest = max(per_node, key=lambda i: per_node[i])
        assert per_node[busiest] > 0, per_node
        self.cluster.kill(busiest)
        self.killed.append(busiest)
        return self.cluster.names[busiest]


def test_rabbitmq_cluster_loses_a_node_mid_run_and_the_run_verifies(tmp_path: Path) -> None:
    rendered = render(
        "helm4",
        "--set",
        "backend=rabbitmq",
        "--set",
        "rabbitmq.replicas=3",
        "--set",
        f"run.id={RUN}",
        "--set",
        f"run.params={PARAMS}",
        "--set",
        f"run.chunkSize={CHUNK_SIZE}",
        "--set",
        f"run.workMs={WORK_MS}",
    )
    cluster = rabbitmq_cluster(rendered, tmp_path / "broker")
    pods: list[Pod] = []

    def pod_of(kind: str, name: str, pod_dir: str) -> Pod:
        return ttg_pod(
            rendered, kind, name, addresses=cluster.addresses, workdir=tmp_path / pod_dir
        )

    try:
        cluster.start()
        seed = pod_of("Job", "ttg-seed", "seed")
        seeded = seed.run("seed")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        test_pod = pod_of("Pod", "ttg-test-status", "test")
        checked = test_pod.run("status")
        assert checked.returncode == 0, checked.stdout + checked.stderr

        workers = [pod_of("Deployment", "ttg-worker", f"w{i}") for i in range(3)]
        for pod in workers:
            pods.append(pod)
            pod.start("worker")
        ports = [int(pod.env("worker")["TTG_METRICS_PORT"]) for pod in workers]

        def all_ready() -> bool:
            return all(
                pod.http_probe("worker", "readinessProbe", port) == 200
                for pod, port in zip(workers, ports, strict=True)
            )

        eventually(all_ready, timeout=120, interval=0.5, what="every worker ready")

        harness = LocalClusterHarness(cluster, test_pod)
        lost = scenarios.kill_broker_node_at(harness, RUN, 0.3, timeout=240)
        node, done_before = lost.node, lost.finished_before
        assert 0 < done_before < CHUNKS, lost
        (down,) = harness.killed

        # With the node down: the workers it served reconnect to the others,
        # and the run goes on (its queues and streams keep a majority).
        eventually(all_ready, timeout=120, interval=0.5, what=f"workers ready without {node}")
        for pod in workers:
            assert all(p.poll() is None for p in pod.procs), pod.log("worker")[-3000:]
        eventually(
            lambda: harness.done() >= done_before + 10,
            timeout=180,
            interval=0.5,
            what=f"10 more chunks done while {node} is down",
        )

        # The kubelet restarts the crashed container on its volume: it rejoins.
        cluster.restart(down)
        cluster.wait_joined(down)

        scenarios.wait_complete(harness, RUN, timeout=300)
        report = scenarios.assert_verified(harness, RUN)
        assert report["done_params"] == PARAMS, report
        for pod in workers:
            assert pod.stop(signal.SIGTERM, timeout=60) == [0], pod.log("worker")[-3000:]
    finally:
        for pod in pods:
            pod.stop(signal.SIGKILL)
        cluster.stop()
        print_logs(tmp_path)
