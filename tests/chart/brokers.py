"""The rendered broker pods, started for real on free ports (see tests/chart/pods.py).

Only what a pod has and this machine cannot is substituted: the Service's
listener becomes 127.0.0.1 and a free port, mount paths become directories of
the test, the node name becomes one nobody else on the machine uses, and the
official images' own environment is given as the images set it.
"""

from __future__ import annotations

import shutil
import socket
import uuid
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
    """The rendered broker StatefulSet's pod, started locally; ``port`` is its AMQP/Redis port."""

    def __init__(self, pod: Pod, container: str, port: int) -> None:
        self.pod = pod
        self.container = container
        self.port = port
        self.proc = None

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
    rendered: Rendered, workdir: Path, data: Path, *, sts: str = "ttg-rabbitmq"
) -> BrokerPod:
    """The rendered RabbitMQ pod on a free port, with ``data`` as its PersistentVolumeClaim."""
    if RABBITMQ_BIN is None:
        pytest.fail("rabbitmq-server not found: run `make tools` (installs it from Debian)")
    port, prometheus, dist = free_port(), free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    pod = Pod(
        rendered,
        statefulset_pod_spec(rendered, sts),
        workdir,
        name=f"{sts}-0",
        claims={"data": data},
        image_env=RABBITMQ_IMAGE_ENV,
        image_dirs={"/var/log/rabbitmq": workdir / "image-log"},
        replace=[
            ("listeners.tcp.default = 5672", f"listeners.tcp.default = 127.0.0.1:{port}"),
            ("prometheus.tcp.port = 15692", f"prometheus.tcp.port = {prometheus}"),
            # The machine's own RabbitMQ may be rabbit@localhost: a name of our own.
            ("rabbit@localhost", f"ttg-{uuid.uuid4().hex[:8]}@localhost"),
        ],
        # In a pod the distribution port is the pod's own; here it must be free.
        env_overrides={"RABBITMQ_DIST_PORT": str(dist)},
        path_prefix=[RABBITMQ_BIN],
    )
    return BrokerPod(pod, "rabbitmq", port)


def redis_pod(
    rendered: Rendered, workdir: Path, data: Path, *, sts: str = "ttg-redis"
) -> BrokerPod:
    """The rendered Redis pod on a free port, with ``data`` as its PersistentVolumeClaim."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server not found: run `make tools` (installs it from Debian)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    pod = Pod(
        rendered,
        statefulset_pod_spec(rendered, sts),
        workdir,
        name=f"{sts}-0",
        claims={"data": data},
        replace=[("bind * -::*", "bind 127.0.0.1"), ("port 6379", f"port {port}")],
    )
    return BrokerPod(pod, "redis", port)
