"""The worker image's pods (workers, exporter, seeding Job, helm test pod) run locally.

Shared by the wiring tests (tests/chart/test_wiring*.py): a rendered pod of the
worker image becomes ``python -m ttg`` from the venv with the pod's own args
and env (tests/chart/pods.py), the broker Service addresses it names pointing
at the local broker processes instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from tests.chart.brokers import free_port
from tests.chart.conftest import Rendered
from tests.chart.pods import Pod

#: What worker/Dockerfile sets with ENV, and its ENTRYPOINT (`ttg`, here from the venv).
WORKER_IMAGE_ENV = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "TTG_LOG_FORMAT": "json",
}
WORKER_ENTRYPOINT = [sys.executable, "-m", "ttg"]


@cache
def has_exporter() -> bool:
    """Whether this `ttg` has the `exporter` subcommand (docs/contract.md, landing with it)."""
    proc = subprocess.run(
        [*WORKER_ENTRYPOINT, "exporter", "--help"], capture_output=True, timeout=60, check=False
    )
    return proc.returncode == 0


def ttg_pod(
    rendered: Rendered,
    kind: str,
    name: str,
    *,
    addresses: Mapping[str, str],
    workdir: Path,
    cluster_secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> Pod:
    """A rendered pod of the worker image, each broker ``host:port`` in ``addresses``
    (as the chart names it) replaced by the local one."""
    doc = rendered.get(kind, name)
    spec = doc["spec"] if kind == "Pod" else doc["spec"]["template"]["spec"]
    workdir.mkdir(parents=True, exist_ok=True)
    return Pod(
        rendered,
        spec,
        workdir,
        name=workdir.name,
        cluster_secrets=cluster_secrets,
        image_env=WORKER_IMAGE_ENV,
        entrypoint=WORKER_ENTRYPOINT,
        replace=list(addresses.items()),
        # Every pod has its own network namespace; here they share one.
        env_overrides={"TTG_METRICS_PORT": str(free_port())},
    )


def ttg_json(pod: Pod, container: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """``ttg ARGS --json`` with a rendered container's environment (the helm test pod's)."""
    proc = subprocess.run(
        [*WORKER_ENTRYPOINT, *args, "--json"],
        env=pod.env(container),
        capture_output=True,
        text=True,
        timeout=timeout,
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


def print_logs(root: Path) -> None:
    """Every container log under ``root`` (pytest shows them only when the test failed)."""
    for log in sorted(root.glob("**/*.log")):
        text = log.read_text(errors="replace")[-3000:]
        print(f"--- {log.relative_to(root)}\n{text}")  # noqa: T201
