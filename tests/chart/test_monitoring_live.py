"""Every dashboard query and alert expression, asked of a real Prometheus during a real run.

A redis-server, two ``ttg worker`` processes and ``ttg exporter``, each on a
free port, scraped every second by a ``prometheus`` of the test's own, which
also loads the rendered PrometheusRule. The queries are taken from the
rendered chart objects, never retyped. Through a run's life (two workers; one
SIGKILLed mid-run; complete; a failing run; every worker stopped while a
second run waits; the broker killed; the exporter stopped) each query must
return a plausible value, not merely data.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
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
    Monitoring,
    Prometheus,
    Sample,
    grafana_expand,
    rendered_monitoring,
)
from tests.helpers import ROOT, child_env, eventually, ttg_json
from ttg.processes import LocalWorkers, RedisServer, free_port

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.slow]

#: Simulated work per chunk: inside the duration bucket (0.1, 0.25], so a p95
#: read off the histogram is 0.24 s, near the truth.
WORK_S = 0.2
#: Grafana's $__rate_interval for a 1 s scrape, with room for the exporter's 2 s reads.
RATE_INTERVAL = "15s"
#: What each check may wait, generously: 2 cores, and CI is loaded.
TIMEOUT = 60

A, C, B = "obs-a", "obs-c", "obs-b"

#: A check of one query's samples; raises AssertionError when implausible.
Check = Callable[[list[Sample]], None]


# -- checks on a query's samples -------------------------------------------------------


def _value(samples: list[Sample], label: str, want: str) -> float:
    found = [v for labels, v in samples if labels.get(label) == want]
    assert len(found) == 1, f"{label}={want}: {len(found)} samples in {samples}"
    return found[0]


def run(name: str, lo: float, hi: float | None = None) -> Check:
    """The run's one sample is within [lo, hi] (== lo without hi)."""
    hi = lo if hi is None else hi

    def check(samples: list[Sample]) -> None:
        v = _value(samples, "run", name)
        assert lo <= v <= hi, f"{name}: {v} not in [{lo}, {hi}]"

    return check


def run_inside(name: str, lo: float, hi: float) -> Check:
    """The run's one sample is strictly between lo and hi."""

    def check(samples: list[Sample]) -> None:
        v = _value(samples, "run", name)
        assert lo < v < hi, f"{name}: {v} not in ({lo}, {hi})"

    return check


def run_if_any(name: str, lo: float, hi: float) -> Check:
    """The run has no sample, a NaN one (no observation in the window), or one in [lo, hi]."""

    def check(samples: list[Sample]) -> None:
        found = [v for labels, v in samples if labels.get("run") == name]
        assert all(math.isnan(v) or lo <= v <= hi for v in found), f"{name}: {found}"

    return check


def no_run(name: str) -> Check:
    def check(samples: list[Sample]) -> None:
        assert all(labels.get("run") != name for labels, _ in samples), samples

    return check


def state(name: str, want: str) -> Check:
    def check(samples: list[Sample]) -> None:
        states = [labels["state"] for labels, _ in samples if labels.get("run") == name]
        assert states == [want], f"{name}: states {states}"

    return check


def pods(count: int, lo: float, hi: float, *, total_at_least: float = 0) -> Check:
    """One sample per live worker pod, each within [lo, hi]."""

    def check(samples: list[Sample]) -> None:
        assert len(samples) == count and all("pod" in labels for labels, _ in samples), samples
        assert all(lo <= v <= hi for _, v in samples), f"not in [{lo}, {hi}]: {samples}"
        assert sum(v for _, v in samples) >= total_at_least, samples

    return check


def single(lo: float, hi: float | None = None) -> Check:
    hi = lo if hi is None else hi

    def check(samples: list[Sample]) -> None:
        assert len(samples) == 1 and lo <= samples[0][1] <= hi, f"want [{lo}, {hi}]: {samples}"

    return check


def runs(*names: str) -> Check:
    """Exactly these runs (an alert expression firing for them, and only them)."""

    def check(samples: list[Sample]) -> None:
        assert sorted(labels.get("run", "") for labels, _ in samples) == sorted(names), samples

    return check


def empty(samples: list[Sample]) -> None:
    assert samples == [], samples


def both(*checks: Check) -> Check:
    def check(samples: list[Sample]) -> None:
        for c in checks:
            c(samples)

    return check


# -- the rig ---------------------------------------------------------------------------


@dataclass
class Rig:
    prometheus: Prometheus
    monitoring: Monitoring
    redis: RedisServer
    workers: LocalWorkers
    exporter: subprocess.Popen[bytes]
    env: dict[str, str]

    def queries(self) -> dict[str, str]:
        """Every panel target ("title/refId") and alert ("alert NAME"): its PromQL, expanded."""
        variables = {
            "namespace": NAMESPACE,
            "release": RELEASE,
            "run": ".*",
            "__rate_interval": RATE_INTERVAL,
        }
        out = {
            f"{p['title']}/{t['refId']}": grafana_expand(t["expr"], variables)
            for p in self.monitoring.panels()
            for t in p["targets"]
        }
        out.update({f"alert {n}": r["expr"] for n, r in self.monitoring.alerts().items()})
        return out

    def expect(self, phase: str, checks: dict[str, Check]) -> dict[str, list[Sample]]:
        """Wait until every query passes its check at once; the samples then."""
        queries = self.queries()
        assert set(checks) == set(queries), (
            f"{phase}: a check for each query, no other: "
            f"missing {set(queries) - set(checks)}, unknown {set(checks) - set(queries)}"
        )

        def all_plausible() -> dict[str, list[Sample]]:
            seen = {name: self.prometheus.query(expr) for name, expr in queries.items()}
            failed = {}
            for name, check in checks.items():
                try:
                    check(seen[name])
                except AssertionError as e:
                    failed[name] = str(e)
            assert not failed, failed
            return seen

        seen = eventually(all_plausible, timeout=TIMEOUT, interval=0.25, what=phase)
        print(f"\n== {phase}")  # noqa: T201 - shown with -s, and when the test fails
        for name, samples in seen.items():
            values = {labels.get("run") or labels.get("pod") or "": v for labels, v in samples}
            print(f"  {name}: {values}")  # noqa: T201
        return seen

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
        workers = LocalWorkers(
            {**env, "PYTHONPATH": str(ROOT), "TTG_LOG_FORMAT": "json"}, log_dir=tmp_path
        )
        stack.callback(workers.stop)
        ports = {}
        for _ in range(2):
            port = free_port()
            (name,) = workers.start(1, TTG_METRICS_PORT=str(port))
            ports[name] = port
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
                    "static_configs": [_target(p, name) for name, p in ports.items()],
                },
            ],
            monitoring,
        )
        stack.callback(prometheus.stop)
        prometheus.start()
        eventually(
            lambda: (
                set(prometheus.targets_up().values()) == {"up"}
                and len(prometheus.targets_up()) == 3
            ),
            timeout=TIMEOUT,
            what="prometheus scrapes both workers and the exporter",
        )
        yield Rig(prometheus, monitoring, redis, workers, exporter, env)
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")  # noqa: T201


QUIET = {
    "alert TTGRunStalled": empty,
    "alert TTGRunWithoutWorkers": empty,
    "alert TTGRunFailures": empty,
    "alert TTGBrokerDown": empty,
    "alert TTGExporterDown": empty,
}


def test_dashboard_and_alert_queries_tell_the_truth_through_a_run(rig: Rig) -> None:
    w = WORK_S
    # 150 chunks of 0.2 s: ~25 s with two workers, then one.
    rig.seed(A, "--params", "1500", "--chunk-size", "10", "--work-ms", str(int(w * 1000)))
    rig.expect(
        "run A, two workers",
        {
            "Run state/A": state(A, "running"),
            "Progress/A": run_inside(A, 0, 1),
            "ETA/A": run(A, 0.1, 3600),
            "Chunks finished /s/A": run_inside(A, 0, 100),
            "Parameters computed /s/A": run_inside(A, 0, 1000),
            "Queue depth/A": run(A, 1, 150),
            "Live workers per run/A": run(A, 2),
            "Failed chunks/A": run(A, 0),
            "Failed chunks/B": run(A, 0),
            "Redeliveries, duplicates, malformed messages, compute errors/A": run(A, 0),
            "Redeliveries, duplicates, malformed messages, compute errors/B": run(A, 0),
            "Redeliveries, duplicates, malformed messages, compute errors/C": run(A, 0),
            "Redeliveries, duplicates, malformed messages, compute errors/D": run(A, 0),
            # Every observation in the bucket (0.1, 0.25]: p50 0.175, p95 0.2425.
            "Chunk duration p50 / p95 per run/A": run_inside(A, 0.1, 0.25),
            "Chunk duration p50 / p95 per run/B": run(A, 0.9 * w, 0.26),
            "Chunk duration p95 per worker/A": pods(2, 0.9 * w, 0.26),
            "Chunks completed /s per worker/A": pods(2, 0.5, 10),
            "Chunks in flight per worker/A": pods(2, 0, 10, total_at_least=1),
            "Broker reachable/A": single(2),
            "Broker reachable/B": single(1),
            **QUIET,
        },
    )

    killed = scenarios.kill_worker_holding_chunk_at(_Harness(rig), A, 0.3, timeout=TIMEOUT)
    assert killed.redelivery_delay_s is not None
    rig.expect(
        "run A, one worker SIGKILLed",
        {
            "Run state/A": state(A, "running"),
            "Progress/A": run_inside(A, 0.3, 1),
            "ETA/A": run(A, 0.1, 3600),
            "Chunks finished /s/A": run_inside(A, 0, 100),
            "Parameters computed /s/A": run_inside(A, 0, 1000),
            "Queue depth/A": run(A, 1, 105),
            "Live workers per run/A": run(A, 1),
            "Failed chunks/A": run(A, 0),
            "Failed chunks/B": run(A, 0),
            # The kill's redelivery: the counter existed at 0, so increase() sees the step.
            "Redeliveries, duplicates, malformed messages, compute errors/A": run(A, 1, 10),
            "Redeliveries, duplicates, malformed messages, compute errors/B": run(A, 0),
            "Redeliveries, duplicates, malformed messages, compute errors/C": run(A, 0),
            "Redeliveries, duplicates, malformed messages, compute errors/D": run(A, 0),
            "Chunk duration p50 / p95 per run/A": run_inside(A, 0.1, 0.25),
            "Chunk duration p50 / p95 per run/B": run(A, 0.9 * w, 0.26),
            "Chunk duration p95 per worker/A": pods(1, 0.9 * w, 0.26),
            "Chunks completed /s per worker/A": pods(1, 0.5, 10),
            "Chunks in flight per worker/A": pods(1, 0, 10),
            "Broker reachable/A": single(1),
            "Broker reachable/B": single(1),
            **QUIET,
        },
    )

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
            "Redeliveries, duplicates, malformed messages, compute errors/A": run(A, 0, 10),
            "Redeliveries, duplicates, malformed messages, compute errors/B": run(A, 0),
            "Redeliveries, duplicates, malformed messages, compute errors/C": run(C, 0),
            "Redeliveries, duplicates, malformed messages, compute errors/D": both(
                run(A, 0), run(C, 1, 10)
            ),
            # A's chunks ended with it: NaN once its last ones leave the rate window.
            "Chunk duration p50 / p95 per run/A": run_if_any(A, 0.1, 0.25),
            "Chunk duration p50 / p95 per run/B": run_if_any(A, 0.9 * w, 0.26),
            "Chunk duration p95 per worker/A": lambda samples: None,  # C's chunks: ~0 s
            "Chunks completed /s per worker/A": pods(1, 0, 10),
            "Chunks in flight per worker/A": pods(1, 0, 10),
            "Broker reachable/A": single(1),
            "Broker reachable/B": single(1),
            **QUIET,
            "alert TTGRunFailures": both(runs(C), single(1)),
        },
    )

    # Every worker stopped (SIGTERM); then a second run is seeded: its work waits
    # and no worker serves it. The exporter still reports it, with 0 workers.
    rig.workers.stop()
    rig.seed(B, "--params", "100", "--chunk-size", "10")
    waiting: dict[str, Check] = {
        "Run state/A": both(state(A, "complete"), state(B, "running")),
        "Progress/A": both(run(A, 1), run(B, 0)),
        "ETA/A": both(run(A, 0), no_run(B)),
        # A finished more than a rate window ago: its rate is 0, not frozen.
        "Chunks finished /s/A": both(run(A, 0), run(B, 0)),
        "Parameters computed /s/A": both(run(A, 0), run(B, 0)),
        "Queue depth/A": both(run(A, 0), run(B, 10)),
        "Live workers per run/A": both(run(A, 0), run(B, 0)),
        "Failed chunks/A": run(B, 0),
        "Failed chunks/B": both(run(B, 0), run(C, 1)),
        "Redeliveries, duplicates, malformed messages, compute errors/A": run(B, 0),
        "Redeliveries, duplicates, malformed messages, compute errors/B": run(B, 0),
        "Redeliveries, duplicates, malformed messages, compute errors/C": run(B, 0),
        "Redeliveries, duplicates, malformed messages, compute errors/D": run(B, 0),
        # No worker, no worker series.
        "Chunk duration p50 / p95 per run/A": empty,
        "Chunk duration p50 / p95 per run/B": empty,
        "Chunk duration p95 per worker/A": empty,
        "Chunks completed /s per worker/A": empty,
        "Chunks in flight per worker/A": empty,
        "Broker reachable/A": single(0),
        "Broker reachable/B": single(1),
        **QUIET,
        "alert TTGRunWithoutWorkers": both(runs(B), single(10)),
        "alert TTGRunFailures": runs(C),
    }
    rig.expect("all workers stopped, run B waits", waiting)

    # The server itself holds the rules: B's alert is pending (for: 5m), C's firing.
    def active() -> bool:
        alerts = {
            (a["labels"]["alertname"], a["labels"].get("run")): a["state"]
            for a in rig.prometheus.alerts()
        }
        assert alerts == {("TTGRunWithoutWorkers", B): "pending", ("TTGRunFailures", C): "firing"}
        return True

    eventually(active, timeout=TIMEOUT, what="alerts active in the server")

    # The broker dies: the exporter says so, and serves its last read, frozen.
    rig.redis.kill(signal.SIGKILL)
    rig.expect(
        "broker killed",
        {**waiting, "Broker reachable/B": single(0), "alert TTGBrokerDown": single(0)},
    )

    # The exporter stops: every run figure goes, and its absence is the alert.
    rig.exporter.terminate()
    assert rig.exporter.wait(timeout=20) == 0
    gone: dict[str, Check] = dict.fromkeys(rig.queries(), empty)
    gone["Broker reachable/A"] = single(0)  # no worker either
    gone["alert TTGExporterDown"] = single(1)
    rig.expect("exporter stopped", gone)

    health = rig.prometheus.rule_health()
    assert set(health) == set(rig.monitoring.alerts())
    assert all(h == ("ok", "") for h in health.values()), health
