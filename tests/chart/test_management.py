"""RabbitMQ's management UI (`rabbitmq.managementUI`): off by default; on, reached by
`kubectl port-forward` (no NetworkPolicy rule needed) or from where `allowFrom` says.

The UI answers for real, with the Secret's credentials, in tests/chart/test_brokers.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import CERT_MANAGER_API, CHART, Rendered, render, run_helm, selects

pytestmark = pytest.mark.chart

UI = ("--set", "backend=rabbitmq", "--set", "rabbitmq.managementUI.enabled=true")


def broker_container(r: Rendered) -> dict[str, Any]:
    (c,) = r.get("StatefulSet", "ttg-rabbitmq")["spec"]["template"]["spec"]["containers"]
    return dict(c)


def conf_lines(r: Rendered) -> set[str]:
    conf = r.get("ConfigMap", "ttg-rabbitmq-config")["data"]["rabbitmq.conf"]
    return {line.strip() for line in conf.splitlines() if line.strip() and line[0] != "#"}


def test_the_ui_is_off_by_default(major: str) -> None:
    r = render(major, "--set", "backend=rabbitmq")
    plugins = r.get("ConfigMap", "ttg-rabbitmq-config")["data"]["enabled_plugins"]
    assert "rabbitmq_management" not in plugins
    assert not any(line.startswith("management.") for line in conf_lines(r))
    ports = {p["port"] for p in r.get("Service", "ttg-rabbitmq")["spec"]["ports"]}
    assert not ports & {15672, 15671}
    assert not [p for p in broker_container(r)["ports"] if p["name"] == "management"]


def test_the_ui_is_on_the_service_for_a_port_forward(major: str) -> None:
    r = render(major, *UI)
    plugins = r.get("ConfigMap", "ttg-rabbitmq-config")["data"]["enabled_plugins"].strip()
    assert plugins == "[rabbitmq_prometheus,rabbitmq_management]."
    assert "management.tcp.port = 15672" in conf_lines(r)
    assert {"name": "management", "containerPort": 15672} in broker_container(r)["ports"]
    service = r.get("Service", "ttg-rabbitmq")["spec"]
    assert {"name": "management", "port": 15672, "targetPort": "management"} in service["ports"]
    broker = r.get("StatefulSet", "ttg-rabbitmq")["spec"]["template"]["metadata"]["labels"]
    assert selects(service["selector"], broker)
    # By default no NetworkPolicy rule admits anyone to it: port-forward needs none.
    rules = r.get("NetworkPolicy", "ttg-rabbitmq")["spec"]["ingress"]
    assert not [p for rule in rules for p in rule["ports"] if p["port"] == "management"]


def test_allow_from_admits_exactly_those_peers_to_the_ui(major: str) -> None:
    r = render(
        major,
        *UI,
        "--set",
        "rabbitmq.managementUI.allowFrom[0].namespaceSelector.matchLabels.team=ops",
        "--set",
        "rabbitmq.managementUI.allowFrom[1].ipBlock.cidr=10.0.0.0/8",
    )
    rules = r.get("NetworkPolicy", "ttg-rabbitmq")["spec"]["ingress"]
    ui = [rule for rule in rules if {"port": "management", "protocol": "TCP"} in rule["ports"]]
    assert len(ui) == 1
    (rule,) = ui
    assert rule["ports"] == [{"port": "management", "protocol": "TCP"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
        {"ipBlock": {"cidr": "10.0.0.0/8"}},
    ]


def test_with_tls_the_ui_is_https_on_15671(major: str) -> None:
    r = render(
        major,
        *UI,
        "--set",
        "rabbitmq.tls.enabled=true",
        "--set",
        "rabbitmq.tls.certManager.issuerRef.name=ca",
        apis=(CERT_MANAGER_API,),
    )
    lines = conf_lines(r)
    assert {
        "management.ssl.port = 15671",
        "management.ssl.certfile = /tls/tls.crt",
        "management.ssl.keyfile = /tls/tls.key",
    } <= lines
    assert not any(line.startswith("management.tcp") for line in lines)
    ports = r.get("Service", "ttg-rabbitmq")["spec"]["ports"]
    assert {"name": "management", "port": 15671, "targetPort": "management"} in ports


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("rabbitmq.managementUI.allowFrom[0].everyone=true", "everyone"),
        ("rabbitmq.managementUI.on=true", "on"),
    ],
)
def test_schema_rejects_bad_ui_values_naming_the_field(
    major: str, setting: str, field: str
) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), *UI, "--set", setting)
    assert proc.returncode != 0, setting
    assert field in proc.stderr, proc.stderr


def test_notes_tell_how_to_reach_the_ui_only_when_it_is_on() -> None:
    def notes(*args: str) -> str:
        proc = run_helm("helm4", "install", "ttg", str(CHART), "--dry-run=client", *args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split("NOTES:", 1)[1]

    on = notes(*UI)
    assert "port-forward svc/ttg-rabbitmq 15672" in on and "http://localhost:15672" in on
    assert "Secret ttg-rabbitmq" in on
    assert "port-forward" not in notes("--set", "backend=rabbitmq")
