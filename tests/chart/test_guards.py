"""Values that used to render and fail later (at the API server, or silently) are refused
by `helm template` itself, with a message naming the value (issue 20: N12, N13)."""

from __future__ import annotations

import pytest

from tests.chart.conftest import ALL_APIS, CHART, render, run_helm

pytestmark = pytest.mark.chart

MONITORING_APIS = [a for a in ALL_APIS if a.startswith("monitoring.coreos.com/")]


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        # Free-form before: rendered, then refused by the API server at install.
        ("worker.resources.requests.cpu=lots", "worker.resources.requests.cpu"),
        ("worker.resources.limit.memory=1Gi", "limit"),
        ("exporter.resources.limits.memory=big", "exporter.resources.limits.memory"),
        ("seed.resources.requests.memory=1GB", "seed.resources.requests.memory"),
        ("nameOverride=Bad_Name", "nameOverride"),
        ("fullnameOverride=ttg.prod", "fullnameOverride"),
        ("worker.podDisruptionBudget.maxUnavailable=-1", "maxUnavailable"),
        ("worker.podDisruptionBudget.maxUnavailable=half", "maxUnavailable"),
    ],
)
def test_schema_refuses_what_the_api_server_would(major: str, setting: str, field: str) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), "--set", setting)
    assert proc.returncode != 0, setting
    assert field.replace(".", "/") in proc.stderr or field in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "setting",
    [
        "worker.resources.requests.cpu=0.5",
        "worker.resources.limits.nvidia\\.com/gpu=1",
        "worker.podDisruptionBudget.maxUnavailable=25%",
        "worker.podDisruptionBudget.maxUnavailable=0",
        "nameOverride=sweeps",
        "fullnameOverride=lab-sweeps",
    ],
)
def test_schema_still_takes_good_values(major: str, setting: str) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), "--set", setting)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("serviceMonitor", "ServiceMonitor"),
        ("podMonitor", "PodMonitor"),
        ("prometheusRule", "PrometheusRule"),
    ],
)
def test_monitoring_without_its_api_fails_loudly(major: str, key: str, kind: str) -> None:
    """Like keda.enabled: asked for, and no API to create it, is an error, not nothing."""
    proc = run_helm(major, "template", "ttg", str(CHART), "--set", f"metrics.{key}.enabled=true")
    assert proc.returncode != 0
    assert f"metrics.{key}.enabled=true but the cluster has no {kind} API" in proc.stderr
    r = render(major, "--set", f"metrics.{key}.enabled=true", apis=tuple(MONITORING_APIS))
    assert kind in r.kinds()


def test_service_monitor_and_pod_monitor_are_never_both_on(major: str) -> None:
    """Both would scrape every pod twice: every series doubled, every alert firing twice."""
    proc = run_helm(
        major, "template", "ttg", str(CHART),
        "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true",
        *(f"--api-versions={a}" for a in MONITORING_APIS),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled" in proc.stderr
    assert "Turn one off" in proc.stderr
