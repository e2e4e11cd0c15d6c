"""Redis Streams backend (Redis 7; 6.2 for the embedded demo server; Redis Cluster).

The layout of a run's keys is in ``client.py``; every state change is one Lua
script touching one run's keys (one slot), so a crash between two commands
cannot lose or double a chunk, and the same code runs on a Redis Cluster.
``admin.RedisBroker`` seeds, steers and reads runs; ``consumer.RedisConsumer``
is one worker's session.
"""

from __future__ import annotations

from ttg.brokers.redis.admin import RedisBroker
from ttg.brokers.redis.consumer import RedisConsumer
from ttg.endpoint import TLS

__all__ = ["RedisBroker", "RedisConsumer", "connect", "open_consumer"]


def connect(url: str, *, tls: TLS) -> RedisBroker:
    """Open a ``RedisBroker`` at ``url`` and check that it answers."""
    broker = RedisBroker(url, tls)
    broker.ping()
    return broker


def open_consumer(
    url: str, tls: TLS, name: str, *, lease_seconds: float, prefetch: int
) -> RedisConsumer:
    """A worker's consumer, on a connection of its own (nothing is opened until ``start``)."""
    return RedisConsumer(url, tls, name, lease_seconds=lease_seconds, prefetch=prefetch)
