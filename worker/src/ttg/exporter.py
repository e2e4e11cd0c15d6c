"""``ttg exporter``: every run's figures, once per installation, with or without workers.

Per-run figures exported by the workers themselves were one series per worker
(a dashboard had to take ``max by (run)``), froze when a run finished, and
vanished with the last worker — taking KEDA's queue depth with them, so a
Deployment scaled to zero could never scale up. The exporter reads the
broker's own tallies every few seconds and serves them once:

- ``/metrics``: one series per run (docs/contract.md lists them). Counters
  (``..._total``) are the broker's tallies, so they exist from seeding at 0
  and ``rate()`` sees every step; gauges are the run's state now.
- ``/api/queue``: ``{"queued": N, "runs": {...}}``, the work waiting for
  workers, for KEDA's ``metrics-api`` scaler (no Prometheus needed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ttg.broker import Broker
from ttg.errors import RunNotFound, TTGError
from ttg.httpd import Route
from ttg.metrics import Probes, RateMeter
from ttg.run import Progress

log = logging.getLogger(__name__)

#: Seconds between two reads of the broker.
INTERVAL_SECONDS = 2.0
#: A read older than this makes /readyz fail.
STALE_SECONDS = 30.0


@dataclass
class Snapshot:
    """The last complete read of every run."""

    at: float = 0.0
    broker_up: bool = False
    runs: dict[str, Progress] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)


class RunCollector(Collector):
    """Renders the latest ``Snapshot`` as Prometheus families at each scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot], backend: str) -> None:
        self.snapshot = snapshot
        self.backend = backend

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        up = GaugeMetricFamily("ttg_exporter_broker_up", "1 if the last read of the broker worked")
        up.add_metric([], 1 if s.broker_up else 0)
        yield up
        info = GaugeMetricFamily(
            "ttg_run_info", "A run and its state (always 1)", labels=["run", "state", "backend"]
        )
        gauges = {
            name: GaugeMetricFamily(name, text, labels=["run"])
            for name, text in (
                ("ttg_run_chunks", "Chunks in the run"),
                ("ttg_run_parameters", "Parameters in the run"),
                ("ttg_run_chunks_done", "Chunks with every result"),
                ("ttg_run_chunks_dead", "Chunks recorded dead (no results)"),
                ("ttg_run_chunks_with_errors", "Chunks recorded with parameter errors"),
                ("ttg_run_queue_depth", "Chunks waiting or in flight that workers may take"),
                ("ttg_run_workers", "Live workers serving the run"),
                ("ttg_run_progress_ratio", "Finished chunks / total chunks"),
                ("ttg_run_eta_seconds", "Estimated seconds until the run finishes"),
                ("ttg_run_seeded_timestamp_seconds", "When the run was seeded (Unix time)"),
            )
        }
        counters = {
            name: CounterMetricFamily(name, text, labels=["run"])
            for name, text in (
                ("ttg_run_chunks_finished", "Chunks that got their outcome"),
                ("ttg_run_parameters_finished", "Parameters computed (with a result)"),
                ("ttg_run_redeliveries", "Chunk deliveries that were not a chunk's first"),
                ("ttg_run_failures", "Chunk computations with errors"),
                ("ttg_run_duplicates", "Outcomes recorded after a chunk's first (never counted)"),
                ("ttg_run_malformed", "Task messages that could not be read"),
            )
        }
        for run, p in sorted(s.runs.items()):
            info.add_metric([run, p.state, self.backend], 1)
            values = {
                "ttg_run_chunks": p.total_chunks,
                "ttg_run_parameters": p.total_params,
                "ttg_run_chunks_done": p.done,
                "ttg_run_chunks_dead": p.dead,
                "ttg_run_chunks_with_errors": p.errors,
                "ttg_run_queue_depth": p.waiting,
                "ttg_run_progress_ratio": p.ratio,
            }
            if p.workers is not None:
                values["ttg_run_workers"] = p.workers
            if p.seeded_at is not None:
                values["ttg_run_seeded_timestamp_seconds"] = p.seeded_at
            rate = s.rates.get(run, 0.0)
            remaining = p.total_chunks - p.finished
            if remaining == 0:
                values["ttg_run_eta_seconds"] = 0
            elif rate > 0 and p.state == "running":
                values["ttg_run_eta_seconds"] = remaining / rate
            for name, value in values.items():
                gauges[name].add_metric([run], value)
            for name, value in (
                ("ttg_run_chunks_finished", p.finished),
                ("ttg_run_parameters_finished", p.done_params),
                ("ttg_run_redeliveries", p.redelivered),
                ("ttg_run_failures", p.failed),
                ("ttg_run_duplicates", p.duplicates),
                ("ttg_run_malformed", p.malformed),
            ):
                counters[name].add_metric([run], value)
        yield info
        yield from gauges.values()
        yield from counters.values()


class Exporter:
    """Reads every run from the broker every ``interval`` seconds, in its own thread."""

    def __init__(
        self, open_broker: Callable[[], Broker], backend: str, interval: float = INTERVAL_SECONDS
    ) -> None:
        self.open_broker = open_broker
        self.backend = backend
        self.interval = interval
        self.registry = CollectorRegistry()
        self._snapshot = Snapshot()
        self._rates: dict[str, RateMeter] = {}
        self._stop = threading.Event()
        self.registry.register(RunCollector(lambda: self._snapshot, backend))
        self.probes = Probes(ready=lambda: self.ready)

    @property
    def ready(self) -> bool:
        s = self._snapshot
        return s.broker_up and time.monotonic() - s.at < STALE_SECONDS

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Read until stopped (call from a thread, or as the command's main loop)."""
        broker: Broker | None = None
        while not self._stop.is_set():
            self.probes.tick()
            try:
                broker = broker or self.open_broker()
                self._read(broker)
            except TTGError as e:
                log.warning("cannot read the broker: %s", e)
                self._snapshot = Snapshot(time.monotonic(), False, self._snapshot.runs)
                if broker is not None:
                    broker.close()
                broker = None
            self._stop.wait(self.interval)
        if broker is not None:
            broker.close()

    def _read(self, broker: Broker) -> None:
        runs: dict[str, Progress] = {}
        for run in broker.runs():
            try:
                runs[run] = broker.progress(run)
            except RunNotFound:
                continue  # deleted between the listing and the read
        rates = {}
        for run, p in runs.items():
            rates[run] = self._rates.setdefault(run, RateMeter()).update(p.finished)
        for gone in set(self._rates) - set(runs):
            del self._rates[gone]
        self._snapshot = Snapshot(time.monotonic(), True, runs, rates)

    def queue_report(self) -> dict[str, Any]:
        s = self._snapshot
        return {
            "queued": sum(p.waiting for p in s.runs.values()),
            "broker_up": s.broker_up,
            "runs": {
                run: {"state": p.state, "queued": p.waiting, "workers": p.workers}
                for run, p in sorted(s.runs.items())
            },
        }

    def routes(self) -> dict[str, Route]:
        def api_queue() -> tuple[int, bytes, str]:
            body = json.dumps(self.queue_report(), sort_keys=True).encode()
            return 200, body, "application/json"

        return {"/api/queue": api_queue}
