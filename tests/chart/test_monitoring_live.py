"""Every dashboard query and alert expression, asked of a real Prometheus during real runs.

A redis-server, two ``ttg worker`` processes and ``ttg exporter``, each on a
free port, scraped every second by a ``prometheus`` of the test's own, which
also loads the rendered PrometheusRule. The queries are taken from the
rendered chart objects, never retyped. Through the runs' lives each query must
return a plausible value, not merely data:

- a run on two workers, one SIGKILLed mid-run: p50/p95 within the buckets'
  precision of the true chunk time;
- a run with a failing parameter, then ``ttg retry`` of it while no worker
  runs: no counter goes down (Prometheus would read a reset), its ETA is
  unknown, not huge; the retried chunk fails again once workers are back;
- each worker's first chunk of a run: its rate and durations are seen;
- a run of long chunks: the ETA stays near the truth at every reading;
- every worker stopped while a run waits, the broker killed, the exporter
  stopped: the alerts that were active stay active while their source is down.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import scenarios
from tests.chart.monitoring import (
    NAMESPACE,
    RELEASE,
    RELEASE_LABEL,
    Check,
    Monitoring,
    Prometheus,
    Sample,
    both,
    empty,
    grafana_expand,
    once_then,
    pods,
    rendered_monitoring,
    run,
    run_if_any,
    run_inside,
    runs,
    single,
    state,
)
from tests.computes import GATE_ENV, PACE_ENV
from tests.helpers import ROOT, child_env, eventually, ttg_json
from ttg.processes import LocalWorkers, RedisServer, free_port

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.slow]

#: Work per chunk of run A: inside the duration bucket (0.25, 0.315], so a
#: p95 read off the histogram is 0.31 s (the 1-2.5-5 buckets read 0.49 s, 1.7x).
WORK_S = 0.28
#: Run A's chunks, each of A_CHUNK_SIZE parameters paced to WORK_S until the test opens its
#: gate: more than two workers can finish while the slowest check waits (TIMEOUT), then at once.
A_CHUNKS, A_CHUNK_SIZE = 600, 10
#: Run F's chunks, one per worker: the first chunk each worker computes of it.
FIRST_S = 3.5
#: Run L's chunks: long, so a smoothed rate would collapse between them.
LONG_S = 10.0
#: Grafana's $__rate_interval for a 1 s scrape, with room for the exporter's 2 s reads.
RATE_INTERVAL = "15s"
#: How long a counter's step stays in a rate() over RATE_INTERVAL, with a scrape to spare.
RATE_WINDOW_S = 17.0
#: What each check may wait, generously: 2 cores, and CI is loaded.
TIMEOUT = 60
#: The ETA query reads -1 where the run's ETA is unknown (shown "unknown").
UNKNOWN = -1

A, C, F, L, B = "obs-a", "obs-c", "obs-f", "obs-l", "obs-b"


def duration(name: str, true_s: float, label: str = "run") -> Check:
    """Chunk-duration quantile of a run (or pod) within the buckets' precision of the truth.

    All observations near ``true_s``: p50 and p95 read within [0.85, 1.3] x of it
    (the R10 buckets: [0.89, 1.27]); NaN while none is in the window fails.
    """

    def check(samples: list[Sample]) -> None:
        found = [v for labels, v in samples if labels.get(label) == name]
        assert found and all(0.85 * true_s <= v <= 1.3 * true_s for v in found), (name, found)

    return check


def every_pod(true_s: float, count: int) -> Check:
    def check(samples: list[Sample]) -> None:
        assert len(samples) == count, samples
        for labels, _ in samples:
            duration(labels["pod"], true_s, "pod")(samples)

    return check


# -- the rig ---------------------------------------------------------------------------


@dataclass
class Rig:
    prometheus: Prometheus
    monitoring: Monitoring
    redis: RedisServer
    workers: LocalWorkers
    #: One metrics port per worker slot, each a target Prometheus scrapes as pod "worker-N".
    worker_ports: list[int]
    exporter: subprocess.Popen[bytes]
    env: dict[str, str]
    #: The file that ends run A's pace (``tests.computes.paced``).
    gate: Path

    def start_workers(self) -> None:
        for port in self.worker_ports:
            self.workers.start(1, TTG_METRICS_PORT=str(port))

    def queries(self, run_var: str = ".*") -> dict[str, str]:
        """Every panel target ("title/refId") and alert ("alert NAME"): its PromQL, expanded."""
        variables = {
            "namespace": NAMESPACE,
            "release": RELEASE,
            "run": run_var,
            "__rate_interval": RATE_INTERVAL,
        }
        out = {
            f"{p['title']}/{t['refId']}": grafana_expand(t["expr"], variables)
            for p in self.monitoring.panels()
            for t in p["targets"]
        }
        out.update({f"alert {n}": r["expr"] for n, r in self.monitoring.alerts().items()})
        return out

    def _failures(self, queries: dict[str, str], checks: dict[str, Check]) -> dict[str, Any]:
        seen = {name: self.prometheus.query(queries[name]) for name in checks}
        failed = {}
        for name, check in checks.items():
            try:
                check(seen[name])
            except AssertionError as e:
                failed[name] = str(e)
        return {"seen": seen, "failed": failed}

    def expect(
        self, phase: str, checks: dict[str, Check], run_var: str = ".*"
    ) -> dict[str, list[Sample]]:
        """Wait until every query passes its check at once (dashboard $run = ``run_var``)."""
        queries = self.queries(run_var)
        assert set(checks) == set(queries), (
            f"{phase}: a check for each query, no other: "
            f"missing {set(queries) - set(checks)}, unknown {set(checks) - set(queries)}"
        )

        def all_plausible() -> dict[str, list[Sample]]:
            got = self._failures(queries, checks)
            failed = "; ".join(f"{name}: {why}" for name, why in got["failed"].items())
            assert not failed, failed
            seen: dict[str, list[Sample]] = got["seen"]
            return seen

        seen = eventually(all_plausible, timeout=TIMEOUT, interval=0.25, what=phase)
        print(f"\n== {phase}")  # noqa: T201 - shown with -s, and when the test fails
        for name, samples in seen.items():
            values = {labels.get("run") or labels.get("pod") or "": v for labels, v in samples}
            print(f"  {name}: {values}")  # noqa: T201
        return seen

    def hold(
        self,
        phase: str,
        checks: dict[str, Check],
        seconds: float,
        *,
        start: dict[str, Check],
        reached: dict[str, Check] | None = None,
    ) -> None:
        """Once ``start`` passes, every reading passes ``checks``, for ``seconds`` on end.

        ``reached``: checks that must pass at least once meanwhile.
        """
        queries = self.queries()
        eventually(
            lambda: not self._failures(queries, start)["failed"], timeout=TIMEOUT, what=phase
        )
        pending = dict(reached or {})
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got = self._failures(queries, checks)
            assert not got["failed"], f"{phase}: {got['failed']}"
            pending = {
                n: c for n, c in pending.items() if self._failures(queries, {n: c})["failed"]
            }
            time.sleep(0.25)
        assert not pending, f"{phase}: never {self._failures(queries, pending)['failed']}"

    def status(self, run_id: str) -> dict[str, Any]:
        return ttg_json("status", "--run", run_id, env=self.env)

    def seed(self, run_id: str, *args: str) -> None:
        out = ttg_json("seed", "--run", run_id, *args, env=self.env)
        assert out["_exit"] == 0, out


@dataclass
class _Harness:
    """tests.scenarios.Harness over the rig's processes."""

    rig: Rig

    def ttg_json(self, *args: str) -> dict[str, Any]:
        return ttg_json(*args, env=self.rig.env)

    def kill_worker(self, worker: str, sig: int) -> None:
        self.rig.workers.kill(worker, sig)

    def restart_broker(self) -> None:
        raise NotImplementedError


def _target(port: int, pod: str) -> dict[str, Any]:
    # The labels the chart's ServiceMonitor/PodMonitor give every series.
    labels = {"namespace": NAMESPACE, RELEASE_LABEL: RELEASE, "pod": pod}
    return {"targets": [f"127.0.0.1:{port}"], "labels": labels}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with ExitStack() as stack:
        redis = RedisServer(appendonly=False).start()
        stack.callback(redis.stop)
        env = {
            "TTG_BACKEND": "redis",
            "TTG_BROKER_URL": redis.url,
            "TTG_COMPUTE_ALLOW": "ttg.compute,tests",
        }
        gate = tmp_path / "run-a-may-end"
        paced = {GATE_ENV: str(gate), PACE_ENV: str(round(WORK_S * 1000 / A_CHUNK_SIZE))}
        workers = LocalWorkers(
            {**env, **paced, "PYTHONPATH": str(ROOT), "TTG_LOG_FORMAT": "json"}, log_dir=tmp_path
        )
        stack.callback(workers.stop)
        worker_ports = [free_port(), free_port()]
        exporter_port = free_port()
        exporter_log = stack.enter_context((tmp_path / "exporter.log").open("wb"))
        exporter = subprocess.Popen(
            [sys.executable, "-m", "ttg", "exporter"],
            env=child_env({**env, "TTG_METRICS_PORT": str(exporter_port)}),
            stdout=subprocess.DEVNULL,
            stderr=exporter_log,
        )
        stack.callback(lambda: exporter.poll() is None and exporter.kill())
        monitoring = rendered_monitoring()
        prometheus = Prometheus(
            [
                {
                    "job_name": "ttg-exporter",
                    "static_configs": [_target(exporter_port, "exporter")],
                },
                {
                    "job_name": "ttg-worker",
                    "static_configs": [
                        _target(p, f"worker-{i}") for i, p in enumerate(worker_ports)
                    ],
                },
            ],
            monitoring,
        )
        stack.callback(prometheus.stop)
        prometheus.start()
        r = Rig(prometheus, monitoring, redis, workers, worker_ports, exporter, env, gate)
        r.start_workers()
        eventually(
            lambda: (
                set(prometheus.targets_up().values()) == {"up"}
                and len(prometheus.targets_up()) == 3
            ),
            timeout=TIMEOUT,
            what="prometheus scrapes both workers and the exporter",
        )
        yield r
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")  # noqa: T201


QUIET = {
    "alert TTGRunStalled": empty,
    "alert TTGRunWithoutWorkers": empty,
    "alert TTGRunFailures": empty,
    "alert TTGBrokerDown": empty,
    "alert TTGExporterDown": empty,
}
#: Counters of the runs read through increase(): a run that did nothing lately reads 0.
ERRORS = "Redeliveries, retries, duplicates, malformed messages, compute errors"


def quiet_counters(*names: str) -> dict[str, Check]:
    return {f"{ERRORS}/{ref}": both(*(run(n, 0) for n in names)) for ref in "ABCDE"}


def test_dashboard_and_alert_queries_tell_the_truth_through_runs(rig: Rig) -> None:
    w = WORK_S
    # Chunks of 0.28 s with two workers, then one, for as long as the checks take on a
    # loaded machine (a time fixed here ran out once: the kill came at 80%, the run ended
    # before one worker's rates filled a window); then the test lets it finish.
    rig.seed(A, "--params", str(A_CHUNKS * A_CHUNK_SIZE), "--chunk-size", str(A_CHUNK_SIZE),
             "--compute", "tests.computes:paced")  # fmt: skip
    rig.expect(
        "run A, two workers",
        {
            "Run state/A": state(A, "running"),
            "Progress/A": run_inside(A, 0, 1),
            "ETA/A": run(A, 0.1, 3600),
            "Chunks finished /s/A": run_inside(A, 0, 100),
            "Parameters computed /s/A": run_inside(A, 0, 1000),
            "Queue depth/A": run(A, 1, A_CHUNKS),
            "Live workers per run/A": run(A, 2),
            "Failed chunks/A": run(A, 0),
            "Failed chunks/B": run(A, 0),
            "Failed chunks/C": empty,
            **quiet_counters(A),
            "Chunk duration p50 / p95 per run/A": duration(A, w),
            "Chunk duration p50 / p95 per run/B": duration(A, w),
            "Chunk duration p95 per worker/A": every_pod(w, 2),
            "Chunks completed /s per worker/A": pods(2, 0.5, 10),
            "Chunks in flight per worker/A": pods(2, 0, 10, total_at_least=1),
            "Broker reachable/A": single(2),
            "Broker reachable/B": single(1),
            **QUIET,
        },
    )

    killed = scenarios.kill_worker_holding_chunk_at(_Harness(rig), A, 0, timeout=TIMEOUT)
    assert killed.redelivery_delay_s is not None
    rig.expect(
        "run A, one worker SIGKILLed",
        {
            "Run state/A": state(A, "running"),
            "Progress/A": run_inside(A, 0, 1),
            "ETA/A": run(A, 0.1, 3600),
            "Chunks finished /s/A": run_inside(A, 0, 100),
            "Parameters computed /s/A": run_inside(A, 0, 1000),
            "Queue depth/A": run(A, 1, A_CHUNKS),
            "Live workers per run/A": run(A, 1),
            "Failed chunks/A": run(A, 0),
            "Failed chunks/B": run(A, 0),
            "Failed chunks/C": empty,
            **quiet_counters(A),
            # The kill's redelivery: the counter existed at 0, so increase() sees the step,
            # for a rate window; the other checks may settle after it has left it.
            f"{ERRORS}/A": once_then(run(A, 1, 10), run(A, 0, 10)),
            "Chunk duration p50 / p95 per run/A": duration(A, w),
            "Chunk duration p50 / p95 per run/B": duration(A, w),
            "Chunk duration p95 per worker/A": every_pod(w, 1),
            "Chunks completed /s per worker/A": pods(1, 0.5, 10),
            "Chunks in flight per worker/A": pods(1, 0, 10),
            "Broker reachable/A": single(1),
            "Broker reachable/B": single(1),
            **QUIET,
        },
    )

    rig.gate.touch()
    scenarios.wait_complete(_Harness(rig), A, timeout=TIMEOUT)
    # A failing run: parameter 13 raises ValueError (permanent), so its chunk is
    # recorded with errors and the run completes with failures. Counted down, 13
    # is in the 9th of 10 chunks of 0.5 s: the exporter has read the run (its
    # counters at 0) before the step, which increase() can only see then.
    rig.seed(
        C,
        "--space",
        "range:99:-1:-1",
        "--chunk-size",
        "10",
        "--work-ms",
        "500",
        "--compute",
        "tests.computes:explode_on_13",
    )
    scenarios.wait_complete(_Harness(rig), C, timeout=TIMEOUT)
    rig.expect(
        "run A complete, run C complete with failures",
        {
            "Run state/A": both(state(A, "complete"), state(C, "complete-with-failures")),
            "Progress/A": both(run(A, 1), run(C, 1)),
            "ETA/A": both(run(A, 0), run(C, 0)),
            "Chunks finished /s/A": run(A, 0, 100),
            "Parameters computed /s/A": run(A, 0, 1000),
            "Queue depth/A": both(run(A, 0), run(C, 0)),
            "Live workers per run/A": run(A, 0, 1),
            "Failed chunks/A": both(run(A, 0), run(C, 0)),
            "Failed chunks/B": both(run(A, 0), run(C, 1)),
            "Failed chunks/C": empty,
            **quiet_counters(C),
            f"{ERRORS}/A": run(A, 0, 10),
            f"{ERRORS}/D": both(run(A, 0), run(C, 1, 10)),
            # A's chunks ended with it: its last, unpaced, ones read ~0 s until they leave
            # the rate window, then NaN.
            "Chunk duration p50 / p95 per run/A": run_if_any(A, 0.85 * w, 1.3 * w),
            "Chunk duration p50 / p95 per run/B": run_if_any(A, 0.85 * w, 1.3 * w),
            "Chunk duration p95 per worker/A": lambda samples: None,  # C's chunks: ~0 s
            "Chunks completed /s per worker/A": pods(1, 0, 10),
            "Chunks in flight per worker/A": pods(1, 0, 10),
            "Broker reachable/A": single(1),
            "Broker reachable/B": single(1),
            **QUIET,
            "alert TTGRunFailures": both(runs(C), single(1)),
        },
    )

    # `ttg retry` of C while no worker runs: its failed chunk leaves the counts and
    # waits. The counters of finished chunks and parameters used to go down by
    # what the retry took back, which Prometheus reads as a reset (a rate of every
    # chunk since seeding); and the ETA of a run nobody serves read 10^12 s.
    rig.workers.stop()
    settled = {
        "Run state/A": both(state(A, "complete"), state(C, "complete-with-failures")),
        "Progress/A": both(run(A, 1), run(C, 1)),
        "ETA/A": both(run(A, 0), run(C, 0)),
        "Chunks finished /s/A": both(run(A, 0), run(C, 0)),
        "Parameters computed /s/A": both(run(A, 0), run(C, 0)),
        "Failed chunks/B": run(C, 1),
        f"{ERRORS}/E": both(run(A, 0), run(C, 0)),
        "alert TTGRunFailures": runs(C),
    }
    rig.expect("workers stopped, A and C settled", settled | _no_worker(settled))
    report = ttg_json("retry", "--run", C, env=rig.env)
    assert report["_exit"] == 0 and report["errors"] == 1, report
    never_down = {
        "Chunks finished /s/A": both(run(A, 0), run(C, 0)),
        "Parameters computed /s/A": both(run(A, 0), run(C, 0)),
        "ETA/A": both(run(A, 0), run(C, UNKNOWN)),
    }
    # From the exporter's first read of the retry, for as long as its step is in
    # a rate window; meanwhile the retry's own counter shows it.
    rig.hold(
        "ttg retry of C, no worker",
        never_down,
        seconds=RATE_WINDOW_S,
        start={"Queue depth/A": run(C, 1)},
        reached={f"{ERRORS}/E": both(run(A, 0), run(C, 1, 2))},
    )
    retried = {
        "Run state/A": both(state(A, "complete"), state(C, "running")),
        "Progress/A": both(run(A, 1), run(C, 0.9)),
        **never_down,
        "Queue depth/A": both(run(A, 0), run(C, 1)),
        "Live workers per run/A": both(run(A, 0), run(C, 0)),
        "Failed chunks/A": run(C, 0),
        "Failed chunks/B": run(C, 0),
        "alert TTGRunWithoutWorkers": runs(C),
        "alert TTGRunFailures": empty,
    }
    rig.expect("ttg retry of C, no worker", retried | _no_worker(retried))

    # Workers back: C's chunk fails again (a permanent error), C completes with failures.
    rig.start_workers()
    scenarios.wait_complete(_Harness(rig), C, timeout=TIMEOUT)
    # Run F: one chunk of FIRST_S s for each worker, their first of the run. A
    # worker's series of a run used to appear at its first increment, which rate()
    # and histogram_quantile() cannot see: the dashboard read no rate and no
    # duration for each worker's first chunks (here: its only one).
    rig.seed(F, "--params", "20", "--chunk-size", "10", "--work-ms", str(int(FIRST_S * 1000)))
    first = {
        "Run state/A": state(F, "complete"),
        "Progress/A": run(F, 1),
        "ETA/A": run(F, 0),
        "Chunks finished /s/A": run_inside(F, 0, 1),
        "Parameters computed /s/A": run_inside(F, 0, 10),
        "Queue depth/A": run(F, 0),
        "Live workers per run/A": run(F, 0, 2),
        "Failed chunks/A": run(F, 0),
        "Failed chunks/B": run(F, 0),
        "Failed chunks/C": empty,
        **quiet_counters(F),
        "Chunk duration p50 / p95 per run/A": duration(F, FIRST_S),
        "Chunk duration p50 / p95 per run/B": duration(F, FIRST_S),
        "Chunk duration p95 per worker/A": every_pod(FIRST_S, 2),
        "Chunks completed /s per worker/A": pods(2, 0.01, 1),
        "Chunks in flight per worker/A": pods(2, 0, 10),
        "Broker reachable/A": single(2),
        "Broker reachable/B": single(1),
        **QUIET,
        "alert TTGRunFailures": both(runs(C), single(1)),
    }
    rig.expect("run F: each worker's first chunk", first, run_var=F)

    eta_follows_the_truth_of_long_chunks(rig)

    # Every worker stopped (SIGTERM); then a run is seeded: its work waits and no
    # worker serves it. The exporter still reports it, with 0 workers.
    rig.workers.stop()
    rig.seed(B, "--params", "100", "--chunk-size", "10")
    waiting: dict[str, Check] = {
        "Run state/A": both(state(B, "running"), state(C, "complete-with-failures")),
        "Progress/A": both(run(A, 1), run(B, 0)),
        "ETA/A": both(run(A, 0), run(B, UNKNOWN)),
        "Chunks finished /s/A": both(run(A, 0), run(B, 0)),
        "Parameters computed /s/A": both(run(A, 0), run(B, 0)),
        "Queue depth/A": both(run(A, 0), run(B, 10)),
        "Live workers per run/A": both(run(A, 0), run(B, 0)),
        "Failed chunks/A": run(B, 0),
        "Failed chunks/B": both(run(B, 0), run(C, 1)),
        "alert TTGRunWithoutWorkers": both(runs(B), single(10)),
        "alert TTGRunFailures": runs(C),
    }
    waiting |= _no_worker(waiting)
    rig.expect("all workers stopped, run B waits", waiting)

    # The server itself holds the rules: B's alert is pending (for: 5m), C's firing.
    Active = dict[tuple[str, str | None], str]

    def active(want: Active) -> bool:
        alerts = {
            (a["labels"]["alertname"], a["labels"].get("run")): a["state"]
            for a in rig.prometheus.alerts()
        }
        assert alerts == want, alerts
        return True

    before: Active = {("TTGRunWithoutWorkers", B): "pending", ("TTGRunFailures", C): "firing"}
    eventually(lambda: active(before), timeout=TIMEOUT, what="alerts active in the server")

    # The broker dies: the exporter says so, and serves its last read, frozen.
    rig.redis.kill(signal.SIGKILL)
    rig.expect(
        "broker killed",
        {**waiting, "Broker reachable/B": single(0), "alert TTGBrokerDown": single(0)},
    )

    # The exporter stops: every run figure goes. The alerts that were active stay
    # active: their source is down, the trouble did not end (the failures alert
    # used to resolve at once). TTGExporterDown says why.
    rig.exporter.terminate()
    assert rig.exporter.wait(timeout=20) == 0
    gone: dict[str, Check] = dict.fromkeys(rig.queries(), empty)
    gone["Broker reachable/A"] = single(0)  # no worker either
    gone["alert TTGExporterDown"] = single(1)
    gone["alert TTGRunWithoutWorkers"] = both(runs(B), single(10))
    gone["alert TTGRunFailures"] = both(runs(C), single(1))
    gone["alert TTGBrokerDown"] = single(0)
    rig.expect("exporter stopped", gone)
    held: Active = {
        **before,
        ("TTGBrokerDown", None): "pending",
        ("TTGExporterDown", None): "pending",
    }
    alerts_gone = {name: gone[name] for name in gone if name.startswith("alert ")}
    rig.hold("exporter stopped", alerts_gone, seconds=10, start=alerts_gone)
    eventually(lambda: active(held), timeout=TIMEOUT, what="alerts held in the server")

    health = rig.prometheus.rule_health()
    assert set(health) == set(rig.monitoring.alerts())
    assert all(h == ("ok", "") for h in health.values()), health


def eta_follows_the_truth_of_long_chunks(rig: Rig) -> None:
    """Run L, 8 chunks of LONG_S s on two workers: its ETA near the truth at every reading.

    A smoothed rate halving every 10 s without a finished chunk read a few
    seconds right after each pair of chunks, and ever more between pairs. The
    truth is known once the run is complete; every ETA read while it ran must
    be within 2.5x of it, give or take the exporter's and the scrape's delay
    and one chunk that is about to finish.
    """
    rig.seed(L, "--params", "80", "--chunk-size", "10", "--work-ms", str(int(LONG_S * 1000)))
    queries = rig.queries(run_var=L)
    eta_query, progress_query = queries["ETA/A"], queries["Progress/A"]
    readings: list[tuple[float, float, float]] = []  # (when, progress, eta)
    done_at = None
    deadline = time.monotonic() + 8 * LONG_S + TIMEOUT
    while done_at is None:
        assert time.monotonic() < deadline, f"run L did not complete: {readings[-3:]}"
        now = time.time()
        progress = rig.prometheus.query(progress_query, at=now)
        eta = rig.prometheus.query(eta_query, at=now)
        if progress and eta:
            readings.append((now, progress[0][1], eta[0][1]))
            if progress[0][1] == 1:
                done_at = now
        time.sleep(0.5)
    while_running = [(t, e) for t, p, e in readings if 0 < p < 1]
    assert len(while_running) > 20, readings
    wrong = [
        (round(e, 1), round(done_at - t, 1))
        for t, e in while_running
        if not (done_at - t) / 2.5 - 5 <= e <= 2.5 * (done_at - t) + 8
    ]
    assert not wrong, f"ETA read (shown, true): {wrong}"
    ratios = [e / (done_at - t) for t, e in while_running if done_at - t > LONG_S]
    print(f"\n== run L: ETA / time left, {min(ratios):.2f} to {max(ratios):.2f}")  # noqa: T201


def _no_worker(given: dict[str, Check]) -> dict[str, Check]:
    """Checks for the queries ``given`` leaves out, while no worker runs and run A is long done.

    The phase gives what it is about (each run's state, progress, ETA, rates);
    this adds what holds whatever the runs do: no worker series, A's figures
    settled, the alerts quiet but for the ones ``given`` names.
    """
    rest: dict[str, Check] = {
        "Queue depth/A": run(A, 0),
        "Live workers per run/A": run(A, 0),
        "Failed chunks/A": run(A, 0),
        "Failed chunks/B": run(A, 0),
        "Failed chunks/C": empty,
        **{f"{ERRORS}/{ref}": run(A, 0) for ref in "ABCDE"},
        # No worker, no worker series.
        "Chunk duration p50 / p95 per run/A": empty,
        "Chunk duration p50 / p95 per run/B": empty,
        "Chunk duration p95 per worker/A": empty,
        "Chunks completed /s per worker/A": empty,
        "Chunks in flight per worker/A": empty,
        "Broker reachable/A": single(0),
        "Broker reachable/B": single(1),
        **QUIET,
    }
    return {name: check for name, check in rest.items() if name not in given}
