"""The rendered broker pods, started for real on free ports (see tests/chart/pods.py).

Only what a pod has and this machine cannot is substituted: the Service's
listener becomes 127.0.0.1 and a free port, mount paths become directories of
the test, the node name becomes one nobody else on the machine uses, and the
official images' own environment is given as the images set it.

A RabbitMQ cluster is the rendered StatefulSet's pods, one node each. Two more
things only a cluster has are substituted there: node names in cluster DNS
(rabbit@<pod>.<headless>.<namespace>) become short local names, and
Kubernetes peer discovery becomes what the Kubernetes plugin of RabbitMQ 4.1+
does, in classic peer discovery's terms: join the -0 pod's node, retrying
until it answers. (This machine's RabbitMQ is 3.10, whose Kubernetes plugin
would ask an API server instead.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chart.conftest import Rendered
from tests.chart.pods import Pod
from tests.helpers import eventually

#: Where Debian's package keeps the real rabbitmq scripts (the wrapper in
#: /usr/sbin would switch to the rabbitmq user, who cannot write our directories).
RABBITMQ_BIN = next(
    (
        d
        for d in ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")
        if Path(d, "rabbitmq-server").exists()
    ),
    None,
)
#: What the official rabbitmq image sets (ENV lines) and its start scripts default
#: to (SYS_PREFIX empty, as in Debian's package), given as env so that the pod
#: paths in them are rewritten like every other pod path.
RABBITMQ_IMAGE_ENV = {
    "HOME": "/var/lib/rabbitmq",
    "RABBITMQ_MNESIA_BASE": "/var/lib/rabbitmq/mnesia",
    "RABBITMQ_CONFIG_FILE": "/etc/rabbitmq/rabbitmq.conf",
    "RABBITMQ_ADVANCED_CONFIG_FILE": "/etc/rabbitmq/advanced.config",
    "RABBITMQ_CONF_ENV_FILE": "/etc/rabbitmq/rabbitmq-env.conf",
    "RABBITMQ_LOG_BASE": "/var/log/rabbitmq",
    "LANG": "C.UTF-8",
}


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ContainerExited(Exception):
    """A container that should keep running exited (not retried by ``eventually``)."""


class BrokerPod:
    """The rendered broker StatefulSet's pod, started locally; ``port`` is its AMQP/Redis port
    (and ``management_port`` RabbitMQ's management UI's, when the chart enables it)."""

    def __init__(self, pod: Pod, container: str, port: int, management_port: int = 0) -> None:
        self.pod = pod
        self.container = container
        self.port = port
        self.management_port = management_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> BrokerPod:
        self.pod.run_init_containers()
        self.proc = self.pod.start(self.container)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                log = self.pod.log(self.container)[-3000:]
                raise ContainerExited(f"{self.container} exited {proc.returncode}:\n{log}")
            return listening(self.port)

        eventually(up, timeout=timeout, interval=0.2, what=f"{self.container} listening")
        return self

    def stop(self) -> None:
        self.pod.stop()


def statefulset_pod_spec(rendered: Rendered, name: str) -> dict[str, object]:
    return rendered.get("StatefulSet", name)["spec"]["template"]["spec"]


def rabbitmq_pod(
    rendered: Rendered,
    workdir: Path,
    data: Path,
    *,
    sts: str = "ttg-rabbitmq",
    cluster_secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> BrokerPod:
    """The rendered RabbitMQ pod on a free port, with ``data`` as its PersistentVolumeClaim.

    Its AMQP listener (plain or TLS) and its management UI's (plain or HTTPS)
    move to free ports; ``cluster_secrets`` are Secrets the chart does not
    render (an existingSecret, cert-manager's).
    """
    if RABBITMQ_BIN is None:
        pytest.fail("rabbitmq-server not found: run `make tools` (installs it from Debian)")
    port, prometheus, dist, management = free_port(), free_port(), free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    pod = Pod(
        rendered,
        statefulset_pod_spec(rendered, sts),
        workdir,
        name=f"{sts}-0",
        cluster_secrets=cluster_secrets,
        claims={"data": data},
        image_env=RABBITMQ_IMAGE_ENV,
        image_dirs={"/var/log/rabbitmq": workdir / "image-log"},
        replace=[
            ("listeners.tcp.default = 5672", f"listeners.tcp.default = 127.0.0.1:{port}"),
            ("listeners.ssl.default = 5671", f"listeners.ssl.default = 127.0.0.1:{port}"),
            ("management.tcp.port = 15672", f"management.tcp.port = {management}"),
            ("management.ssl.port = 15671", f"management.ssl.port = {management}"),
            ("prometheus.tcp.port = 15692", f"prometheus.tcp.port = {prometheus}"),
            # The machine's own RabbitMQ may be rabbit@localhost: a name of our own.
            ("rabbit@localhost", f"ttg-{uuid.uuid4().hex[:8]}@localhost"),
        ],
        # In a pod the distribution port is the pod's own; here it must be free.
        env_overrides={"RABBITMQ_DIST_PORT": str(dist)},
        path_prefix=[RABBITMQ_BIN],
    )
    return BrokerPod(pod, "rabbitmq", port, management)


def redis_pod(
    rendered: Rendered,
    workdir: Path,
    data: Path,
    *,
    sts: str = "ttg-redis",
    cluster_secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> BrokerPod:
    """The rendered Redis pod on a free port (its config's and its probes' 6379), with
    ``data`` as its PersistentVolumeClaim; ``cluster_secrets`` as for rabbitmq_pod."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server not found: run `make tools` (installs it from Debian)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    pod = Pod(
        rendered,
        statefulset_pod_spec(rendered, sts),
        workdir,
        name=f"{sts}-0",
        cluster_secrets=cluster_secrets,
        claims={"data": data},
        replace=[("bind * -::*", "bind 127.0.0.1"), ("6379", str(port))],
    )
    return BrokerPod(pod, "redis", port)


#: What the rendered rabbitmq.conf says for Kubernetes peer discovery.
K8S_PEER_DISCOVERY = "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s"


def k8s_plugin_as_classic_config(ordinal: int, seed: str) -> str:
    """What RabbitMQ 4.1+'s Kubernetes peer discovery does, in 3.10's classic config terms.

    The -0 pod discovers only itself: it forms the cluster, with no lock and no
    wait (here: no peer discovery at all, which starts a blank node alone). Every
    other pod discovers the -0 pod and tries to join it until it answers: 3.10
    gives up after 10 tries of 0.5 s and boots alone, so 10 minutes of tries.
    """
    if ordinal == 0:
        return "# peer discovery: the seed node forms the cluster"
    return (
        "cluster_formation.peer_discovery_backend = classic_config\n"
        f"cluster_formation.classic_config.nodes.1 = {seed}\n"
        "cluster_formation.discovery_retry_limit = 1200"
    )


@dataclass
class RabbitMQCluster:
    """The rendered RabbitMQ StatefulSet's pods, one local node each; ``nodes[i]`` is pod i."""

    nodes: list[BrokerPod]
    #: Local node name of each pod, in order.
    names: list[str]
    #: Service host:port in TTG_BROKER_URL -> local 127.0.0.1:port, per node.
    addresses: dict[str, str] = field(default_factory=dict)

    def ctl(self, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node i> ARGS`` with pod i's environment (its cookie)."""
        pod = self.nodes[i].pod
        return subprocess.run(
            ["rabbitmqctl", "-n", self.names[i], *args],
            env=pod.env("rabbitmq"),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def running_nodes(self, i: int) -> set[str]:
        """The nodes node i sees running in its cluster (empty if it does not answer)."""
        proc = self.ctl(i, "cluster_status", "--formatter", "json")
        if proc.returncode != 0:
            return set()
        return set(json.loads(proc.stdout).get("running_nodes", []))

    def start(self, timeout: float = 180) -> RabbitMQCluster:
        """Start the seed node, then every other node at once; wait for the whole cluster.

        On Kubernetes all pods start at once (podManagementPolicy: Parallel) and
        RabbitMQ 4.x's peer discovery makes a joining node wait until the seed
        is ready. 3.10 does not wait: it joins a seed still creating its schema,
        and crashes. So here the seed is up before the others start.
        """
        self.nodes[0].start(timeout=timeout)
        for node in self.nodes[1:]:
            node.pod.run_init_containers()
            node.proc = node.pod.start(node.container)
        for i in range(len(self.nodes)):
            self.wait_joined(i, timeout=timeout)
        return self

    def wait_joined(self, i: int, timeout: float = 180) -> None:
        """Until node i listens and sees every node of the cluster running."""
        node = self.nodes[i]

        def joined() -> bool:
            if node.proc is not None and node.proc.poll() is not None:
                log = node.pod.log(node.container)[-3000:]
                raise ContainerExited(f"node {i} exited {node.proc.returncode}:\n{log}")
            return listening(node.port) and self.running_nodes(i) == set(self.names)

        eventually(joined, timeout=timeout, interval=1, what=f"node {i} in a full cluster")

    def kill(self, i: int) -> None:
        """SIGKILL node i's processes (the server, as a crash; the pod's volume stays)."""
        self.nodes[i].pod.stop(signal.SIGKILL)

    def restart(self, i: int) -> None:
        """Start node i's container again on its volume, as the kubelet would after a crash."""
        node = self.nodes[i]
        node.pod.run_init_containers()
        node.proc = node.pod.start(node.container)

    def connections(self) -> dict[int, int]:
        """Client connections per node index (from any node that answers)."""
        for i in range(len(self.nodes)):
            # Pids as text name their node (<node.N.N.N>); the JSON formatter drops it.
            proc = self.ctl(i, "-q", "list_connections", "--no-table-headers", "pid")
            if proc.returncode == 0:
                pids = proc.stdout.split()
                return {j: sum(f"<{name}." in p for p in pids) for j, name in enumerate(self.names)}
        raise AssertionError("no node of the cluster answers")

    def stop(self) -> None:
        # Signal every node first: stopping one by one makes each wait for the others.
        for node in self.nodes:
            for proc in node.pod.procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()


def rabbitmq_cluster(
    rendered: Rendered,
    workdir: Path,
    *,
    sts: str = "ttg-rabbitmq",
    namespace: str = "sweeps",
) -> RabbitMQCluster:
    """The rendered StatefulSet's pods as local nodes on free ports (not started yet)."""
    if RABBITMQ_BIN is None:
        pytest.fail("rabbitmq-server not found: run `make tools` (installs it from Debian)")
    doc = rendered.get("StatefulSet", sts)
    replicas, headless = doc["spec"]["replicas"], doc["spec"]["serviceName"]
    uid = uuid.uuid4().hex[:8]
    names = [f"ttg{uid}-{i}@localhost" for i in range(replicas)]
    # What peer discovery would resolve each pod to, in the rendered node names.
    pod_names = [f"rabbit@{sts}-{i}.{headless}.{namespace}" for i in range(replicas)]
    ports = [free_port() for _ in range(replicas)]
    cluster = RabbitMQCluster([], names)
    for i in range(replicas):
        cluster.addresses[f"{sts}-{i}.{headless}:5672"] = f"127.0.0.1:{ports[i]}"
        node_dir = workdir / f"{sts}-{i}"
        node_dir.mkdir(parents=True, exist_ok=True)
        pod = Pod(
            rendered,
            statefulset_pod_spec(rendered, sts),
            node_dir,
            name=f"{sts}-{i}",
            namespace=namespace,
            claims={"data": node_dir / "pvc-data"},
            image_env=RABBITMQ_IMAGE_ENV,
            image_dirs={"/var/log/rabbitmq": node_dir / "image-log"},
            replace=[
                ("listeners.tcp.default = 5672", f"listeners.tcp.default = 127.0.0.1:{ports[i]}"),
                ("prometheus.tcp.port = 15692", f"prometheus.tcp.port = {free_port()}"),
                (K8S_PEER_DISCOVERY, k8s_plugin_as_classic_config(i, names[0])),
                *zip(pod_names, names, strict=True),
            ],
            # Short local names (localhost); each node its own distribution port.
            env_overrides={
                "RABBITMQ_USE_LONGNAME": "false",
                "RABBITMQ_DIST_PORT": str(free_port()),
            },
            path_prefix=[RABBITMQ_BIN],
        )
        cluster.nodes.append(BrokerPod(pod, "rabbitmq", ports[i]))
    return cluster
