"""RabbitMQ backend (3.10+, AMQP 0-9-1 through pika). No Redis anywhere in this mode.

``connection`` holds the layout of a run's queues and streams and the plumbing;
``admin.RabbitMQBroker`` seeds (``seeder``: windowed publisher confirms), steers
and reads runs (``ledger``: streams folded in bounded memory);
``consumer.RabbitMQConsumer`` is one worker's session, on the connection its
``iothread.IOThread`` owns.
"""

from __future__ import annotations

from ttg.brokers.rabbitmq.admin import RabbitMQBroker
from ttg.brokers.rabbitmq.consumer import RabbitMQConsumer
from ttg.endpoint import TLS

__all__ = ["RabbitMQBroker", "RabbitMQConsumer", "connect", "open_consumer"]


def connect(url: str, *, tls: TLS) -> RabbitMQBroker:
    """Open a ``RabbitMQBroker`` at ``url`` (one node, or several comma-separated)."""
    return RabbitMQBroker(url, tls)


def open_consumer(
    url: str, tls: TLS, name: str, *, lease_seconds: float, prefetch: int
) -> RabbitMQConsumer:
    """A worker's consumer, on a connection of its own (nothing is opened until ``start``)."""
    return RabbitMQConsumer(url, tls, name, lease_seconds=lease_seconds, prefetch=prefetch)
