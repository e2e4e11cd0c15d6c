"""The chart's alerts and dashboard, checked with real Prometheus tools.

``promtool check rules`` and ``promtool test rules`` run on the PrometheusRule
``helm template`` renders (tests/chart/promtool/alerts-test.yaml holds the
series-over-time cases: a healthy slow run, a stalled run, every worker down, a
complete run, ...). The live counterpart, a real Prometheus scraping real
workers and the exporter, is tests/chart/test_monitoring_live.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    ALL_APIS,
    CHART,
    PODMONITOR_INSTEAD,
    SCENARIO_DIR,
    Rendered,
    render,
    run_helm,
)
from tests.chart.monitoring import (
    MONITORING,
    NAMESPACE,
    RELEASE,
    RELEASE_LABEL,
    grafana_expand,
    promtool,
    rendered_monitoring,
)

pytestmark = pytest.mark.chart

ALERTS_TEST = Path(__file__).parent / "promtool" / "alerts-test.yaml"
#: Every alert the chart defines; a new one needs promtool cases (and a live check).
ALERTS = {
    "TTGRunStalled",
    "TTGRunWithoutWorkers",
    "TTGRunFailures",
    "TTGBrokerDown",
    "TTGExporterDown",
}
#: What a dashboard query may use: Grafana's variables of this dashboard.
DASHBOARD_VARIABLES = {
    "namespace": NAMESPACE,
    "release": RELEASE,
    "run": ".*",
    "__rate_interval": "1m",
    "datasource": "prometheus",
}
#: The dashboard's panels: per run from the exporter, per worker from the workers.
RUN_PANELS = {
    "Run state",
    "Progress",
    "ETA",
    "Chunks finished /s",
    "Parameters computed /s",
    "Queue depth",
    "Live workers per run",
    "Failed chunks",
    "Redeliveries, retries, duplicates, malformed messages, compute errors",
}
WORKER_PANELS = {
    "Chunk duration p50 / p95 per run",
    "Chunk duration p95 per worker",
    "Chunks completed /s per worker",
    "Chunks in flight per worker",
    "Broker reachable",
}
#: A series selector in PromQL: metric name, then its matchers.
SELECTOR = re.compile(r"\b(ttg_\w+)\{([^}]*)\}")


def test_rules_pass_promtool_check(major: str, tmp_path: Path) -> None:
    rules = rendered_monitoring(major).write_rules(tmp_path / "rules.yaml")
    proc = promtool("check", "rules", str(rules), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout, proc.stdout


def annotations(rule: dict[str, Any], labels: dict[str, str], value: float) -> dict[str, str]:
    """The rule's annotations as Prometheus expands them for one alert."""

    def expand(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        return text.replace("{{ $value }}", f"{value:g}")

    return {k: expand(v) for k, v in rule.get("annotations", {}).items()}


def test_alerts_fire_and_stay_quiet_as_promtool_unit_tests(tmp_path: Path) -> None:
    monitoring = rendered_monitoring()
    rules = monitoring.alerts()
    assert set(rules) == ALERTS
    cases = yaml.safe_load(ALERTS_TEST.read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in cases["tests"]:
        for check in test["alert_rule_test"]:
            name = check["alertname"]
            (fired if check["exp_alerts"] else quiet).add(name)
            for alert in check["exp_alerts"]:
                value = alert.pop("value")
                alert["exp_annotations"] = annotations(rules[name], alert["exp_labels"], value)
    # Each alert is shown both firing and staying quiet.
    assert fired == quiet == ALERTS, (fired, quiet)
    cases["rule_files"] = [str(monitoring.write_rules(tmp_path / "rules.yaml"))]
    (tmp_path / "alerts-test.yaml").write_text(yaml.safe_dump(cases, sort_keys=False))
    proc = promtool("test", "rules", "alerts-test.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout


def test_alert_thresholds_come_from_values() -> None:
    rules = rendered_monitoring(
        "helm4",
        "--set",
        "metrics.prometheusRule.stalledMinutes=30",
        "--set",
        "metrics.prometheusRule.noWorkerMinutes=7",
    ).alerts()
    stalled = rules["TTGRunStalled"]
    assert "offset 30m" in stalled["expr"] and "> 1800" in stalled["expr"]
    assert "for" not in stalled
    assert rules["TTGRunWithoutWorkers"]["for"] == "7m"
    assert "30 minutes" in stalled["annotations"]["summary"]


def test_alerts_need_the_exporter(major: str) -> None:
    proc = run_helm(
        major,
        "template",
        "ttg",
        str(CHART),
        *MONITORING,
        "--set",
        "exporter.enabled=false",
        f"--api-versions={ALL_APIS[2]}",
    )
    assert proc.returncode != 0
    assert "needs exporter.enabled=true" in proc.stderr


def selectors(expr: str) -> list[tuple[str, str]]:
    return SELECTOR.findall(expr)


def test_every_query_selects_the_release_label_the_monitors_add(major: str) -> None:
    r: Rendered = render(
        major,
        "-f",
        str(SCENARIO_DIR / "monitoring-values.yaml"),
        "--set",
        "keda.enabled=true",
        "--set",
        "keda.prometheus.enabled=true",
        apis=tuple(ALL_APIS),
    )
    # The monitors copy the pod label ttg.io/release (which Argo CD leaves alone)
    # into RELEASE_LABEL; the scraped pods carry it.
    # (A PodMonitor instead of the ServiceMonitor: the chart refuses both at once.)
    pod_monitor = render(major, "-f", str(SCENARIO_DIR / "monitoring-values.yaml"),
                         *PODMONITOR_INSTEAD, apis=tuple(ALL_APIS))  # fmt: skip
    for monitors, kind, endpoints in (
        (r, "ServiceMonitor", "endpoints"),
        (pod_monitor, "PodMonitor", "podMetricsEndpoints"),
    ):
        (endpoint,) = monitors.get(kind, "ttg-worker")["spec"][endpoints]
        assert endpoint["relabelings"] == [
            {
                "sourceLabels": ["__meta_kubernetes_pod_label_ttg_io_release"],
                "targetLabel": RELEASE_LABEL,
            }
        ]
    for name in ("ttg-worker", "ttg-exporter"):
        labels = r.get("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert labels["ttg.io/release"] == RELEASE
    monitoring = rendered_monitoring(major)
    queries = [rule["expr"] for rule in monitoring.alerts().values()]
    (keda,) = [
        t["metadata"]["query"]
        for t in r.get("ScaledObject", "ttg-worker")["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]
    queries.append(keda)
    for expr in queries:
        assert selectors(expr), expr
        for metric, matchers in selectors(expr):
            assert f'namespace="{NAMESPACE}"' in matchers, (metric, expr)
            assert f'{RELEASE_LABEL}="{RELEASE}"' in matchers, (metric, expr)
    for panel in monitoring.panels():
        for target in panel["targets"]:
            for metric, matchers in selectors(target["expr"]):
                assert 'namespace="$namespace"' in matchers, (panel["title"], metric)
                assert f'{RELEASE_LABEL}="$release"' in matchers, (panel["title"], metric)


def test_dashboard_is_well_formed() -> None:
    dashboard = rendered_monitoring().dashboard
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    # Panels tile the 24-column grid without overlapping.
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "release", "run"}
    for v in dashboard["templating"]["list"][1:]:
        grafana_expand(v["query"], DASHBOARD_VARIABLES)
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles))
    for p in [p for p in panels if p["type"] != "row"]:
        assert p["targets"] and p["description"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            expr = grafana_expand(t["expr"], DASHBOARD_VARIABLES)
            # One series per run from the exporter: nothing to deduplicate over workers.
            assert "max by (run)" not in expr, (p["title"], expr)
            # Counters are read through rate()/increase(), never as raw values per worker.
            for metric, _ in selectors(expr):
                if metric.endswith("_total") or metric.endswith("_bucket"):
                    assert re.search(rf"(rate|increase)\({metric}\{{", expr), (p["title"], expr)
    # Run figures come from the exporter (ttg_run_*), worker figures from the workers.
    exprs = {
        p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels if "targets" in p
    }
    assert all("ttg_run_" in exprs[t] for t in exprs if t in RUN_PANELS), exprs
    assert all("ttg_run_" not in exprs[t] for t in exprs if t in WORKER_PANELS), exprs
    assert set(exprs) == RUN_PANELS | WORKER_PANELS
