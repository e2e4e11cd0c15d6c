"""The broker processes a benchmark run measures against, started here on free ports.

One ``redis-server`` with AOF (appendfsync everysec, as the chart deploys it)
and one RabbitMQ node, each with its own data directory, never the machine's
services on default ports. TTG and its peers share them in one run. They start
lazily: a ``--backend redis`` run never boots RabbitMQ.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import redis

from ttg.processes import RabbitMQNode, RedisServer


def rabbitmq_available() -> bool:
    return any(os.path.exists(f"{d}/rabbitmq-server") for d in RabbitMQNode.SCRIPT_DIRS) or bool(
        shutil.which("rabbitmq-server")
    )


class Brokers:
    """The run's brokers, started on first use and stopped together."""

    def __init__(self) -> None:
        self._redis: RedisServer | None = None
        self._rabbit: RabbitMQNode | None = None

    @property
    def redis(self) -> RedisServer:
        if self._redis is None:
            print("[brokers] starting redis-server (AOF everysec) ...", file=sys.stderr, flush=True)
            self._redis = RedisServer(appendonly=True).start()
        return self._redis

    @property
    def rabbit(self) -> RabbitMQNode:
        if self._rabbit is None:
            print("[brokers] starting a RabbitMQ node ...", file=sys.stderr, flush=True)
            self._rabbit = RabbitMQNode().start()
        return self._rabbit

    def url(self, backend: str) -> str:
        return self.redis.url if backend == "redis" else self.rabbit.url

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def rabbit_status(self) -> dict[str, Any]:
        """``rabbitmqctl status`` of the node, as JSON."""
        out: dict[str, Any] = json.loads(self.rabbit.ctl_run("status", "--formatter", "json"))
        return out

    def memory_bytes(self, backend: str) -> int | None:
        """The broker's memory now.

        Redis: INFO ``used_memory``. RabbitMQ: ``rabbitmqctl status`` total
        memory as the node computes it (its strategy here is the process RSS).
        """
        try:
            if backend == "redis":
                client = self.redis_client()
                used = int(client.info("memory")["used_memory"])
                client.close()
                return used
            total = self.rabbit_status()["memory"]["total"]
            return int(total.get("rss") or total.get("erlang") or 0) or None
        except Exception as e:  # a memory figure is worth a note, never the whole run
            print(f"[brokers] memory of {backend}: {e}", file=sys.stderr)
            return None

    def versions(self) -> dict[str, str]:
        """Versions of the brokers started so far (and of redis-server in any case)."""
        out: dict[str, str] = {}
        binary = self._redis.binary if self._redis else shutil.which("redis-server")
        if binary:
            text = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, check=False
            ).stdout
            m = re.search(r"v=(\S+)", text)
            out["redis-server"] = m.group(1) if m else text.strip()
        if self._rabbit is not None:
            with contextlib.suppress(Exception):
                status = self.rabbit_status()
                erlang = re.search(r"OTP \d+", status.get("erlang_version", ""))
                out["rabbitmq"] = status["rabbitmq_version"] + (
                    f" (Erlang/{erlang.group(0)})" if erlang else ""
                )
        return out

    def stop(self) -> None:
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._rabbit is not None:
            self._rabbit.stop()
            self._rabbit = None
