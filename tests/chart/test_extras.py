"""Extra volumes, mounts and env on every TTG pod, and an external broker with a private CA.

An operator whose broker runs elsewhere (`backend: external`) may have it
behind a private CA and asking for client certificates. The chart takes that
two ways, both tested here against a real local Redis that serves TLS only,
with a certificate from a CA no system trusts, and refuses clients without a
certificate of its own:

- ``external.tls.caSecret`` / ``external.tls.clientSecret``: the chart mounts
  the Secrets and sets TTG_BROKER_CA_FILE, TTG_BROKER_CERT_FILE, TTG_BROKER_KEY_FILE;
- ``extraVolumes`` / ``extraVolumeMounts`` / ``extraEnv``: the operator mounts
  whatever they like into every TTG pod and points the variables at it.

Either way the rendered seeding Job, exporter, worker and helm test pod run
(tests/chart/pods.py, as the kubelet would, the Secrets given as the cluster
would hold them) and the run verifies; the same pod without the client
certificate, or trusting only the system's CAs, is refused.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.chart.certs import CA
from tests.chart.conftest import CHART, Rendered, render, run_helm
from tests.chart.pods import Pod
from tests.chart.wiring import has_exporter, http_get, print_logs, ttg_json, ttg_pod
from tests.helpers import eventually
from ttg.endpoint import TLS
from ttg.processes import RedisServer

pytestmark = pytest.mark.chart

#: The pods of the worker image: (kind, name, container).
TTG_PODS = [
    ("Deployment", "ttg-worker", "worker"),
    ("Deployment", "ttg-exporter", "exporter"),
    ("Job", "ttg-seed", "seed"),
    ("Pod", "ttg-test-status", "status"),
]
EXTRAS = tuple(
    word
    for setting in (
        "extraEnv[0].name=HTTPS_PROXY",
        "extraEnv[0].value=http://proxy:3128",
        "extraVolumes[0].name=corp-ca",
        "extraVolumes[0].configMap.name=corp-ca",
        "extraVolumeMounts[0].name=corp-ca",
        "extraVolumeMounts[0].mountPath=/etc/corp",
    )
    for word in ("--set", setting)
)


def pod_spec(r: Rendered, kind: str, name: str) -> dict[str, Any]:
    doc = r.get(kind, name)
    spec: dict[str, Any] = doc["spec"] if kind == "Pod" else doc["spec"]["template"]["spec"]
    return spec


def container(r: Rendered, kind: str, name: str, container: str) -> dict[str, Any]:
    (c,) = [c for c in pod_spec(r, kind, name)["containers"] if c["name"] == container]
    return dict(c)


@pytest.mark.parametrize("backend", ["redis", "rabbitmq", "external"])
def test_extras_reach_every_ttg_pod_and_not_the_broker(major: str, backend: str) -> None:
    extra = ["--set", "external.existingSecret=url"] if backend == "external" else []
    r = render(major, "--set", f"backend={backend}", *extra, *EXTRAS)
    for kind, name, c in TTG_PODS:
        spec = pod_spec(r, kind, name)
        env = container(r, kind, name, c)["env"]
        assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in env, name
        assert {"name": "corp-ca", "configMap": {"name": "corp-ca"}} in spec["volumes"], name
        mounts = container(r, kind, name, c)["volumeMounts"]
        assert {"name": "corp-ca", "mountPath": "/etc/corp"} in mounts, name
    for name, spec in r.pod_specs():
        if name.startswith(f"ttg-{backend}"):
            volumes = [v["name"] for v in spec.get("volumes", [])]
            assert "corp-ca" not in volumes, "the broker's pods are not TTG's"


def test_worker_extra_env_stays_the_workers_own(major: str) -> None:
    r = render(major, "--set", "worker.extraEnv[0].name=OMP_NUM_THREADS",
               "--set-string", "worker.extraEnv[0].value=1")  # fmt: skip
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in container(
        r, "Deployment", "ttg-worker", "worker"
    )["env"]
    for kind, name, c in TTG_PODS[1:]:
        assert "OMP_NUM_THREADS" not in str(container(r, kind, name, c)["env"]), name


@pytest.mark.parametrize(
    ("settings", "mounted"),
    [
        (("external.tls.caSecret=corp-ca",), {"broker-ca"}),
        (("external.tls.clientSecret=ttg-client",), {"broker-client"}),
        (
            ("external.tls.caSecret=corp-ca", "external.tls.clientSecret=ttg-client"),
            {"broker-ca", "broker-client"},
        ),
        ((), set()),
    ],
    ids=["ca", "client", "both", "none"],
)
def test_external_tls_values_mount_the_secrets_in_every_ttg_pod(
    major: str, settings: tuple[str, ...], mounted: set[str]
) -> None:
    r = render(
        major, "--set", "backend=external", "--set", "external.existingSecret=url",
        *(w for s in settings for w in ("--set", s)),
    )  # fmt: skip
    wanted = {"broker-ca": "TTG_BROKER_CA_FILE", "broker-client": "TTG_BROKER_CERT_FILE"}
    for kind, name, c in TTG_PODS:
        volumes = {v["name"]: v for v in pod_spec(r, kind, name).get("volumes", [])}
        assert set(volumes) & set(wanted) == mounted, name
        env = {e["name"] for e in container(r, kind, name, c)["env"]}
        assert {v for k, v in wanted.items() if k in mounted} <= env, name
        assert not {v for k, v in wanted.items() if k not in mounted} & env, name
    if "broker-ca" in mounted:
        volumes = pod_spec(r, "Deployment", "ttg-worker")["volumes"]
        volume = next(v for v in volumes if v["name"] == "broker-ca")
        assert volume["secret"] == {
            "secretName": "corp-ca",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("extraVolumeMounts[0].name=x", "mountPath"),
        ("extraEnv[0].value=x", "name"),
        ("extraVolumes[0].name=Bad_Name", "name"),
        ("external.tls.caFile=/x", "caFile"),
    ],
)
def test_schema_names_a_bad_extra(major: str, setting: str, field: str) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), "--set", setting)
    assert proc.returncode != 0, setting
    assert field in proc.stderr, proc.stderr


# -- a real external broker behind a private CA, asking for client certificates --------

RUN, PARAMS, CHUNK_SIZE = "extras-1", 1000, 100
#: The external Redis requires it (in the URL of the Secret, as an operator writes it).
PASSWORD = "s3cret-pw"  # noqa: S105 - a test broker's


def refused(pod: Pod, container: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The container's `ttg status` with ``env`` changed, not waiting for the broker."""
    return subprocess.run(
        pod.argv(container),
        env={**pod.env(container), "TTG_CONNECT_TIMEOUT_SECONDS": "0", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("how", ["external-tls-values", "extra-volumes-and-env"])
def test_external_broker_with_a_private_ca_and_client_certificates(
    tmp_path: Path, how: str
) -> None:
    ca = CA.create(tmp_path / "pki", "corp-private-ca")
    server = ca.issue("redis", usages=["serverAuth"], dns=["localhost"], ips=["127.0.0.1"])
    client = ca.issue("ttg-client", usages=["clientAuth"])
    broker = RedisServer(
        tls=TLS(str(ca.crt), str(server.crt), str(server.key)),
        password=PASSWORD,
        # A client without a certificate this CA signed is refused at the handshake.
        extra_args=["--tls-auth-clients", "yes"],
    ).start()
    secrets = {
        "broker": {"url": f"rediss://:{PASSWORD}@127.0.0.1:{broker.port}/0"},
        "corp-ca": {"ca.crt": ca.crt.read_text()},
        "ttg-client": {"tls.crt": client.crt.read_text(), "tls.key": client.key.read_text()},
    }
    settings = [
        "backend=external", "external.existingSecret=broker", "external.kind=redis",
        f"run.id={RUN}", f"run.params={PARAMS}", f"run.chunkSize={CHUNK_SIZE}", "run.workMs=10",
    ]  # fmt: skip
    if how == "external-tls-values":
        settings += ["external.tls.caSecret=corp-ca", "external.tls.clientSecret=ttg-client"]
    else:
        settings += [
            "extraVolumes[0].name=tls", "extraVolumes[0].projected.sources[0].secret.name=corp-ca",
            "extraVolumes[0].projected.sources[1].secret.name=ttg-client",
            "extraVolumeMounts[0].name=tls", "extraVolumeMounts[0].mountPath=/etc/corp-tls",
            "extraEnv[0].name=TTG_BROKER_CA_FILE", "extraEnv[0].value=/etc/corp-tls/ca.crt",
            "extraEnv[1].name=TTG_BROKER_CERT_FILE", "extraEnv[1].value=/etc/corp-tls/tls.crt",
            "extraEnv[2].name=TTG_BROKER_KEY_FILE", "extraEnv[2].value=/etc/corp-tls/tls.key",
        ]  # fmt: skip
    rendered = render("helm4", *(w for s in settings for w in ("--set", s)))
    pods: list[Pod] = []

    def pod_of(kind: str, name: str) -> Pod:
        return ttg_pod(
            rendered,
            kind,
            name,
            addresses={},  # the URL names the broker as it is: nothing to substitute
            workdir=tmp_path / name,
            cluster_secrets=secrets,
        )

    try:
        test_pod = pod_of("Pod", "ttg-test-status")
        # Without the client certificate, or trusting only the system's CAs: refused.
        anonymous = refused(test_pod, "status", TTG_BROKER_CERT_FILE="", TTG_BROKER_KEY_FILE="")
        assert anonymous.returncode != 0 and not anonymous.stdout, anonymous
        public = {k: v for k, v in test_pod.env("status").items() if k != "TTG_BROKER_CA_FILE"}
        untrusted = subprocess.run(
            test_pod.argv("status"),
            env={**public, "TTG_CONNECT_TIMEOUT_SECONDS": "0"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert untrusted.returncode == 4, untrusted

        seeded = pod_of("Job", "ttg-seed").run("seed")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        checked = test_pod.run("status")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert json.loads(checked.stdout)["run"] == RUN

        if has_exporter():
            exporter = pod_of("Deployment", "ttg-exporter")
            pods.append(exporter)
            exporter.start("exporter")
            port = int(exporter.env("exporter")["TTG_METRICS_PORT"])
            eventually(
                lambda: exporter.http_probe("exporter", "readinessProbe", port) == 200,
                timeout=120,
                what="the exporter reaches the broker",
            )
            status, body = http_get(port, "/api/queue")
            assert status == 200 and RUN in json.loads(body)["runs"], body

        worker = pod_of("Deployment", "ttg-worker")
        pods.append(worker)
        worker.start("worker")
        eventually(
            lambda: ttg_json(test_pod, "status", "status", "--run", RUN)["complete"],
            timeout=240,
            interval=0.5,
            what="the run complete",
        )
        report = ttg_json(test_pod, "status", "verify", "--run", RUN)
        assert report["ok"] and report["_exit"] == 0, report
        assert report["done_params"] == PARAMS, report
        assert worker.stop(signal.SIGTERM, timeout=60) == [0], worker.log("worker")
    finally:
        for pod in pods:
            pod.stop(signal.SIGKILL)
        broker.stop()
        print_logs(tmp_path)
