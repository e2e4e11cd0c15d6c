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

import collections
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
#: How far back a rate looks at least, seconds, and at least how many steps it spans:
#: long chunks finish in bursts, and a rate needs several bursts to mean anything.
RATE_WINDOW_SECONDS = 60.0
RATE_WINDOW_STEPS = 10
#: A count that has not grown for this long has no rate (nothing says it will grow again).
RATE_MAX_AGE_SECONDS = 3600.0


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


class RateMeter:
    """The rate of a growing count (chunks finished), and the time until it reaches a target.

    An exponentially smoothed rate halved every few seconds without a step, so
    chunks longer than that read as a collapsing rate (an ETA of 77,220 s with
    24 s left). This one is a plain average over a window of *steps*: the
    moments the count was seen to grow. The window starts at the latest step
    that leaves at least ``window`` seconds and ``steps`` counts behind it (or
    at the first reading), and ends at the last step, so chunks that finish in
    bursts every few minutes still give their true rate. While the next step
    is overdue (the silence since the last one is longer than the mean gap
    between steps) the silence counts too, so a stall lowers the rate. Steps
    older than ``max_age`` are forgotten: a count that stopped growing that
    long ago has no rate.
    """

    def __init__(
        self,
        window: float = RATE_WINDOW_SECONDS,
        steps: int = RATE_WINDOW_STEPS,
        max_age: float = RATE_MAX_AGE_SECONDS,
    ) -> None:
        self.window = window
        self.steps = steps
        self.max_age = max_age
        #: (time, count) of the first reading and of every reading that saw the count grow.
        self._steps: collections.deque[tuple[float, int]] = collections.deque()
        self._now = 0.0
        #: The first reading found the count already grown: its first step is no measure.
        self._mid_run = False

    def update(self, count: int, now: float | None = None) -> float:
        """Take a reading of the count; the rate now (per second, 0 while unknown)."""
        now = time.monotonic() if now is None else now
        self._now = now
        s = self._steps
        if s and count < s[-1][1]:
            s.clear()  # a count that went down is another count (a run deleted and seeded again)
        if not s:
            s.append((now, count))
            self._mid_run = count > 0
        elif count > s[-1][1]:
            if self._mid_run:
                # The first reading came mid-run: the chunks of this step started before
                # it, at times we do not know. Measure from this step on.
                self._mid_run = False
                s.clear()
            s.append((now, count))
        while len(s) >= 2 and (
            (now - s[1][0] >= self.window and count - s[1][1] >= self.steps)
            or now - s[0][0] > self.max_age
        ):
            s.popleft()
        return self.rate

    def _measure(self) -> tuple[float, float, float] | None:
        """(rate, mean gap between steps, silence since the last step), None while unknown."""
        s = self._steps
        if len(s) < 2:
            return None
        (t0, c0), (t1, c1) = s[0], s[-1]
        gap = (t1 - t0) / (len(s) - 1)
        silence = self._now - t1
        elapsed = max(t1 - t0, self._now - t0 - gap)
        return ((c1 - c0) / elapsed, gap, silence) if elapsed > 0 else None

    @property
    def rate(self) -> float:
        """Per second, as of the last reading; 0 while unknown."""
        m = self._measure()
        return m[0] if m else 0.0

    def eta(self, remaining: int) -> float | None:
        """Seconds until ``remaining`` more counts, as of the last reading; None while unknown.

        Between steps it counts down (the time since the last step is taken off,
        up to one mean gap), so it does not jump at every burst of long chunks.
        """
        if remaining <= 0:
            return 0.0
        m = self._measure()
        if m is None or m[0] <= 0:
            return None
        rate, gap, silence = m
        return max(0.0, remaining / rate - min(silence, gap))


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
