"""The rendered broker pods boot, for real: their own command, config and init steps.

Each test renders the chart, then starts the broker container's rendered
command (after its init containers) with real redis-server / rabbitmq-server
processes on free ports (tests/chart/brokers.py says what is substituted).
"""

from __future__ import annotations

import base64
import json
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.chart.brokers import BrokerPod, rabbitmq_pod, redis_pod
from tests.chart.certs import CA
from tests.chart.conftest import render
from tests.chart.pods import add_group_bits
from tests.helpers import eventually

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.slow]


def test_rabbitmq_boots_again_after_the_kubelet_adds_group_bits_to_its_volume(
    tmp_path: Path,
) -> None:
    """A pod re-created on storage that honours fsGroup must boot (issue 9, point 2).

    The kubelet chowns the data volume to the fsGroup and adds group read/write
    to every file on it at mount; Erlang refuses a cookie file anyone but its
    owner can read. So: start the rendered pod, stop it, do to the volume what
    the kubelet does, start a new pod on the same volume.
    """
    rendered = render("helm4", "--set", "backend=rabbitmq")
    data = tmp_path / "pvc-data"
    for attempt in ("first", "second"):
        broker = rabbitmq_pod(rendered, tmp_path / f"{attempt}-pod", data)
        try:
            broker.start()
            cookie = data / ".erlang.cookie"
            assert stat.S_IMODE(cookie.stat().st_mode) & 0o077 == 0, oct(cookie.stat().st_mode)
            # The liveness probe's CLI must reach the node with the same cookie.
            probe = broker.pod.exec_probe("rabbitmq", "livenessProbe")
            assert probe.returncode == 0, probe.stdout + probe.stderr
        finally:
            broker.stop()
        add_group_bits(data)
        assert stat.S_IMODE(cookie.stat().st_mode) & 0o060 == 0o060


@pytest.mark.parametrize(
    "extra",
    [
        {"maxmemory-policy": "noeviction"},
        {"maxmemory": str(64 * 1024 * 1024), "hz": "20", "slowlog-log-slower-than": "5000"},
    ],
    ids=["one-line", "several-lines"],
)
def test_redis_extra_config_lines_are_redis_conf_lines(
    tmp_path: Path, extra: dict[str, str]
) -> None:
    """`redis.extraConfig` is redis.conf text: one line or several, applied at start."""
    lines = "\n".join(f"{k} {v}" for k, v in extra.items())
    rendered = render("helm4", "--set-string", f"redis.extraConfig={lines}")
    broker = redis_pod(rendered, tmp_path / "pod", tmp_path / "pvc-data")
    try:
        broker.start(timeout=60)
        client = redis.Redis(port=broker.port, password=broker.pod.secret("ttg-redis")["password"])
        for key, value in extra.items():
            assert client.config_get(key) == {key: value}
        # What TTG relies on is still there: AOF on, in the data volume.
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("dir") == {"dir": str(tmp_path / "pvc-data")}
    finally:
        broker.stop()


def test_redis_without_auth_admits_clients_beyond_loopback(tmp_path: Path) -> None:
    """Protected mode would refuse every pod but Redis's own when no password is set."""
    rendered = render("helm4", "--set", "redis.auth.enabled=false")
    broker = redis_pod(rendered, tmp_path / "pod", tmp_path / "pvc-data")
    try:
        broker.start(timeout=60)
        client = redis.Redis(port=broker.port)
        assert client.config_get("protected-mode") == {"protected-mode": "no"}
        assert client.ping()
    finally:
        broker.stop()


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def probe_codes(broker: BrokerPod, **env: str) -> dict[str, tuple[int, str]]:
    """Each rendered probe's exit code and output, run as the kubelet would (``env`` added)."""
    out = {}
    for kind in PROBES:
        probe = broker.pod.container("redis")[kind]
        proc = subprocess.run(
            [broker.pod.localize(w) for w in probe["exec"]["command"]],
            env={**broker.pod.env("redis"), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out[kind] = (proc.returncode, proc.stdout + proc.stderr)
    return out


def test_redis_probes_fail_on_error_replies(tmp_path: Path) -> None:
    """Issue 20, N10: `redis-cli ping` exits 0 on `-NOAUTH` or `-LOADING`; the probes read
    the reply. Ready only on PONG; alive (startup, liveness) also while loading, which a big
    data set may make longer than any probe budget."""
    # Real slow loading: Redis waits this long (µs) per key it loads, and answers meanwhile.
    slow = "key-load-delay 300\nloading-process-events-interval-bytes 1024"
    rendered = render("helm4", "--set-string", f"redis.extraConfig={slow}")
    data = tmp_path / "pvc-data"
    broker = redis_pod(rendered, tmp_path / "pod", data)
    try:
        broker.start(timeout=60)
        assert {k: c for k, (c, _) in probe_codes(broker).items()} == dict.fromkeys(PROBES, 0)
        refused = probe_codes(broker, REDISCLI_AUTH="not-the-password")
        assert all(code != 0 and "NOAUTH" in out for code, out in refused.values()), refused
        client = redis.Redis(port=broker.port, password=broker.pod.secret("ttg-redis")["password"])
        with client.pipeline(transaction=False) as pipe:
            for i in range(20_000):
                pipe.set(f"k{i}", i)
            pipe.execute()
        client.close()
    finally:
        broker.stop()
    # The same volume again: the AOF loads for seconds (20,000 keys x 300 µs).
    broker = redis_pod(rendered, tmp_path / "pod-again", data)
    try:
        broker.start(timeout=60)
        loading = probe_codes(broker)
        assert "LOADING" in loading["readinessProbe"][1], loading
        assert loading["readinessProbe"][0] != 0, loading
        assert loading["startupProbe"][0] == loading["livenessProbe"][0] == 0, loading
        eventually(
            lambda: probe_codes(broker)["readinessProbe"][0] == 0,
            timeout=60,
            interval=0.5,
            what="ready once loaded",
        )
    finally:
        broker.stop()


def get_json(
    url: str, user: str, password: str, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, object]]:
    assert url.startswith(("http://", "https://")), url
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:  # noqa: S310
            return int(resp.status), dict(json.loads(resp.read()))
    except urllib.error.HTTPError as e:
        return int(e.code), {}


def listener_protocols(broker: BrokerPod) -> set[str]:
    """What the running node listens for (rabbitmq-diagnostics, with the pod's environment)."""
    proc = subprocess.run(
        ["rabbitmq-diagnostics", "-q", "listeners", "--formatter", "json"],
        env=broker.pod.env("rabbitmq"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return {listener["protocol"] for listener in json.loads(proc.stdout)["listeners"]}


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_rabbitmq_management_ui_logs_in_with_the_secrets_credentials(
    tmp_path: Path, tls: bool
) -> None:
    """Issue 11: the UI a `kubectl port-forward svc/ttg-rabbitmq 15672` reaches (15671, HTTPS,
    with TLS) answers the Secret's user, as an administrator, and nobody else."""
    args = ["--set", "backend=rabbitmq", "--set", "rabbitmq.managementUI.enabled=true"]
    secrets: dict[str, dict[str, str]] = {}
    context = None
    if tls:
        args += ["--set", "rabbitmq.tls.enabled=true"]
        args += ["--set", "rabbitmq.tls.existingSecret=rabbitmq-server-tls"]
        ca = CA.create(tmp_path / "pki")
        pair = ca.issue("server", usages=["serverAuth"], dns=["ttg-rabbitmq"], ips=["127.0.0.1"])
        secrets["rabbitmq-server-tls"] = ca.secret(pair)
        context = ssl.create_default_context(cafile=str(ca.crt))
    rendered = render("helm4", *args)
    broker = rabbitmq_pod(
        rendered, tmp_path / "pod", tmp_path / "pvc-data", cluster_secrets=secrets
    )
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{broker.management_port}/api/whoami"
    try:
        broker.start()
        creds = broker.pod.secret("ttg-rabbitmq")
        _, me = eventually(
            lambda: (
                (r := get_json(url, creds["username"], creds["password"], context))[0] == 200 and r
            ),
            timeout=120,
            interval=0.5,
            what=f"the management UI answering on {scheme}",
        )
        assert me["name"] == creds["username"] and "administrator" in str(me["tags"]), me
        assert get_json(url, creds["username"], "wrong", context)[0] == 401
        # TLS only: the node listens for AMQP and the UI over TLS, nothing plain but metrics.
        protocols = listener_protocols(broker)
        if tls:
            assert {"amqp/ssl", "https"} <= protocols and not {"amqp", "http"} & protocols
        else:
            assert {"amqp", "http"} <= protocols and not {"amqp/ssl", "https"} & protocols
    finally:
        broker.stop()
