"""A worker's own Prometheus metrics, and the HTTP endpoints every long-running command serves.

A worker exports what it did (chunks it completed, failed, ...), which a
dashboard sums over workers. Per-run figures (total, done, queue depth, ETA)
come from ``ttg exporter`` once per installation (``ttg.exporter``), so they
are one series per run and exist with zero workers.

Every per-run series of a worker is created at 0 when the worker first sees
the run (a delivery of it arrives, before its compute): a counter born at 1
would hide its first step from ``rate()``.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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
from ttg.httpd import HTTPServer, Route

log = logging.getLogger(__name__)

#: A main loop silent for longer than this fails /healthz.
LOOP_STALL_SECONDS = 60.0
#: Renard's R10 series: ten steps per decade, each at most 1.28x the one before.
R10 = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)
#: Chunk duration buckets, seconds: the R10 series from 10 ms to 4,000 s (57 buckets).
#: A sweep's chunks take anything from milliseconds to an hour, and a p50/p95 is
#: interpolated inside one bucket: with a constant chunk time t, ``histogram_quantile``
#: reads p95 within [0.99 t, 1.27 t] and p50 within [0.89 t, 1.14 t] at any t in range
#: (coarser 1-2.5-5 buckets read 1.1-2.4x). Finer would cost more series per run and
#: worker than it tells; chunks past 4,000 s read as 4,000 s.
DURATION_BUCKETS = tuple(
    round(m * 10.0**e, 6) for e in range(-2, 4) for m in R10 if m * 10.0**e <= 4000
)


@dataclass(frozen=True)
class RunMetrics:
    """One run's series of this worker."""

    completed: Any
    failed: Any
    redelivered: Any
    dead: Any
    duplicates: Any
    released: Any
    declined: Any
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
        self._declined = Counter(
            "ttg_chunks_declined",
            "Chunks given back because this worker cannot run the run's compute",
            ["run"],
            registry=r,
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

    def see(self, runs: Iterable[str]) -> None:
        """Create each run's series at 0 if they are new: call it as deliveries arrive.

        A series Prometheus first scrapes at 1 hides that step from ``rate()``
        and ``histogram_quantile()``: a worker's first chunks of a run would read
        as no rate and no duration. Born when the chunk arrives, the series is
        scraped at 0 while the chunk computes.
        """
        for run in runs:
            self.run(run)

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
                        self._declined,
                        self._params,
                        self._duration,
                    )
                )
            )
        return m


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


def serve(port: int, routes: Mapping[str, Route]) -> HTTPServer:
    """Serve ``routes`` on ``port`` from a daemon thread, within bounds (``ttg.httpd``).

    Raises:
        UsageError: the port is taken or not allowed.
    """
    try:
        server = HTTPServer(port, routes)
    except OSError as e:
        why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be opened ({e.strerror})"
        raise UsageError(f"metrics port {port} {why} (TTG_METRICS_PORT)") from None
    return server.start()
