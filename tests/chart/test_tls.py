"""TLS on the bundled brokers (`redis.tls`, `rabbitmq.tls`): what the chart renders.

The brokers serve and TTG's pods verify for real in tests/chart/test_wiring.py;
here: certificates from an existing Secret or a cert-manager Certificate whose
names cover every address TTG connects to, TLS-only broker configs, and TTG's
pods given `rediss://` / `amqps://`, the CA (never the broker's key) and, with
mutual TLS, a client certificate.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import (
    CERT_MANAGER_API,
    CHART,
    Rendered,
    assert_restricted,
    assert_valid_strictly,
    render,
    run_helm,
)
from tests.conftest import BACKENDS

pytestmark = pytest.mark.chart

CLIENTS = [
    ("Deployment", "ttg-worker"),
    ("Deployment", "ttg-exporter"),
    ("Job", "ttg-seed"),
    ("Pod", "ttg-test-status"),
]


def tls_args(backend: str, *extra: str, cert_manager: bool = True) -> tuple[str, ...]:
    sets = [f"backend={backend}", f"{backend}.tls.enabled=true"]
    if cert_manager:
        sets.append(f"{backend}.tls.certManager.issuerRef.name=ca-issuer")
    sets += extra
    return tuple(word for s in sets for word in ("--set", s))


def with_tls(major: str, backend: str, *extra: str) -> Rendered:
    return render(major, *tls_args(backend, *extra), apis=(CERT_MANAGER_API,))


def pod_spec(r: Rendered, kind: str, name: str) -> dict[str, Any]:
    doc = r.get(kind, name)
    spec: dict[str, Any] = doc["spec"] if kind == "Pod" else doc["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def mounted_secret(spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret, key) whose file the container sees at ``path``."""
    for m in container.get("volumeMounts", []):
        prefix = m["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            (volume,) = [v for v in spec["volumes"] if v["name"] == m["name"]]
            items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
            name = path[len(prefix) :]
            return volume["secret"]["secretName"], items.get(name, name)
    raise AssertionError(f"nothing mounted at {path}")


def client_hosts(r: Rendered) -> set[str]:
    hosts = set()
    for kind, name in CLIENTS:
        (c,) = pod_spec(r, kind, name)["containers"]
        for url in env_of(c)["TTG_BROKER_URL"].split(","):
            hosts.add(url.split("//")[1].split(":")[0])
    return hosts


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_tls_renders_valid_for_every_kubernetes_version_with_restricted_pods(
    major: str, backend: str, mutual: bool
) -> None:
    extra = [f"{backend}.tls.clientAuth.enabled=true"] if mutual else []
    if backend == "rabbitmq":
        extra += ["rabbitmq.replicas=3", "rabbitmq.managementUI.enabled=true"]
    for r in (
        with_tls(major, backend, *extra),
        render(
            major,
            *tls_args(
                backend,
                f"{backend}.tls.existingSecret=broker-tls",
                f"{backend}.tls.clientAuth.existingSecret=ttg-client-tls",
                *extra,
                cert_manager=False,
            ),
        ),
    ):
        assert_valid_strictly(r)
        assert_restricted(r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_secret_or_cert_manager_tls_fails_with_a_message(
    major: str, backend: str
) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), *tls_args(backend, cert_manager=False))
    assert proc.returncode != 0
    assert f"{backend}.tls.enabled=true needs {backend}.tls.existingSecret" in proc.stderr
    no_issuer = run_helm(
        major,
        "template",
        "ttg",
        str(CHART),
        *tls_args(backend, cert_manager=False),
        f"--api-versions={CERT_MANAGER_API}",
    )
    assert no_issuer.returncode != 0
    assert f"{backend}.tls.certManager.issuerRef.name is required" in no_issuer.stderr
    # Mutual TLS needs a client certificate from somewhere too.
    proc = run_helm(
        major,
        "template",
        "ttg",
        str(CHART),
        *tls_args(
            backend,
            f"{backend}.tls.existingSecret=broker-tls",
            f"{backend}.tls.clientAuth.enabled=true",
            cert_manager=False,
        ),
    )
    assert proc.returncode != 0 and "needs" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("backend", "extra"),
    [("redis", ()), ("rabbitmq", ()), ("rabbitmq", ("rabbitmq.replicas=3",))],
    ids=["redis", "rabbitmq", "rabbitmq-cluster"],
)
def test_cert_manager_certificate_names_every_address_ttg_connects_to(
    major: str, backend: str, extra: tuple[str, ...]
) -> None:
    r = with_tls(major, backend, *extra, f"{backend}.tls.extraDnsNames={{broker.example.org}}")
    cert = r.get("Certificate", f"ttg-{backend}-tls")["spec"]
    assert cert["secretName"] == f"ttg-{backend}-tls"
    assert cert["issuerRef"] == {"name": "ca-issuer", "kind": "Issuer", "group": "cert-manager.io"}
    assert "server auth" in cert["usages"]
    names = set(cert["dnsNames"])
    # Exact names: a wildcard under a one-label domain (*.svc-headless) matches nothing.
    assert not any("*" in n for n in names)
    hosts = client_hosts(r)
    assert hosts and hosts <= names, hosts - names
    for host in hosts:
        assert {f"{host}.sweeps.svc", f"{host}.sweeps.svc.cluster.local"} <= names
    assert "broker.example.org" in names
    assert "Certificate" not in render(major, "--set", f"backend={backend}").kinds()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_ttg_pods_get_tls_urls_the_ca_and_with_mutual_tls_a_client_certificate(
    major: str, backend: str, mutual: bool
) -> None:
    extra = [f"{backend}.tls.clientAuth.enabled=true"] if mutual else []
    r = with_tls(major, backend, *extra)
    scheme = {"redis": "rediss://", "rabbitmq": "amqps://"}[backend]
    port = {"redis": 6379, "rabbitmq": 5671}[backend]
    for kind, name in CLIENTS:
        spec = pod_spec(r, kind, name)
        (c,) = spec["containers"]
        env = env_of(c)
        assert env["TTG_BROKER_URL"].startswith(scheme), name
        assert f":{port}/" in env["TTG_BROKER_URL"], name
        # Only ca.crt of the broker's Secret: never its private key.
        assert mounted_secret(spec, c, env["TTG_BROKER_CA_FILE"]) == (
            f"ttg-{backend}-tls",
            "ca.crt",
        )
        server = [v["secret"] for v in spec["volumes"] if "secret" in v]
        server = [s for s in server if s["secretName"] == f"ttg-{backend}-tls"]
        assert [i["key"] for s in server for i in s["items"]] == ["ca.crt"]
        if mutual:
            client = f"ttg-{backend}-client-tls"
            assert mounted_secret(spec, c, env["TTG_BROKER_CERT_FILE"]) == (client, "tls.crt")
            assert mounted_secret(spec, c, env["TTG_BROKER_KEY_FILE"]) == (client, "tls.key")
        else:
            assert "TTG_BROKER_CERT_FILE" not in env and "TTG_BROKER_KEY_FILE" not in env
    if mutual:
        client = r.get("Certificate", f"ttg-{backend}-client-tls")["spec"]
        assert client["usages"] == ["client auth"]
        assert client["secretName"] == f"ttg-{backend}-client-tls"


@pytest.mark.parametrize("backend", BACKENDS)
def test_existing_secrets_replace_cert_manager(major: str, backend: str) -> None:
    r = render(
        major,
        *tls_args(
            backend,
            f"{backend}.tls.existingSecret=broker-tls",
            f"{backend}.tls.clientAuth.enabled=true",
            f"{backend}.tls.clientAuth.existingSecret=ttg-client-tls",
            cert_manager=False,
        ),
        apis=(CERT_MANAGER_API,),
    )
    assert "Certificate" not in r.kinds()
    broker = pod_spec(r, "StatefulSet", f"ttg-{backend}")
    (tls,) = [v for v in broker["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "broker-tls"
    (c,) = pod_spec(r, "Deployment", "ttg-worker")["containers"]
    spec = pod_spec(r, "Deployment", "ttg-worker")
    assert mounted_secret(spec, c, env_of(c)["TTG_BROKER_CA_FILE"]) == ("broker-tls", "ca.crt")
    assert mounted_secret(spec, c, env_of(c)["TTG_BROKER_KEY_FILE"]) == (
        "ttg-client-tls",
        "tls.key",
    )


def conf(r: Rendered, backend: str) -> set[str]:
    key = {"redis": "redis.conf", "rabbitmq": "rabbitmq.conf"}[backend]
    text = r.get("ConfigMap", f"ttg-{backend}-config")["data"][key]
    return {line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"}


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_redis_serves_tls_only_from_the_mounted_secret(major: str, mutual: bool) -> None:
    extra = ["redis.tls.clientAuth.enabled=true"] if mutual else []
    r = with_tls(major, "redis", *extra)
    lines = conf(r, "redis")
    assert {"port 0", "tls-port 6379", f"tls-auth-clients {'yes' if mutual else 'no'}"} <= lines
    assert {
        "tls-cert-file /tls/tls.crt",
        "tls-key-file /tls/tls.key",
        "tls-ca-cert-file /tls/ca.crt",
    } <= lines
    spec = pod_spec(r, "StatefulSet", "ttg-redis")
    (c,) = spec["containers"]
    assert mounted_secret(spec, c, "/tls/tls.key") == ("ttg-redis-tls", "tls.key")
    (tls,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["defaultMode"] == 0o440
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = c[probe]["exec"]["command"]
        assert "--tls" in command and "/tls/ca.crt" in command, probe
        assert ("/tls/tls.key" in command) == mutual, probe
    # The probes present the broker's certificate as a client with mutual TLS.
    usages = r.get("Certificate", "ttg-redis-tls")["spec"]["usages"]
    assert ("client auth" in usages) == mutual
    assert "port 6379" in conf(render(major), "redis")


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_rabbitmq_serves_amqps_only_from_the_mounted_secret(major: str, mutual: bool) -> None:
    extra = ["rabbitmq.tls.clientAuth.enabled=true"] if mutual else []
    r = with_tls(major, "rabbitmq", *extra)
    lines = conf(r, "rabbitmq")
    assert {"listeners.tcp = none", "listeners.ssl.default = 5671"} <= lines
    assert not any(line.startswith("listeners.tcp.default") for line in lines)
    assert {
        "ssl_options.cacertfile = /tls/ca.crt",
        "ssl_options.certfile = /tls/tls.crt",
        "ssl_options.keyfile = /tls/tls.key",
        f"ssl_options.verify = {'verify_peer' if mutual else 'verify_none'}",
        f"ssl_options.fail_if_no_peer_cert = {str(mutual).lower()}",
    } <= lines
    spec = pod_spec(r, "StatefulSet", "ttg-rabbitmq")
    (c,) = spec["containers"]
    assert mounted_secret(spec, c, "/tls/tls.key") == ("ttg-rabbitmq-tls", "tls.key")
    assert {"name": "amqps", "containerPort": 5671} in c["ports"]
    assert not [p for p in c["ports"] if p["containerPort"] == 5672]
    assert c["readinessProbe"]["tcpSocket"]["port"] == "amqps"
    service = r.get("Service", "ttg-rabbitmq")["spec"]["ports"]
    assert {"name": "amqps", "port": 5671, "targetPort": "amqps"} in service
    policy = r.get("NetworkPolicy", "ttg-rabbitmq")["spec"]["ingress"][0]
    assert policy["ports"] == [{"port": "amqps", "protocol": "TCP"}]


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_tls_nothing_changes(major: str, backend: str) -> None:
    r = render(major, "--set", f"backend={backend}")
    for kind, name in CLIENTS:
        spec = pod_spec(r, kind, name)
        (c,) = spec["containers"]
        assert not any(k.startswith("TTG_BROKER_CA") for k in env_of(c)), name
        assert not [v for v in spec.get("volumes", []) if v["name"].startswith("broker-")], name
    assert "Certificate" not in r.kinds()


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("tls.enable=true", "enable"),
        ("tls.clientAuth.on=true", "on"),
        ("tls.extraDnsNames={Not_A_Name}", "extraDnsNames"),
        ("tls.clusterDomain=bad_domain", "clusterDomain"),
        ("tls.certManager.issuerRef.kind=", "kind"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_schema_rejects_bad_tls_values_naming_the_field(
    major: str, backend: str, setting: str, field: str
) -> None:
    proc = run_helm(
        major,
        "template",
        "ttg",
        str(CHART),
        "--set",
        f"backend={backend}",
        "--set",
        f"{backend}.{setting}",
    )
    assert proc.returncode != 0, setting
    assert field in proc.stderr, proc.stderr
