"""Fixtures: real brokers on free ports, real worker processes, unique run ids.

Nothing here talks to a broker the machine may already run on a default port:
every test gets servers this session started and stops.
"""

from __future__ import annotations

import compileall
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.tls import TLSMaterial, make_tls_material
from ttg.broker import Broker, Consumer
from ttg.brokers.memory import MemoryBroker
from ttg.endpoint import BACKENDS as BACKEND_MODULES
from ttg.endpoint import TLS, open_broker
from ttg.processes import LocalWorkers, RabbitMQNode, RedisServer
from ttg.processes.cluster import RedisCluster


def pytest_sessionstart(session: pytest.Session) -> None:
    """Bytecode for our sources, fresh: the suites start hundreds of ttg processes, and
    where PYTHONDONTWRITEBYTECODE is set each would compile every module anew."""
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: its controller compiled them
    for d in ("worker/src", "tests", "bench", "examples"):
        compileall.compile_dir(ROOT / d, quiet=2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a slow test first, in their order, then the rest.

    ``make test`` runs the files in two processes, handing each a whole file at a time
    in this order: the long ones start early and the many short ones fill the gaps,
    rather than a cluster test ending the session alone on one core.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


#: Every backend the shared fault suites run against (real broker processes).
BACKENDS = list(BACKEND_MODULES)
#: Deployments of a backend the conformance suite also runs on: a 3-master Redis
#: Cluster, and each backend's broker listening with TLS only.
VARIANTS = ["redis-cluster", "redis-tls", "rabbitmq-tls"]
#: What the conformance suite runs against: the real backends, their variants,
#: and the in-memory one.
CONFORMANCE_BACKENDS = ["memory", *BACKENDS, *VARIANTS]
#: Compute modules the tests' workers may import (tests.computes).
COMPUTE_ALLOW = "ttg.compute,tests"


@dataclass
class BackendEnv:
    """One running broker as the tests see it.

    ``name`` is the backend (``TTG_BACKEND``); ``tls`` what a client is given
    to trust the broker (``TTG_BROKER_CA_FILE`` ...), empty for plaintext.
    """

    name: str
    url: str
    restart: Callable[[], None]
    _brokers: list[Broker] = field(default_factory=list)

    memory: MemoryBroker | None = None
    tls: TLS = field(default_factory=TLS)

    @property
    def env(self) -> dict[str, str]:
        env = {
            "TTG_BACKEND": self.name,
            "TTG_BROKER_URL": self.url,
            "TTG_COMPUTE_ALLOW": COMPUTE_ALLOW,
        }
        for var, path in (
            ("TTG_BROKER_CA_FILE", self.tls.ca_file),
            ("TTG_BROKER_CERT_FILE", self.tls.cert_file),
            ("TTG_BROKER_KEY_FILE", self.tls.key_file),
        ):
            if path:
                env[var] = path
        return env

    def broker(self) -> Broker:
        if self.memory is not None:
            return self.memory
        b = open_broker(self.name, self.url, tls=self.tls)
        self._brokers.append(b)
        return b

    def close(self) -> None:
        for b in self._brokers:
            b.close()
        self._brokers.clear()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq_node() -> Iterator[RabbitMQNode]:
    """One node for the whole session (it takes seconds to boot); runs are isolated by id."""
    node = RabbitMQNode().start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    """A CA, a server and a client certificate it signed, and an unrelated CA."""
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """Three Redis masters sharing the slots (AOF on), for the whole session."""
    cluster = RedisCluster(3).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_tls_server(tls_material: TLSMaterial) -> Iterator[RedisServer]:
    """A Redis that speaks TLS only."""
    server = RedisServer(tls=tls_material.server).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq_tls_node(tls_material: TLSMaterial) -> Iterator[RabbitMQNode]:
    """A RabbitMQ node whose only listener is AMQPS."""
    node = RabbitMQNode(tls=tls_material.server).start()
    yield node
    node.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[BackendEnv]:
    """The shared broker of each backend in turn (runs are isolated by run id)."""
    yield from _backend(request)


@pytest.fixture(params=CONFORMANCE_BACKENDS)
def any_backend(request: pytest.FixtureRequest) -> Iterator[BackendEnv]:
    """Each real backend's shared broker, and a fresh in-memory one."""
    if request.param == "memory":
        yield BackendEnv("memory", "memory://", lambda: None, memory=MemoryBroker())
        return
    yield from _backend(request)


#: Conformance backend -> (TTG_BACKEND, the session fixture of its broker).
_SERVERS = {
    "redis": ("redis", "redis_server"),
    "rabbitmq": ("rabbitmq", "rabbitmq_node"),
    "redis-cluster": ("redis", "redis_cluster"),
    "redis-tls": ("redis", "redis_tls_server"),
    "rabbitmq-tls": ("rabbitmq", "rabbitmq_tls_node"),
}


def _backend(request: pytest.FixtureRequest) -> Iterator[BackendEnv]:
    name, fixture = _SERVERS[request.param]
    server = request.getfixturevalue(fixture)
    tls = request.getfixturevalue("tls_material").client if "tls" in request.param else TLS()
    yield from backend_env(name, server, tls=tls)


def backend_env(
    name: str, server: RedisServer | RabbitMQNode | RedisCluster, *, tls: TLS | None = None
) -> Iterator[BackendEnv]:
    """A BackendEnv on ``server`` that deletes, afterwards, every run the test made."""
    env = BackendEnv(name, server.url, server.restart, tls=tls or TLS())
    before = set(env.broker().runs())
    yield env
    # Runs a test leaves live would be served by the next test's workers.
    admin = env.broker()
    for run in set(admin.runs()) - before:
        admin.delete(run)
    env.close()


@pytest.fixture
def run_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(backend: BackendEnv, tmp_path: Path) -> Iterator[LocalWorkers]:
    """Start real ``ttg worker`` processes with ``workers.start(n, **env)``; all stopped after."""
    pool = LocalWorkers(
        {
            **backend.env,
            "PYTHONPATH": str(ROOT),
            "TTG_METRICS_PORT": "0",
            "TTG_LOG_FORMAT": "json",
            "TTG_LOG_LEVEL": "DEBUG",
        },
        log_dir=tmp_path,
    )
    yield pool
    pool.stop()
    for log in sorted(tmp_path.glob("*.log")):
        # Shown by pytest only when the test failed.
        print(f"--- {log.name}\n{log.read_text()[-4000:]}")  # noqa: T201


ConsumerFactory = Callable[..., Consumer]


@pytest.fixture
def new_consumer() -> Iterator[ConsumerFactory]:
    """``new_consumer(broker, name, lease=2.0, prefetch=10)``: a started consumer, closed after."""
    made: list[Consumer] = []

    def make(broker: Broker, name: str, *, lease: float = 2.0, prefetch: int = 10) -> Consumer:
        c = broker.consumer(name, lease_seconds=lease, prefetch=prefetch)
        c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
