"""Prometheus metrics and the /metrics, /healthz, /readyz endpoints.

Two kinds of series:

- this worker's own counters (chunks it completed, failed, ...), which a
  dashboard sums over workers;
- per-run gauges read from the broker (total, done, dead, queue depth,
  progress, ETA), the same value on every worker, which a dashboard takes the
  ``max by (run)`` of, so it shows one value per run, not one per worker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import (
    platform_collector as _platform,
)
from prometheus_client import (
    process_collector as _process,
)

from ttg.broker import Broker
from ttg.errors import TTGError
from ttg.run import Progress

log = logging.getLogger(__name__)

#: A main loop silent for longer than this fails /healthz.
LOOP_STALL_SECONDS = 60.0
#: Broker checks older than this fail /readyz.
READY_STALE_SECONDS = 15.0


class Metrics:
    """Every series the worker exports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        _process.ProcessCollector(registry=self.registry)
        _platform.PlatformCollector(registry=self.registry)
        r = self.registry
        self.completed = Counter(
            "ttg_chunks_completed", "Chunks this worker completed and recorded", ["run"], registry=r
        )
        self.failed = Counter(
            "ttg_chunks_failed", "Chunk computations that raised", ["run"], registry=r
        )
        self.redelivered = Counter(
            "ttg_chunks_redelivered",
            "Deliveries this worker received that were not a chunk's first",
            ["run"],
            registry=r,
        )
        self.dead = Counter(
            "ttg_chunks_dead_lettered",
            "Chunks this worker sent to the dead letters",
            ["run"],
            registry=r,
        )
        self.duplicates = Counter(
            "ttg_chunks_duplicate",
            "Results this worker recorded for chunks that already had one (not counted)",
            ["run"],
            registry=r,
        )
        self.released = Counter(
            "ttg_chunks_released", "Chunks given back unfinished (shutdown)", ["run"], registry=r
        )
        self.params = Counter(
            "ttg_parameters_completed",
            "Parameters in chunks this worker completed",
            ["run"],
            registry=r,
        )
        self.duration = Histogram(
            "ttg_chunk_duration_seconds",
            "Time to compute one chunk",
            ["run"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.in_flight = Gauge("ttg_chunks_in_flight", "Chunks this worker holds now", registry=r)
        self.broker_up = Gauge(
            "ttg_broker_up", "1 if the broker answered the last check", registry=r
        )
        self.run_total = Gauge("ttg_run_chunks_total", "Chunks in the run", ["run"], registry=r)
        self.run_done = Gauge(
            "ttg_run_chunks_done", "Chunks of the run with a counted result", ["run"], registry=r
        )
        self.run_dead = Gauge(
            "ttg_run_chunks_dead", "Chunks of the run in the dead letters", ["run"], registry=r
        )
        self.run_dups = Gauge(
            "ttg_run_duplicates",
            "Duplicate results of the run (never counted)",
            ["run"],
            registry=r,
        )
        self.run_depth = Gauge(
            "ttg_run_queue_depth", "Chunks of the run waiting or in flight", ["run"], registry=r
        )
        self.run_progress = Gauge(
            "ttg_run_progress_ratio", "Finished chunks / total chunks", ["run"], registry=r
        )
        self.run_eta = Gauge(
            "ttg_run_eta_seconds", "Estimated seconds until the run finishes", ["run"], registry=r
        )
        self.run_rate = Gauge(
            "ttg_run_rate_chunks_per_second",
            "Chunks finished per second, smoothed",
            ["run"],
            registry=r,
        )

    def forget_run(self, run: str) -> None:
        """Drop a deleted run's gauges (its counters stay: they are this worker's history)."""
        for gauge in (
            self.run_total,
            self.run_done,
            self.run_dead,
            self.run_dups,
            self.run_depth,
            self.run_progress,
            self.run_eta,
            self.run_rate,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(run)

    def observe_run(self, p: Progress, rate: float) -> None:
        labels = {"run": p.run}
        self.run_total.labels(**labels).set(p.total_chunks)
        self.run_done.labels(**labels).set(p.done)
        self.run_dead.labels(**labels).set(p.dead)
        self.run_dups.labels(**labels).set(p.duplicates)
        self.run_depth.labels(**labels).set(p.queue_depth)
        self.run_progress.labels(**labels).set(p.ratio)
        self.run_rate.labels(**labels).set(rate)
        remaining = p.total_chunks - p.finished
        self.run_eta.labels(**labels).set(
            remaining / rate if rate > 0 else (0 if remaining == 0 else -1)
        )


class RateMeter:
    """Smoothed rate of a growing count (exponentially weighted, ~30 s memory)."""

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
                instant = (count - c0) / dt
                self.rate = (
                    instant if self.rate == 0 else weight * self.rate + (1 - weight) * instant
                )
        self._last = (now, count)
        return self.rate


class RunWatcher(threading.Thread):
    """Refresh the per-run gauges and the broker-up flag every ``interval`` seconds.

    Uses a broker connection of its own, so it never competes with the worker's.
    """

    def __init__(
        self, open_broker: Callable[[], Broker], metrics: Metrics, interval: float
    ) -> None:
        super().__init__(name="ttg-run-watcher", daemon=True)
        self.open_broker = open_broker
        self.metrics = metrics
        self.interval = interval
        self.last_ok = 0.0
        self.stopping = threading.Event()
        self._rates: dict[str, RateMeter] = {}
        #: Runs seen complete: their gauges are final, so they are not read again.
        self._finished: set[str] = set()

    def run(self) -> None:
        broker: Broker | None = None
        while True:
            try:
                broker = broker or self.open_broker()
                broker.ping()
                runs = broker.runs()
                for gone in set(self._rates) - set(runs):
                    self.metrics.forget_run(gone)
                    self._rates.pop(gone)
                    self._finished.discard(gone)
                for run in runs:
                    if run in self._finished:
                        continue
                    p = broker.progress(run)
                    rate = self._rates.setdefault(run, RateMeter()).update(p.finished)
                    self.metrics.observe_run(p, rate)
                    if p.complete:
                        self._finished.add(run)
                self.metrics.broker_up.set(1)
                self.last_ok = time.monotonic()
            except TTGError as e:
                self.metrics.broker_up.set(0)
                log.debug("run watcher: %s", e)
            if self.stopping.wait(self.interval):
                break
        if broker:
            broker.close()

    @property
    def ready(self) -> bool:
        return time.monotonic() - self.last_ok < READY_STALE_SECONDS


class Probes:
    """What /healthz and /readyz answer; the worker updates ``tick`` from its loop."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.last_tick = time.monotonic()
        self._ready = ready

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self.last_tick < LOOP_STALL_SECONDS

    def ready(self) -> bool:
        return self._ready()


def serve(port: int, metrics: Metrics, probes: Probes) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on ``port`` in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = probes.healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"main loop stalled\n")
            elif path == "/readyz":
                ok = probes.ready()
                self._send(200 if ok else 503, b"ok\n" if ok else b"broker unreachable\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes and probes every few seconds are not news

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - pods listen on all interfaces
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ttg-http", daemon=True).start()
    return server
