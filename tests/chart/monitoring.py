"""The chart's alerts and dashboard as rendered, and a real Prometheus to ask.

The tests never retype a query: they take each alert expression from the
PrometheusRule and each panel query from the dashboard ConfigMap that
``helm template`` renders, and evaluate them with ``promtool`` or with a
Prometheus server of their own (own port, config and data directory).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import ALL_APIS, render
from tests.helpers import eventually
from ttg.processes import free_port, wait_port

#: The namespace and release `render` uses: what the chart's selectors name.
NAMESPACE = "sweeps"
RELEASE = "ttg"
#: The Prometheus label the monitors copy ttg.io/release into (ttg.releaseLabel).
RELEASE_LABEL = "ttg_release"
#: Values that turn the alerts and the dashboard on.
MONITORING = (
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.grafanaDashboard.enabled=true",
)


@dataclass(frozen=True)
class Monitoring:
    """The rendered PrometheusRule's groups and the dashboard's JSON."""

    groups: list[dict[str, Any]]
    dashboard: dict[str, Any]

    def alerts(self) -> dict[str, dict[str, Any]]:
        """Alert name -> its rule."""
        return {r["alert"]: r for g in self.groups for r in g["rules"] if "alert" in r}

    def panels(self) -> list[dict[str, Any]]:
        """Every panel with queries (rows have none)."""
        return [p for p in self.dashboard["panels"] if p.get("targets")]

    def write_rules(self, path: Path) -> Path:
        """The groups as a Prometheus rule file."""
        path.write_text(yaml.safe_dump({"groups": self.groups}, sort_keys=False))
        return path


def rendered_monitoring(major: str = "helm4", *args: str) -> Monitoring:
    r = render(major, *MONITORING, *args, apis=tuple(ALL_APIS))
    rule = next(d for d in r.docs if d["kind"] == "PrometheusRule")
    dashboard = r.get("ConfigMap", "ttg-dashboard")["data"]["ttg.json"]
    return Monitoring(rule["spec"]["groups"], json.loads(dashboard))


def grafana_expand(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana's ``$name`` / ``${name}`` variables replaced.

    Fails the test on a variable the dashboard does not define.
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in variables, f"unknown dashboard variable ${name} in {expr}"
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} missing: run `make tools` (ci/ensure-packages.sh installs it)")
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


#: A sample as the HTTP API returns it: its labels and its value.
Sample = tuple[dict[str, str], float]


class Prometheus:
    """A ``prometheus`` server of the test's own, on a free port, with its own data directory."""

    def __init__(self, scrape_configs: list[dict[str, Any]], rules: Monitoring) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ttg-prometheus-"))
        self.port = free_port()
        config = {
            # Scraped and evaluated every second, so a test sees a step within seconds.
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules.write_rules(self.dir / "rules.yaml"))],
            "scrape_configs": scrape_configs,
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, timeout=60)
        eventually(lambda: self._get("/-/ready") is not None, timeout=60, what="prometheus ready")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our own server
                body = resp.read()
        except OSError:
            return None
        return json.loads(body) if path.startswith("/api/") else body

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/PATH``'s ``data``; fails the test on an API error."""
        body = self._get(f"/api/v1/{path}", **params)
        assert body is not None, f"prometheus did not answer /api/v1/{path} {params}"
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query's samples (``/api/v1/query``), now or at Unix time ``at``."""
        data = self.api("query", query=expr, **({} if at is None else {"time": f"{at:.3f}"}))
        assert data["resultType"] == "vector", (expr, data)
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def targets_up(self) -> dict[str, str]:
        """Scrape URL -> health of every active target."""
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts of the loaded rules."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def rule_health(self) -> dict[str, tuple[str, str]]:
        """Alert name -> (health, last error) as the server evaluated it."""
        return {
            r["name"]: (r["health"], r.get("lastError", ""))
            for g in self.api("rules")["groups"]
            for r in g["rules"]
        }


# -- checks on a query's samples --------------------------------------------------------

#: A check of one query's samples; raises AssertionError when implausible.
Check = Callable[[list[Sample]], None]


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


def once_then(first: Check, then: Check) -> Check:
    """``first`` passes once, ``then`` from that reading on: a counter's step shows in a
    rate window for a while only, and need not coincide with the slowest other check."""
    seen = False

    def check(samples: list[Sample]) -> None:
        nonlocal seen
        if not seen:
            first(samples)
            seen = True
        then(samples)

    return check
