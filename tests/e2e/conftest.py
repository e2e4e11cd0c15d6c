"""The Kubernetes layer of the end-to-end suite: seed, kill, crash, read status.

Everything else (the scenarios and the verification) is tests/scenarios.py,
shared with the local fault suite. The cluster is one made by kind/up.sh (CI:
helm/kind-action, then kind/up.sh), given with pytest-kubernetes' options:

    pytest tests/e2e -m e2e --k8s-provider external --k8s-kubeconfig-override ~/.kube/config

Without a cluster every test here skips with one reason (`make e2e` says how
to make one).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ttg.errors import BrokerError

#: Where kind/up.sh installs the release.
NAMESPACE = os.environ.get("NAMESPACE", "ttg")
RELEASE = os.environ.get("RELEASE", "ttg")
#: The run each test seeds for itself: 240 chunks of 1.5 s on 3 workers is about
#: two minutes, so a kill at 30% lands mid-run with chunks in flight.
RUN_PARAMS, RUN_CHUNK_SIZE, RUN_WORK_MS = 24_000, 100, 1500
#: How long a kubectl/ttg call may keep failing (a pod being replaced, the
#: broker restarting) before the scenario sees it as a broker error.
CALL_RETRY_S = 90.0
#: The broker's pods (one, or a RabbitMQ cluster's nodes).
BROKER_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=broker"
#: How long a crashed broker container may take to be ready again.
BROKER_READY_S = 300.0
#: How long a probe pod keeps trying to reach the broker (NetworkPolicy checks).
PROBE_S = 30


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("k8s_kubeconfig_override") or config.getoption("k8s_kubeconfig"):
        return
    skip = pytest.mark.skip(reason="no Kubernetes cluster: `make kind-up`, then `make e2e`")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@dataclass
class KindHarness:
    """``tests.scenarios.Harness`` on a Kind cluster."""

    kubeconfig: str
    crashes: list[dict[str, Any]] = field(default_factory=list)
    #: (pod, container, restarts before) of a node kill_broker_node crashed.
    pending_restart: tuple[str, str, int] | None = None

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", self.kubeconfig, "-n", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=stdin,
        )

    def pod_json(self, selector: str) -> list[dict[str, Any]]:
        proc = self.kubectl("get", "pods", "-l", selector, "-o", "json")
        items: list[dict[str, Any]] = json.loads(proc.stdout)["items"]
        return items

    @property
    def exec_target(self) -> str:
        """Where `ttg` commands run: the exporter (never killed by a scenario), else a worker.

        A status call on a worker may land on the pod a scenario just killed;
        ``ttg_json`` retries those, the exporter avoids most of them.
        """
        exporter = self.kubectl("get", "deploy", f"{RELEASE}-exporter", check=False)
        return f"deploy/{RELEASE}-{'exporter' if exporter.returncode == 0 else 'worker'}"

    def ttg_json(self, *args: str) -> dict[str, Any]:
        """``ttg ARGS --json`` in a TTG pod; retried while the call itself cannot be made.

        A pod that was just killed (container not running, connection reset), or
        a broker still restarting, are retried for up to CALL_RETRY_S; after that
        the failure is a BrokerError, which the scenario's poll loop also retries
        within its own budget.
        """
        target = self.exec_target
        deadline = time.monotonic() + CALL_RETRY_S
        delay = 0.5
        while True:
            proc = self.kubectl(
                "exec", target, "--", "ttg", *args, "--json", check=False, timeout=120
            )
            try:
                out: dict[str, Any] = json.loads(proc.stdout)
            except ValueError:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"ttg {' '.join(args)} via {target} gave no answer for {CALL_RETRY_S}s: "
                        f"exit {proc.returncode} {proc.stdout[-500:]!r} {proc.stderr[-500:]!r}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            out["_exit"] = proc.returncode
            return out

    def seed(self, run: str) -> dict[str, Any]:
        """Seed a run of our own (idempotent, so a retried call is harmless)."""
        report = self.ttg_json(
            "seed",
            "--run",
            run,
            "--params",
            str(RUN_PARAMS),
            "--chunk-size",
            str(RUN_CHUNK_SIZE),
            "--work-ms",
            str(RUN_WORK_MS),
        )
        assert report["_exit"] == 0 and report["total_params"] == RUN_PARAMS, report
        return report

    def _container_pid(self, pod: dict[str, Any], container: str) -> tuple[str, str]:
        """(node, host pid) of a running container: the process as the node sees it."""
        status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == container)
        container_id = status["containerID"].split("://")[-1]
        node = pod["spec"]["nodeName"]
        pid = subprocess.run(
            [
                "docker",
                "exec",
                node,
                "crictl",
                "inspect",
                "--output",
                "go-template",
                "--template",
                "{{.info.pid}}",
                container_id,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        return node, pid

    def kill_worker(self, worker: str, sig: int) -> None:
        """A true crash: signal the worker process from its node, not a pod delete.

        Inside its container the worker is PID 1, which ignores signals sent from
        within its own PID namespace; from the Kind node (a Docker container) it is
        an ordinary process.
        """
        pod_name = worker.rsplit("-", 2)[0]  # names are <hostname>-<pid>-<random>
        pod = json.loads(self.kubectl("get", "pod", pod_name, "-o", "json").stdout)
        node, pid = self._container_pid(pod, "worker")
        subprocess.run(["docker", "exec", node, "kill", f"-{sig}", pid], check=True, timeout=60)

    def broker_pods(self) -> list[dict[str, Any]]:
        return sorted(self.pod_json(BROKER_SELECTOR), key=lambda p: p["metadata"]["name"])

    def _crash(self, pod: dict[str, Any]) -> tuple[str, str, int]:
        """SIGKILL the broker server in ``pod`` from its node; (pod, container, restarts)."""
        container = pod["spec"]["containers"][0]["name"]
        before = next(
            s["restartCount"] for s in pod["status"]["containerStatuses"] if s["name"] == container
        )
        node, pid = self._container_pid(pod, container)
        subprocess.run(["docker", "exec", node, "kill", "-KILL", pid], check=True, timeout=60)
        self.crashes.append({"pod": pod["metadata"]["name"], "restarts_before": before})
        return pod["metadata"]["name"], container, before

    def wait_broker_ready_again(self, name: str, container: str, before: int) -> None:
        """Until the crashed container of pod ``name`` has restarted and is ready."""

        def ready_again() -> bool:
            # Tolerates a moment with no pod or no status yet (never a bare `kubectl wait`).
            for p in self.pod_json(BROKER_SELECTOR):
                if p["metadata"]["name"] != name:
                    continue
                statuses = p.get("status", {}).get("containerStatuses") or []
                s = next((s for s in statuses if s["name"] == container), None)
                if s and s["restartCount"] > before and s.get("ready"):
                    return True
            return False

        deadline = time.monotonic() + BROKER_READY_S
        while not ready_again():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"broker {name} not ready again {BROKER_READY_S:.0f}s after SIGKILL"
                )
            time.sleep(1)

    def restart_broker(self) -> None:
        """Crash the broker: SIGKILL its server process from the node, then wait for it.

        The kubelet restarts the container in the same pod, on the same volume:
        what it had acknowledged (AOF, quorum queues, streams) must be there.
        A cluster's busiest node stands for the broker.
        """
        pods = self.broker_pods()
        pod = pods[0] if len(pods) == 1 else self._busiest(pods)
        self.wait_broker_ready_again(*self._crash(pod))

    def _busiest(self, pods: list[dict[str, Any]]) -> dict[str, Any]:
        """The RabbitMQ node serving the most client connections (pids name their node)."""
        for pod in pods:
            proc = self.kubectl(
                "exec", pod["metadata"]["name"], "-c", pod["spec"]["containers"][0]["name"],
                "--", "rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid",
                check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                pids = proc.stdout.split()
                return max(
                    pods, key=lambda p: sum(f"<rabbit@{p['metadata']['name']}." in x for x in pids)
                )
        raise AssertionError("no broker node answered rabbitmqctl list_connections")

    def kill_broker_node(self) -> str:
        """``tests.scenarios.ClusterHarness``: SIGKILL the busiest node; the kubelet restarts it."""
        pods = self.broker_pods()
        assert len(pods) > 1, "not a cluster: install with rabbitmq.replicas=3"
        name, container, before = self._crash(self._busiest(pods))
        self.pending_restart = (name, container, before)
        return name

    def broker_address(self) -> tuple[str, int]:
        """host and port of the broker, as TTG's pods are given it (the first of a cluster's)."""
        deploy = json.loads(
            self.kubectl("get", "deploy", f"{RELEASE}-exporter", "-o", "json").stdout
        )
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        (url,) = [e["value"] for e in container["env"] if e["name"] == "TTG_BROKER_URL"]
        host, port = url.split(",")[0].split("//")[1].split("/")[0].rsplit(":", 1)
        return host, int(port)

    def reaches_broker(self, labels: dict[str, str]) -> bool:
        """Whether a pod with ``labels`` (and the worker image) can open a TCP connection
        to the broker's port: what the broker's NetworkPolicy decides."""
        host, port = self.broker_address()
        deploy = json.loads(
            self.kubectl("get", "deploy", f"{RELEASE}-exporter", "-o", "json").stdout
        )
        template = deploy["spec"]["template"]["spec"]
        (exporter,) = template["containers"]
        name = f"e2e-probe-{uuid.uuid4().hex[:6]}"
        # Tries for PROBE_S: a policy agent may not know a pod seconds old yet, and a
        # connection it lets through once is enough; one refused is not.
        probe = (
            "import socket, sys, time\n"
            f"deadline = time.monotonic() + {PROBE_S}\n"
            "while time.monotonic() < deadline:\n"
            "    try:\n"
            f"        socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
            "        sys.exit(0)\n"
            "    except OSError as e:\n"
            "        print(f'refused: {e}', flush=True)\n"
            "        time.sleep(1)\n"
            "sys.exit(1)\n"
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"e2e-probe": "true", **labels}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": template["securityContext"],
                "containers": [
                    {
                        "name": "probe",
                        "image": exporter["image"],
                        "imagePullPolicy": exporter["imagePullPolicy"],
                        "command": ["python", "-c", probe],
                        "securityContext": exporter["securityContext"],
                        "resources": {"limits": {"memory": "64Mi"}},
                    }
                ],
            },
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
        try:
            deadline = time.monotonic() + 180
            while True:
                phase = self.kubectl(
                    "get", "pod", name, "-o", "jsonpath={.status.phase}", check=False
                ).stdout
                if phase in ("Succeeded", "Failed"):
                    return phase == "Succeeded"
                if time.monotonic() > deadline:
                    raise AssertionError(f"probe pod {name} still {phase!r} after 180 s")
                time.sleep(1)
        finally:
            self.kubectl("delete", "pod", name, "--wait=false", check=False)

    def stream_members(self, stream: str) -> list[dict[str, Any]]:
        """`rabbitmq-streams stream_status` of ``stream``: one row per member (node)."""
        pod = self.broker_pods()[0]
        proc = self.kubectl(
            "exec", pod["metadata"]["name"], "-c", pod["spec"]["containers"][0]["name"],
            "--", "rabbitmq-streams", "stream_status", stream, "--formatter", "json",
        )  # fmt: skip
        rows: list[dict[str, Any]] = json.loads(proc.stdout)
        return rows

    def cluster_running_nodes(self) -> set[str]:
        """Nodes the first broker pod sees running in its cluster."""
        pod = self.broker_pods()[0]
        proc = self.kubectl(
            "exec", pod["metadata"]["name"], "-c", pod["spec"]["containers"][0]["name"],
            "--", "rabbitmqctl", "cluster_status", "--formatter", "json",
        )  # fmt: skip
        return set(json.loads(proc.stdout).get("running_nodes", []))


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> KindHarness:
    kubeconfig = request.config.getoption("k8s_kubeconfig_override") or request.config.getoption(
        "k8s_kubeconfig"
    )
    return KindHarness(str(kubeconfig))


@pytest.fixture
def run(harness: KindHarness) -> Iterator[str]:
    """A run of the test's own, seeded inside the test (so it cannot finish before it starts)."""
    run_id = f"e2e-{uuid.uuid4().hex[:8]}"
    harness.seed(run_id)
    yield run_id
    harness.ttg_json("delete", "--run", run_id)
