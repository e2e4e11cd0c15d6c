"""A worker's own Prometheus metrics, and the HTTP endpoints every long-running command serves.

A worker exports what it did (chunks it completed, failed, ...), which a
dashboard sums over workers. Per-run figures (total, done, queue depth, ETA)
come from ``ttg exporter`` once per installation (``ttg.exporter``), so they
are one series per run and exist with zero workers.

Every per-run series of a worker is created at 0 when the worker first sees
the run: a counter born at 1 would hide its first step from ``rate()``.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import platform_collector as _platform
from prometheus_client import process_collector as _process

from ttg.errors import UsageError

log = logging.getLogger(__name__)

#: A main loop silent for longer than this fails /healthz.
LOOP_STALL_SECONDS = 60.0
#: Chunk duration buckets, seconds: fine below a second, where most chunks of a
#: sweep fall, so a p95 is not read off a bucket five times its width.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 7.5, 10, 15, 30, 60,
    120, 300, 600,
)  # fmt: skip

#: An HTTP route: () -> (status, body, content type).
Route = Callable[[], tuple[int, bytes, str]]


@dataclass(frozen=True)
class RunMetrics:
    """One run's series of this worker."""

    completed: Any
    failed: Any
    redelivered: Any
    dead: Any
    duplicates: Any
    released: Any
    params: Any
    duration: Any


class Metrics:
    """Every series a worker exports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        _process.ProcessCollector(registry=self.registry)
        _platform.PlatformCollector(registry=self.registry)
        r = self.registry
        self._completed = Counter(
            "ttg_chunks_completed", "Chunks this worker completed and recorded", ["run"], registry=r
        )
        self._failed = Counter(
            "ttg_chunks_failed",
            "Chunk computations with errors (retried, or recorded with parameter errors)",
            ["run"],
            registry=r,
        )
        self._redelivered = Counter(
            "ttg_chunks_redelivered",
            "Deliveries this worker settled that were not a chunk's first",
            ["run"],
            registry=r,
        )
        self._dead = Counter(
            "ttg_chunks_dead_lettered",
            "Chunks this worker recorded dead (no results)",
            ["run"],
            registry=r,
        )
        self._duplicates = Counter(
            "ttg_chunks_duplicate",
            "Outcomes this worker recorded for chunks that already had one (not counted)",
            ["run"],
            registry=r,
        )
        self._released = Counter(
            "ttg_chunks_released", "Chunks given back unfinished (shutdown)", ["run"], registry=r
        )
        self._params = Counter(
            "ttg_parameters_completed",
            "Parameters this worker computed and recorded",
            ["run"],
            registry=r,
        )
        self._duration = Histogram(
            "ttg_chunk_duration_seconds",
            "Time to compute one chunk",
            ["run"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("ttg_chunks_in_flight", "Chunks this worker holds now", registry=r)
        self.broker_up = Gauge(
            "ttg_broker_up", "1 if the broker answered the last check", registry=r
        )
        self._runs: dict[str, RunMetrics] = {}

    def run(self, run: str) -> RunMetrics:
        """The run's series, every one created at 0 the first time."""
        m = self._runs.get(run)
        if m is None:
            m = self._runs[run] = RunMetrics(
                *(
                    metric.labels(run=run)
                    for metric in (
                        self._completed,
                        self._failed,
                        self._redelivered,
                        self._dead,
                        self._duplicates,
                        self._released,
                        self._params,
                        self._duration,
                    )
                )
            )
        return m


class RateMeter:
    """Smoothed rate of a growing count (exponentially weighted, ~3 half-lives of memory)."""

    def __init__(self, halflife: float = 10.0) -> None:
        self.halflife = halflife
        self.rate = 0.0
        self._last: tuple[float, int] | None = None

    def update(self, count: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self._last is not None:
            t0, c0 = self._last
            dt = now - t0
            if dt > 0:
                weight = 0.5 ** (dt / self.halflife)
                instant = max(0, count - c0) / dt
                self.rate = (
                    instant if self.rate == 0 else weight * self.rate + (1 - weight) * instant
                )
        self._last = (now, count)
        return self.rate


class Probes:
    """What /healthz and /readyz answer; the worker updates ``tick`` from its loop."""

    def __init__(
        self, ready: Callable[[], bool], why: Callable[[], str | None] | None = None
    ) -> None:
        self.last_tick = time.monotonic()
        self._ready = ready
        self._why = why

    def reason(self) -> str:
        """Why /readyz answers 503 (one line)."""
        try:
            return (self._why() if self._why else None) or "broker unreachable"
        except Exception:
            return "broker unreachable"

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self.last_tick < LOOP_STALL_SECONDS

    def ready(self) -> bool:
        try:
            return bool(self._ready())
        except Exception:
            return False


def probe_routes(registry: CollectorRegistry, probes: Probes) -> dict[str, Route]:
    """/metrics, /healthz and /readyz."""

    def metrics() -> tuple[int, bytes, str]:
        return 200, generate_latest(registry), CONTENT_TYPE_LATEST

    def healthz() -> tuple[int, bytes, str]:
        ok = probes.healthy()
        return (200, b"ok\n", "text/plain") if ok else (503, b"main loop stalled\n", "text/plain")

    def readyz() -> tuple[int, bytes, str]:
        if probes.ready():
            return 200, b"ok\n", "text/plain"
        return 503, f"{probes.reason()}\n".encode(), "text/plain"

    return {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}


def serve(port: int, routes: Mapping[str, Route]) -> ThreadingHTTPServer:
    """Serve ``routes`` on ``port`` in a daemon thread.

    Raises:
        UsageError: the port is taken or not allowed.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self._send(404, b"not found\n", "text/plain")
            else:
                self._send(*route())

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes and probes every few seconds are not news

    try:
        server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - pods listen on all interfaces
    except OSError as e:
        why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be opened ({e.strerror})"
        raise UsageError(f"metrics port {port} {why} (TTG_METRICS_PORT)") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ttg-http", daemon=True).start()
    return server
