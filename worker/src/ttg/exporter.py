"""``ttg exporter``: every run's figures, once per installation, with or without workers.

Per-run figures exported by the workers themselves were one series per worker
(a dashboard had to take ``max by (run)``), froze when a run finished, and
vanished with the last worker — taking KEDA's queue depth with them, so a
Deployment scaled to zero could never scale up. The exporter reads the
broker's own tallies every few seconds and serves them once:

- ``/metrics``: one series per run (docs/contract.md lists them). Counters
  (``..._total``) are the broker's tallies, so they exist from seeding at 0
  and ``rate()`` sees every step; they only grow (a ``ttg retry`` adds to
  ``ttg_run_chunks_retried_total``, it never takes finished chunks back, which
  Prometheus would read as a counter reset). Gauges are the run's state now.
- ``/api/queue``: ``{"queued": N, "runs": {...}}``, the work waiting for
  workers, for KEDA's ``metrics-api`` scaler (no Prometheus needed).

One run's garbage (a tally that is not a number, a spec that cannot be read)
never stops the others: that run keeps its last good figures, frozen, and
``ttg_run_problems`` says so; every other run is read as usual, and the broker
is reported down only when the broker is.
"""

from __future__ import annotations

import dataclasses
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
from ttg.errors import AuthenticationError, BrokerConnectionError, RunNotFound, TTGError
from ttg.httpd import Route
from ttg.metrics import Probes
from ttg.rate import RateMeter
from ttg.run import Progress

log = logging.getLogger(__name__)

#: Seconds between two reads of the broker.
INTERVAL_SECONDS = 2.0
#: A read older than this makes /readyz fail.
STALE_SECONDS = 30.0
#: The same problem of a run is logged again after this long.
PROBLEM_LOG_SECONDS = 300.0
#: Longest problem text kept (logs, /api/queue).
PROBLEM_CHARS = 300
#: ``ttg_run_info``'s state for a run that could never be read.
UNREADABLE = "unreadable"


@dataclass
class Snapshot:
    """The last read of every run."""

    at: float = 0.0
    broker_up: bool = False
    #: Each run's last good read (for a run whose last read failed: the one before).
    runs: dict[str, Progress] = field(default_factory=dict)
    #: Seconds until each run finishes, for runs where it is known.
    etas: dict[str, float] = field(default_factory=dict)
    #: Runs whose last read failed: why (one line).
    problems: dict[str, str] = field(default_factory=dict)


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
                ("ttg_run_eta_seconds", "Seconds until the run finishes (absent: unknown)"),
                ("ttg_run_seeded_timestamp_seconds", "When the run was seeded (Unix time)"),
                ("ttg_run_problems", "Problems in the run's data (1 if unreadable)"),
            )
        }
        counters = {
            name: CounterMetricFamily(name, text, labels=["run"])
            for name, text in (
                ("ttg_run_chunks_finished", "Chunk outcomes counted, each retry round's again"),
                ("ttg_run_parameters_finished", "Parameters computed with a result, retries too"),
                ("ttg_run_chunks_retried", "Chunks re-queued by ttg retry"),
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
                "ttg_run_problems": _problems(p) + (1 if run in s.problems else 0),
            }
            if p.workers is not None:
                values["ttg_run_workers"] = p.workers
            if p.seeded_at is not None:
                values["ttg_run_seeded_timestamp_seconds"] = p.seeded_at
            if run in s.etas:
                values["ttg_run_eta_seconds"] = s.etas[run]
            for name, value in values.items():
                gauges[name].add_metric([run], value)
            for name, value in (
                ("ttg_run_chunks_finished", p.finished + p.retried),
                ("ttg_run_parameters_finished", p.done_params + p.retried_params),
                ("ttg_run_chunks_retried", p.retried),
                ("ttg_run_redeliveries", p.redelivered),
                ("ttg_run_failures", p.failed),
                ("ttg_run_duplicates", p.duplicates),
                ("ttg_run_malformed", p.malformed),
            ):
                counters[name].add_metric([run], value)
        for run in sorted(set(s.problems) - set(s.runs)):
            # Never read: no figure to give, but the run and its problem are known.
            info.add_metric([run, UNREADABLE, self.backend], 1)
            gauges["ttg_run_problems"].add_metric([run], 1)
        yield info
        yield from gauges.values()
        yield from counters.values()


def _problems(p: Progress) -> int:
    # Problems the backend's decoding found in the run's records (a Progress field
    # that comes with the validating decode layer; 0 before it).
    return len(getattr(p, "problems", None) or ())


def _one_line(e: Exception) -> str:
    """An exception as one printable line: what garbage in the broker made a read fail."""
    text = str(e) if isinstance(e, TTGError) else f"{type(e).__name__}: {e}"
    line = "".join(c if c.isprintable() else "?" for c in text.split("\n", 1)[0])
    return line[:PROBLEM_CHARS]


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
        #: run -> (problem, when it was last logged)
        self._logged: dict[str, tuple[str, float]] = {}
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
            except Exception as e:
                # TTGError: the broker is away or refuses us. Anything else came from
                # garbage in the list of runs (not one run's): the read failed all the
                # same, and the exporter must outlive it (KEDA and Prometheus read it).
                log.warning("cannot read the broker: %s", _one_line(e))
                self._snapshot = dataclasses.replace(
                    self._snapshot, at=time.monotonic(), broker_up=False
                )
                if broker is not None:
                    broker.close()
                broker = None
            self._stop.wait(self.interval)
        if broker is not None:
            broker.close()

    def _read(self, broker: Broker) -> None:
        runs: dict[str, Progress] = {}
        problems: dict[str, str] = {}
        for run in broker.runs():
            try:
                runs[run] = broker.progress(run)
            except RunNotFound:
                continue  # deleted between the listing and the read
            except (BrokerConnectionError, AuthenticationError):
                raise  # the broker, not the run: the whole read failed
            except Exception as e:
                # One run's garbage (RunDataError from the decode layer, or whatever
                # a decoding raises): that run keeps its last good figures.
                problems[run] = _one_line(e)
                self._log_problem(run, problems[run])
                if run in self._snapshot.runs:
                    runs[run] = self._snapshot.runs[run]
        now = time.monotonic()
        etas: dict[str, float] = {}
        for run, p in runs.items():
            if run in problems:
                continue  # frozen figures say nothing of the time left
            meter = self._rates.setdefault(run, RateMeter())
            meter.update(p.finished + p.retried, now)
            eta = _eta(p, meter)
            if eta is not None:
                etas[run] = eta
        for gone in set(self._rates) - set(runs):
            del self._rates[gone]
        for gone in set(self._logged) - set(problems):
            del self._logged[gone]
        self._snapshot = Snapshot(now, True, runs, etas, problems)

    def _log_problem(self, run: str, problem: str) -> None:
        last = self._logged.get(run)
        now = time.monotonic()
        if last is None or last[0] != problem or now - last[1] > PROBLEM_LOG_SECONDS:
            self._logged[run] = (problem, now)
            log.warning("run %s cannot be read, other runs go on: %s", run, problem)

    def queue_report(self) -> dict[str, Any]:
        s = self._snapshot
        runs: dict[str, dict[str, Any]] = {
            run: {"state": p.state, "queued": p.waiting, "workers": p.workers}
            for run, p in s.runs.items()
        }
        for run, problem in s.problems.items():
            runs.setdefault(run, {"state": UNREADABLE, "queued": 0, "workers": None})
            runs[run]["problem"] = problem
        return {
            "queued": sum(p.waiting for p in s.runs.values()),
            "broker_up": s.broker_up,
            "runs": dict(sorted(runs.items())),
        }

    def routes(self) -> dict[str, Route]:
        def api_queue() -> tuple[int, bytes, str]:
            body = json.dumps(self.queue_report(), sort_keys=True).encode()
            return 200, body, "application/json"

        return {"/api/queue": api_queue}


def _eta(p: Progress, meter: RateMeter) -> float | None:
    """Seconds until the run finishes: 0 once it has, None while nobody can say.

    Unknown, rather than a number, while the run is paused or cancelled, while no
    worker serves it (the time left is however long until one comes), and until
    the rate of finished chunks is known (``RateMeter``).
    """
    remaining = p.total_chunks - p.finished
    if remaining <= 0:
        return 0.0
    if p.state not in ("seeding", "running") or p.workers == 0:
        return None
    return meter.eta(remaining)
