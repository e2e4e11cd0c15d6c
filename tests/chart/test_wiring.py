"""The rendered chart, wired together for real: the closest thing to a cluster we have here.

Per backend: render the chart, start the rendered broker pod (init containers,
command, config; tests/chart/brokers.py), then run the rendered seeding Job's
container, two rendered worker containers, the exporter's (when the image's
`ttg` has the subcommand) and the helm test pod's, each with its own rendered
args and env — ConfigMaps and Secrets resolved as the kubelet would
(tests/chart/pods.py) — as ``python -m ttg`` from the venv. The only
substitutions are the broker's Service host:port (to 127.0.0.1 and the local
port), and the metrics port each pod would own alone. The run must verify.

With TLS on (`<backend>.tls.enabled`, and `tls.clientAuth` for mutual TLS) the
chart is rendered as on a cluster with cert-manager: the test plays the
issuer, signing with a CA made by `openssl` the certificates the rendered
Certificates ask for (their DNS names, plus 127.0.0.1: the Service address is
the one thing substituted), into the Secrets cert-manager would write. The
broker then serves TLS only, on the names TTG's pods connect with; a client
trusting another CA, or (mutual TLS) presenting no certificate, is refused.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pika
import pytest
import redis

from tests.chart.brokers import BrokerPod, rabbitmq_pod, redis_pod
from tests.chart.certs import CA, Pair, handshake
from tests.chart.conftest import CERT_MANAGER_API, Rendered, render
from tests.chart.pods import Pod
from tests.chart.wiring import (
    WORKER_IMAGE_ENV,
    has_exporter,
    http_get,
    print_logs,
    ttg_json,
    ttg_pod,
)
from tests.helpers import ROOT, eventually

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.slow]

RUN = "wiring-1"
PARAMS, CHUNK_SIZE = 3000, 100
CHUNKS = PARAMS // CHUNK_SIZE
#: Broker Service port per backend and TLS, as the chart renders it.
SERVICE_PORT = {("redis", False): 6379, ("rabbitmq", False): 5672}
SERVICE_PORT |= {("redis", True): 6379, ("rabbitmq", True): 5671}
#: cert-manager's usages -> openssl's extendedKeyUsage names.
USAGES = {"server auth": "serverAuth", "client auth": "clientAuth"}


def test_worker_image_env_matches_the_dockerfile() -> None:
    dockerfile = (ROOT / "worker" / "Dockerfile").read_text()
    for key, value in WORKER_IMAGE_ENV.items():
        assert f"{key}={value}" in dockerfile, key
    assert 'ENTRYPOINT ["ttg"]' in dockerfile


def start_broker(
    rendered: Rendered, backend: str, tmp_path: Path, secrets: dict[str, dict[str, str]]
) -> BrokerPod:
    make = redis_pod if backend == "redis" else rabbitmq_pod
    return make(
        rendered, tmp_path / "broker", tmp_path / "pvc-data", cluster_secrets=secrets
    ).start()


def issue_as_cert_manager(rendered: Rendered, ca: CA) -> dict[str, dict[str, str]]:
    """The Secrets cert-manager would write for the rendered Certificates, signed by ``ca``."""
    secrets = {}
    for cert in (d for d in rendered.docs if d["kind"] == "Certificate"):
        spec = cert["spec"]
        pair = ca.issue(
            spec["secretName"],
            usages=[USAGES[u] for u in spec["usages"]],
            # The Service address is substituted by 127.0.0.1 here.
            dns=spec.get("dnsNames", []),
            ips=["127.0.0.1"] if spec.get("dnsNames") else [],
        )
        secrets[spec["secretName"]] = ca.secret(pair)
    return secrets


def client_pair(secrets: dict[str, dict[str, str]], directory: Path) -> Pair:
    """TTG's client certificate, from the client Secret, as files."""
    (data,) = [v for k, v in secrets.items() if k.endswith("-client-tls")]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_text(data["tls.crt"])
    (directory / "tls.key").write_text(data["tls.key"])
    return Pair(directory / "tls.crt", directory / "tls.key")


def assert_tls_only(backend: str, broker: BrokerPod, password: str) -> None:
    """The broker's port speaks TLS only: a plaintext client gets nowhere."""
    if backend == "redis":
        plain = redis.Redis(port=broker.port, password=password, socket_timeout=5)
        with pytest.raises(redis.RedisError):
            plain.ping()
    else:
        params = pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
        with pytest.raises(pika.exceptions.AMQPError):
            pika.BlockingConnection(params)


def refused(pod: Pod, container: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The container's `ttg status` with ``env`` changed; not waiting for the broker."""
    return subprocess.run(
        pod.argv(container),
        env={**pod.env(container), "TTG_CONNECT_TIMEOUT_SECONDS": "0", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_tls_enforced(
    rendered: Rendered,
    backend: str,
    broker: BrokerPod,
    test_pod: Pod,
    ca: CA,
    secrets: dict[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    """The broker serves TLS only, with a certificate for the name TTG's pods connect to;
    TTG verifies it (another CA: exit 4); with mutual TLS, a client without a certificate
    is refused."""
    mutual = any(name.endswith("-client-tls") for name in secrets)
    env = test_pod.env("status")
    rendered_env = rendered.get("Pod", "ttg-test-status")["spec"]["containers"][0]["env"]
    (url,) = [e["value"] for e in rendered_env if e["name"] == "TTG_BROKER_URL"]
    host = url.split("//")[1].split(":")[0]
    client = client_pair(secrets, tmp_path / "client") if mutual else None
    assert handshake(broker.port, host, ca.crt, client).startswith("TLSv1.")
    assert_tls_only(backend, broker, env["TTG_BROKER_PASSWORD"])
    if backend == "redis":
        probe = broker.pod.exec_probe("redis", "readinessProbe")
        assert probe.returncode == 0 and "PONG" in probe.stdout, probe
    stranger = CA.create(tmp_path / "stranger", "someone-else")
    untrusted = refused(test_pod, "status", TTG_BROKER_CA_FILE=str(stranger.crt))
    assert untrusted.returncode == 4, untrusted
    assert len(untrusted.stderr.strip().splitlines()) == 1, untrusted.stderr
    if mutual:
        anonymous = refused(test_pod, "status", TTG_BROKER_CERT_FILE="", TTG_BROKER_KEY_FILE="")
        assert anonymous.returncode != 0 and not anonymous.stdout, anonymous


@pytest.mark.parametrize("tls", ["plain", "tls", "mutual-tls"])
@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
def test_rendered_pods_run_a_sweep_that_verifies(tmp_path: Path, backend: str, tls: str) -> None:
    settings = [f"backend={backend}", f"run.id={RUN}", f"run.params={PARAMS}"]
    settings += [f"run.chunkSize={CHUNK_SIZE}", "run.workMs=20"]
    if tls != "plain":
        settings += [f"{backend}.tls.enabled=true", f"{backend}.tls.certManager.issuerRef.name=ca"]
    if tls == "mutual-tls":
        settings += [f"{backend}.tls.clientAuth.enabled=true"]
    args = [word for s in settings for word in ("--set", s)]
    rendered = render("helm4", *args, apis=(CERT_MANAGER_API,) if tls != "plain" else ())
    ca = CA.create(tmp_path / "pki")
    secrets = issue_as_cert_manager(rendered, ca)
    assert bool(secrets) == (tls != "plain"), sorted(secrets)
    pods: list[Pod] = []
    broker = start_broker(rendered, backend, tmp_path, secrets)

    def pod_of(kind: str, name: str, pod_dir: str) -> Pod:
        service = f"ttg-{backend}:{SERVICE_PORT[backend, tls != 'plain']}"
        return ttg_pod(
            rendered,
            kind,
            name,
            addresses={service: f"127.0.0.1:{broker.port}"},
            workdir=tmp_path / pod_dir,
            cluster_secrets=secrets,
        )

    try:
        if tls != "plain":
            test_pod = pod_of("Pod", "ttg-test-status", "test")
            assert_tls_enforced(rendered, backend, broker, test_pod, ca, secrets, tmp_path)

        # The seeding Job's container, then the helm test pod's: the run exists.
        seed = pod_of("Job", "ttg-seed", "seed")
        seeded = seed.run("seed")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        test_pod = pod_of("Pod", "ttg-test-status", "test")
        checked = test_pod.run("status")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert json.loads(checked.stdout)["run"] == RUN

        # The exporter, with no worker yet: the queue KEDA scales on is all there.
        if has_exporter():
            exporter = pod_of("Deployment", "ttg-exporter", "exporter")
            pods.append(exporter)
            exporter.start("exporter")
            exporter_port = int(exporter.env("exporter")["TTG_METRICS_PORT"])
            eventually(
                lambda: exporter.http_probe("exporter", "readinessProbe", exporter_port) == 200,
                timeout=120,
                what="the exporter ready",
            )

            def queue() -> dict[str, Any]:
                status, body = http_get(exporter_port, "/api/queue")
                assert status == 200, status
                return dict(json.loads(body))

            def queued() -> tuple[int, int]:
                q = queue()
                return q["queued"], q["runs"].get(RUN, {}).get("queued", -1)

            eventually(
                lambda: queued() == (CHUNKS, CHUNKS),
                timeout=60,
                what=f"/api/queue: {CHUNKS} chunks queued for no worker",
            )

        # Two worker pods; their probes answer on the rendered paths.
        workers = [pod_of("Deployment", "ttg-worker", f"w{i}") for i in range(2)]
        for pod in workers:
            pods.append(pod)
            pod.start("worker")
        for pod in workers:
            port = int(pod.env("worker")["TTG_METRICS_PORT"])
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                eventually(
                    lambda pod=pod, port=port, probe=probe: (
                        pod.http_probe("worker", probe, port) == 200
                    ),
                    timeout=120,
                    interval=0.2,
                    what=f"worker {probe} answers 200",
                )

        done = eventually(
            lambda: ttg_json(test_pod, "status", "status", "--run", RUN)["complete"],
            timeout=300,
            interval=0.5,
            what="the run complete",
        )
        assert done
        report = ttg_json(test_pod, "status", "verify", "--run", RUN)
        assert report["ok"] and report["_exit"] == 0, report
        assert report["done_params"] == report["total_params"] == PARAMS, report

        if has_exporter():
            done_series = re.compile(
                rf'^ttg_run_chunks_done\{{[^}}]*run="{RUN}"[^}}]*\}} {CHUNKS}(\.0)?$', re.MULTILINE
            )
            eventually(
                lambda: done_series.search(http_get(exporter_port, "/metrics")[1]),
                timeout=60,
                what=f"the exporter's ttg_run_chunks_done reaches {CHUNKS}",
            )

        # Invariant 4: on SIGTERM a worker exits 0.
        for pod in workers:
            assert pod.stop(signal.SIGTERM, timeout=60) == [0], pod.log("worker")
    finally:
        for pod in pods:
            pod.stop(signal.SIGKILL)
        broker.stop()
        print_logs(tmp_path)
