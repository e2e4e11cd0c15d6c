"""Faults the tests inject into real brokers: refused writes, malformed task messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pika
import redis

from tests.conftest import BackendEnv
from ttg.brokers.rabbitmq.connection import parameters
from ttg.brokers.redis.client import make_client
from ttg.processes import RabbitMQNode


@contextlib.contextmanager
def writes_refused(backend: BackendEnv, node: RabbitMQNode | None) -> Iterator[None]:
    """The broker refuses writes while inside, as a full one does.

    Redis: ``maxmemory 1`` (every write command answers OOM). RabbitMQ: a
    memory alarm (every publishing connection is blocked).
    """
    if backend.name == "redis":
        client = redis.Redis.from_url(backend.url)
        client.config_set("maxmemory", 1)
        try:
            yield
        finally:
            client.config_set("maxmemory", 0)
            client.close()
    else:
        assert node is not None
        node.ctl_run("set_vm_memory_high_watermark", "0.0001")
        try:
            yield
        finally:
            node.ctl_run("set_vm_memory_high_watermark", "0.4")


def inject_task(backend: BackendEnv, run: str, fields: dict[str, Any]) -> None:
    """Put a raw task message into a run's queue, as a buggy or hostile publisher would.

    Over the backend's own client factories, so it reaches a Redis Cluster or a
    TLS-only broker the same way TTG does.
    """
    if backend.name == "redis":
        client = make_client(backend.url, backend.tls)
        client.xadd(f"ttg:{{{run}}}:tasks", fields or {"junk": "1"})
        client.close()
    else:
        conn = pika.BlockingConnection(parameters(backend.url, backend.tls, heartbeat=30))
        conn.channel().basic_publish(
            "", f"ttg.{run}.tasks", b"junk", pika.BasicProperties(headers=fields)
        )
        conn.close()


def refusal_noticed(backend: BackendEnv, node: RabbitMQNode | None, run: str) -> bool:
    """The refusal bites: Redis — no worker holds a current lease in ``run`` any more;
    RabbitMQ — a worker's connection is blocked in a publish."""
    if backend.name == "redis":
        client = redis.Redis.from_url(backend.url)
        try:
            seconds, micros = client.time()
            now_ms = seconds * 1000 + micros // 1000
            leases = f"ttg:{{{run}}}:leases"
            return bool(client.zcard(leases)) and client.zcount(leases, now_ms, "+inf") == 0
        finally:
            client.close()
    assert node is not None
    states = node.ctl_run("list_connections", "state", "--quiet", "--no-table-headers")
    return "blocked" in states.split()
