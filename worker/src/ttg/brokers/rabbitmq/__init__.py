"""RabbitMQ backend (3.10+, AMQP 0-9-1 through pika). No Redis anywhere in this mode.

``connection`` holds the layout of a run's queues and streams and the plumbing;
``admin.RabbitMQBroker`` seeds (``seeder``: windowed publisher confirms), steers
and reads runs (``ledger``: streams folded in bounded memory);
``consumer.RabbitMQConsumer`` is one worker's session, on the connection its
``iothread.IOThread`` owns.
"""

from __future__ import annotations

from ttg.brokers.rabbitmq.admin import RabbitMQBroker
from ttg.brokers.rabbitmq.connection import parameters
from ttg.brokers.rabbitmq.consumer import RabbitMQConsumer
from ttg.brokers.rabbitmq.membership import check_whole
from ttg.endpoint import TLS

__all__ = ["RabbitMQBroker", "RabbitMQConsumer", "check_cluster", "connect", "open_consumer"]

#: Heartbeat of the short connections that look at the cluster's membership.
PROBE_HEARTBEAT = 30


def check_cluster(url: str, tls: TLS, expect_nodes: int) -> None:
    """Return if ``expect_nodes`` nodes of ``url`` run in one cluster (see ``membership``).

    Raises:
        BrokerConnectionError: fewer do; AuthenticationError: refused.
    """
    check_whole(parameters(url, tls, PROBE_HEARTBEAT), expect_nodes)


def connect(url: str, *, tls: TLS, expect_nodes: int = 0) -> RabbitMQBroker:
    """Open a ``RabbitMQBroker`` at ``url`` (one node, or several comma-separated), once
    ``expect_nodes`` of them run in one cluster (0 or 1: at once)."""
    if expect_nodes > 1:
        check_cluster(url, tls, expect_nodes)
    return RabbitMQBroker(url, tls)


def open_consumer(
    url: str, tls: TLS, name: str, *, lease_seconds: float, prefetch: int
) -> RabbitMQConsumer:
    """A worker's consumer, on a connection of its own (nothing is opened until ``start``)."""
    return RabbitMQConsumer(url, tls, name, lease_seconds=lease_seconds, prefetch=prefetch)
