"""The rendered chart, wired together for real: the closest thing to a cluster we have here.

Per backend: render the chart, start the rendered broker pod (init containers,
command, config; tests/chart/brokers.py), then run the rendered seeding Job's
container, two rendered worker containers, the exporter's (when the image's
`ttg` has the subcommand) and the helm test pod's, each with its own rendered
args and env — ConfigMaps and Secrets resolved as the kubelet would
(tests/chart/pods.py) — as ``python -m ttg`` from the venv. The only
substitutions are the broker's Service host:port (to 127.0.0.1 and the local
port), and the metrics port each pod would own alone. The run must verify.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.chart.brokers import BrokerPod, free_port, rabbitmq_pod, redis_pod
from tests.chart.conftest import Rendered, render
from tests.chart.pods import Pod
from tests.helpers import ROOT, eventually

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.slow]

#: What worker/Dockerfile sets with ENV, and its ENTRYPOINT (`ttg`, here from the venv).
WORKER_IMAGE_ENV = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "TTG_LOG_FORMAT": "json",
}
WORKER_ENTRYPOINT = [sys.executable, "-m", "ttg"]
RUN = "wiring-1"
PARAMS, CHUNK_SIZE = 3000, 100
CHUNKS = PARAMS // CHUNK_SIZE
#: Broker Service port per backend, as the chart renders it.
SERVICE_PORT = {"redis": 6379, "rabbitmq": 5672}


@cache
def has_exporter() -> bool:
    """Whether this `ttg` has the `exporter` subcommand (docs/contract.md, landing with it)."""
    proc = subprocess.run(
        [*WORKER_ENTRYPOINT, "exporter", "--help"], capture_output=True, timeout=60, check=False
    )
    return proc.returncode == 0


def test_worker_image_env_matches_the_dockerfile() -> None:
    dockerfile = (ROOT / "worker" / "Dockerfile").read_text()
    for key, value in WORKER_IMAGE_ENV.items():
        assert f"{key}={value}" in dockerfile, key
    assert 'ENTRYPOINT ["ttg"]' in dockerfile


def ttg_pod(
    rendered: Rendered, kind: str, name: str, *, broker: BrokerPod, backend: str, workdir: Path
) -> Pod:
    """A rendered pod of the worker image, its broker Service pointing at the local broker."""
    doc = rendered.get(kind, name)
    spec = doc["spec"] if kind == "Pod" else doc["spec"]["template"]["spec"]
    workdir.mkdir(parents=True, exist_ok=True)
    service = f"ttg-{backend}:{SERVICE_PORT[backend]}"
    return Pod(
        rendered,
        spec,
        workdir,
        name=workdir.name,
        image_env=WORKER_IMAGE_ENV,
        entrypoint=WORKER_ENTRYPOINT,
        replace=[(service, f"127.0.0.1:{broker.port}")],
        # Every pod has its own network namespace; here they share one.
        env_overrides={"TTG_METRICS_PORT": str(free_port())},
    )


def ttg_json(pod: Pod, container: str, *args: str) -> dict[str, Any]:
    """``ttg ARGS --json`` with a rendered container's environment (the helm test pod's)."""
    proc = subprocess.run(
        [*WORKER_ENTRYPOINT, *args, "--json"],
        env=pod.env(container),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        out: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"ttg {args}: {proc.stdout!r} {proc.stderr!r}") from None
    out["_exit"] = proc.returncode
    return out


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), ""
    except OSError:
        return 0, ""


def start_broker(rendered: Rendered, backend: str, tmp_path: Path) -> BrokerPod:
    make = redis_pod if backend == "redis" else rabbitmq_pod
    return make(rendered, tmp_path / "broker", tmp_path / "pvc-data").start()


@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
def test_rendered_pods_run_a_sweep_that_verifies(tmp_path: Path, backend: str) -> None:
    rendered = render(
        "helm4",
        "--set",
        f"backend={backend}",
        "--set",
        f"run.id={RUN}",
        "--set",
        f"run.params={PARAMS}",
        "--set",
        f"run.chunkSize={CHUNK_SIZE}",
        "--set",
        "run.workMs=20",
    )
    pods: list[Pod] = []
    broker = start_broker(rendered, backend, tmp_path)

    def pod_of(kind: str, name: str, pod_dir: str) -> Pod:
        return ttg_pod(
            rendered, kind, name, broker=broker, backend=backend, workdir=tmp_path / pod_dir
        )

    try:
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
        # Shown by pytest only when the test failed.
        for log in sorted(tmp_path.glob("*/*.log")):
            print(f"--- {log.relative_to(tmp_path)}\n{log.read_text(errors='replace')[-3000:]}")  # noqa: T201
