"""Dramatiq, the peer TTG is measured beside: the same workload, results stored durably.

Runs only in the separate benchmark venv (``make bench-peers`` builds it from
bench/requirements-peers.txt; Dramatiq is never a dependency of TTG):

    python -m dramatiq peer_dramatiq --processes P --threads T   # workers
    python -m peer_dramatiq produce RUN PARAMS CHUNK_SIZE          # producer: enqueue the sweep
    python -m peer_dramatiq watch RUN CHUNKS INTERVAL              # poller: a JSON line per poll

Configured by environment (bench/peers.py sets it):

- ``PEER_BROKER``: ``redis`` or ``rabbitmq``; ``PEER_BROKER_URL``: its URL.
  Dramatiq's brokers with their defaults (RabbitMQ: durable classic queue,
  persistent messages, publisher confirms off as Dramatiq ships).
- ``PEER_RESULTS_URL``: the Redis (AOF everysec, the bench's one redis-server)
  where the actor writes each chunk's result list, as JSON, to the hash
  ``bench:{RUN}:results`` field CHUNK before Dramatiq acknowledges the
  message: durable to the same degree as TTG's ledger on that Redis.
"""

from __future__ import annotations

import json
import os
import sys
import time

import dramatiq
import redis
from bench_workload import knuth
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

#: Queue of the benchmark's actor.
QUEUE = "bench"

_URL = os.environ.get("PEER_BROKER_URL", "redis://127.0.0.1:6379/0")
broker = (
    RabbitmqBroker(url=_URL)
    if os.environ.get("PEER_BROKER", "redis") == "rabbitmq"
    else RedisBroker(url=_URL)
)
dramatiq.set_broker(broker)
results = redis.Redis.from_url(os.environ.get("PEER_RESULTS_URL", _URL))


def results_key(run: str) -> str:
    return f"bench:{{{run}}}:results"


@dramatiq.actor(queue_name=QUEUE)
def compute_chunk(run: str, chunk: int, lo: int, hi: int) -> None:
    """Compute parameters [lo, hi) and store the chunk's results before the message is acked."""
    results.hset(results_key(run), str(chunk), json.dumps([knuth(p) for p in range(lo, hi)]))


def produce(run: str, params: int, chunk_size: int) -> None:
    """Enqueue one message per chunk, as a Dramatiq user does: ``actor.send`` in a loop."""
    for chunk, lo in enumerate(range(0, params, chunk_size)):
        compute_chunk.send(run, chunk, lo, min(lo + chunk_size, params))
    broker.close()


def watch(run: str, chunks: int, interval: float) -> None:
    """Print ``{"done": n, "complete": bool}`` every ``interval`` s until every chunk has results.

    The peer's counterpart of ``ttg status --watch --json``: one long-lived
    poller process per run, read line by line by the bench.
    """
    key = results_key(run)
    while True:
        done = int(results.hlen(key))
        print(json.dumps({"done": done, "complete": done >= chunks}), flush=True)
        if done >= chunks:
            return
        time.sleep(interval)


if __name__ == "__main__":
    command, run_id, *rest = sys.argv[1:]
    if command == "produce":
        produce(run_id, int(rest[0]), int(rest[1]))
    else:
        watch(run_id, int(rest[0]), float(rest[1]))
