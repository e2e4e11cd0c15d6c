"""The Kubernetes layer of the end-to-end suite: install state, kill, restart, read status.

Everything else (the scenarios and the verification) is tests/scenarios.py,
shared with the local fault suite. The cluster is one made by kind/up.sh (CI:
helm/kind-action, then kind/up.sh), given with pytest-kubernetes' options:

    pytest tests/e2e -m e2e --k8s-provider external --k8s-kubeconfig-override ~/.kube/config

Without a cluster every test here skips with one reason.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

#: Where kind/up.sh installs the release.
NAMESPACE = os.environ.get("NAMESPACE", "ttg")
RELEASE = os.environ.get("RELEASE", "ttg")
#: The run values/kind.yaml seeds.
RUN = "e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("k8s_kubeconfig_override") or config.getoption("k8s_kubeconfig"):
        return
    skip = pytest.mark.skip(
        reason="no Kubernetes cluster: pass --k8s-kubeconfig-override (see kind/up.sh)"
    )
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@dataclass
class KindHarness:
    """``tests.scenarios.Harness`` on a Kind cluster."""

    kubeconfig: str

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", self.kubeconfig, "-n", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def ttg_json(self, *args: str) -> dict[str, Any]:
        proc = self.kubectl(
            "exec", f"deploy/{RELEASE}-worker", "--", "ttg", *args, "--json", check=False
        )
        try:
            out: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"ttg {' '.join(args)}: {proc.stdout!r} {proc.stderr!r}") from None
        out["_exit"] = proc.returncode
        return out

    def kill_worker(self, worker: str, sig: int) -> None:
        """A true crash: signal the worker process from its node, not a pod delete.

        Inside its container the worker is PID 1, which ignores signals sent from
        within its own PID namespace; from the Kind node (a Docker container) it is
        an ordinary process.
        """
        pod = worker.rsplit("-", 2)[0]  # names are <hostname>-<pid>-<random>
        node = self.kubectl("get", "pod", pod, "-o", "jsonpath={.spec.nodeName}").stdout
        container = self.kubectl(
            "get", "pod", pod, "-o", "jsonpath={.status.containerStatuses[0].containerID}"
        ).stdout.split("://")[-1]
        pid = subprocess.run(
            [
                "docker",
                "exec",
                node,
                "crictl",
                "inspect",
                "--output",
                "go-template",
                "--template",
                "{{.info.pid}}",
                container,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        subprocess.run(["docker", "exec", node, "kill", f"-{sig}", pid], check=True, timeout=60)

    def restart_broker(self) -> None:
        """Delete the broker pod (persistence on) and wait until its replacement is ready."""
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=broker"
        self.kubectl("delete", "pod", "-l", selector, "--wait=true", timeout=180)
        self.kubectl(
            "wait", "--for=condition=Ready", "pod", "-l", selector, "--timeout=300s", timeout=320
        )


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> KindHarness:
    kubeconfig = request.config.getoption("k8s_kubeconfig_override") or request.config.getoption(
        "k8s_kubeconfig"
    )
    return KindHarness(str(kubeconfig))
