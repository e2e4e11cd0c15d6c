"""Fixtures: real brokers on free ports, real worker processes, unique run ids.

Nothing here talks to a broker the machine may already run on a default port:
every test gets servers this session started and stops.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT
from ttg.broker import Broker, Consumer, open_broker
from ttg.brokers.memory import MemoryBroker
from ttg.local import LocalWorkers, RabbitMQNode, RedisServer

#: Every backend the shared fault suites run against (real broker processes).
BACKENDS = ["redis", "rabbitmq"]
#: What the conformance suite runs against: the real backends and the in-memory one.
CONFORMANCE_BACKENDS = ["memory", *BACKENDS]
#: Compute modules the tests' workers may import (tests.computes).
COMPUTE_ALLOW = "ttg.compute,tests"


@dataclass
class BackendEnv:
    """One running broker as the tests see it."""

    name: str
    url: str
    restart: Callable[[], None]
    _brokers: list[Broker] = field(default_factory=list)

    memory: MemoryBroker | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "TTG_BACKEND": self.name,
            "TTG_BROKER_URL": self.url,
            "TTG_COMPUTE_ALLOW": COMPUTE_ALLOW,
        }

    def broker(self) -> Broker:
        if self.memory is not None:
            return self.memory
        b = open_broker(self.name, self.url)
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


def _backend(request: pytest.FixtureRequest) -> Iterator[BackendEnv]:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
    else:
        server = request.getfixturevalue("rabbitmq_node")
    yield from backend_env(request.param, server)


def backend_env(name: str, server: RedisServer | RabbitMQNode) -> Iterator[BackendEnv]:
    """A BackendEnv on ``server`` that deletes, afterwards, every run the test made."""
    env = BackendEnv(name, server.url, server.restart)
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
