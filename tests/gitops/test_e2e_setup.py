"""The Kind e2e setup, as far as it can be checked without a cluster.

The scenarios themselves run in .github/workflows/e2e.yaml; here: `make e2e`
without a cluster says what is missing in one line, the pytest limit sits above
the tests' own budgets, and the workflow covers three Kubernetes minors with
node images pinned by digest.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import test_e2e
from tests.helpers import ROOT

pytestmark = pytest.mark.chart


def e2e_without_a_cluster(
    tmp_path: Path, *command: str, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KUBECONFIG": str(tmp_path / "no-such-kubeconfig"),
        "PATH": path or os.environ["PATH"],
    }
    env.pop("SCENARIO", None)
    return subprocess.run(
        list(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "command", [("bash", "ci/e2e.sh"), ("make", "--no-print-directory", "e2e")]
)
def test_e2e_without_a_cluster_says_what_is_missing_in_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    proc = e2e_without_a_cluster(tmp_path, *command)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("e2e:")]
    assert len(lines) == 1, proc.stderr
    assert "no kubeconfig" in lines[0] and "make kind-up" in lines[0]
    assert "Traceback" not in proc.stderr and not proc.stdout.strip()


def test_e2e_without_kubectl_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    proc = e2e_without_a_cluster(tmp_path, "bash", "ci/e2e.sh", path=str(bin_dir))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "e2e: kubectl not found — create the cluster with `make kind-up` "
        "(needs kind, kubectl, docker), then run `make e2e` again"
    ]


def test_scenario_defaults_to_all_and_unknown_ones_are_refused() -> None:
    assert re.search(r"^SCENARIO \?= all$", (ROOT / "Makefile").read_text(), re.M)
    assert 'SCENARIO="${SCENARIO:-all}"' in (ROOT / "ci" / "e2e.sh").read_text()


def test_pytest_timeout_is_above_the_e2e_tests_own_budgets() -> None:
    budget = test_e2e.FAULT_BUDGET_S + test_e2e.COMPLETE_BUDGET_S
    marks = [m for m in test_e2e.pytestmark if m.name == "timeout"]
    assert marks and marks[0].args[0] == test_e2e.TEST_TIMEOUT_S > budget


def test_e2e_runs_on_three_kubernetes_minors_with_pinned_node_images() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "e2e.yaml").read_text())
    matrix = workflow["jobs"]["kind"]["strategy"]["matrix"]
    minors = matrix["kubernetes"]
    assert len(minors) >= 3 and "1.29" in minors, minors
    chart = yaml.safe_load((ROOT / "charts" / "ttg" / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.29.0-0", "the oldest minor tested is the oldest supported"
    by_minor = {i["kubernetes"]: i for i in matrix["include"]}
    for minor in minors:
        image = by_minor[minor]["node_image"]
        assert re.fullmatch(rf"kindest/node:v{re.escape(minor)}\.\d+@sha256:[0-9a-f]{{64}}", image)
        assert re.fullmatch(r"v0\.\d+\.\d+", by_minor[minor]["kind"])
    assert set(matrix["backend"]) == {"redis", "rabbitmq", "rabbitmq-cluster"}


def test_every_e2e_backend_installs_and_every_scenario_selects_a_test() -> None:
    """The matrix's backends are ones kind/up.sh installs, and each SCENARIO of ci/e2e.sh
    (its `-k` filter: dashes as underscores) selects exactly one e2e test."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "e2e.yaml").read_text())
    up = (ROOT / "kind" / "up.sh").read_text()
    for backend in workflow["jobs"]["kind"]["strategy"]["matrix"]["backend"]:
        assert re.search(rf"^\s+{re.escape(backend)}\)", up, re.M), backend
    assert "rabbitmq.replicas=3" in up
    script = (ROOT / "ci" / "e2e.sh").read_text()
    (case,) = re.findall(r"^\s+all \| ([a-z| -]+)\) ;;$", script, re.M)
    scenarios = [s.strip() for s in case.split("|")]
    assert "broker-node-sigkill" in scenarios
    tests = [name for name in dir(test_e2e) if name.startswith("test_")]
    for scenario in scenarios:
        selected = [name for name in tests if scenario.replace("-", "_") in name]
        assert len(selected) == 1, (scenario, selected)


def test_e2e_seeds_its_own_run_and_crashes_the_broker() -> None:
    conftest = (ROOT / "tests" / "e2e" / "conftest.py").read_text()
    assert "uuid" in conftest and "def seed(" in conftest
    assert '"kill", "-KILL"' in conftest, "a broker restart is a crash, not a graceful delete"
    assert "kubectl wait" not in conftest.replace("never a bare `kubectl wait`", "")


def e2e_matrix() -> dict[str, Any]:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "e2e.yaml").read_text())
    matrix: dict[str, Any] = workflow["jobs"]["kind"]["strategy"]["matrix"]
    return matrix


def test_kubectl_is_the_servers_version_in_every_e2e_job() -> None:
    """Issue 20, N15: kind-action's default kubectl (1.31) drove a 1.34 server."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "e2e.yaml").read_text())
    (kind_action,) = [
        s
        for s in workflow["jobs"]["kind"]["steps"]
        if s.get("uses", "").startswith("helm/kind-action@")
    ]
    assert kind_action["with"]["kubectl_version"] == "${{ matrix.kubectl }}"
    for entry in e2e_matrix()["include"]:
        node = re.search(r"kindest/node:(v[\d.]+)@", entry["node_image"])
        assert node and entry["kubectl"] == node[1], entry


def kind_version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.removeprefix("v").split("."))


def test_kind_enforces_network_policy_with_port_ranges() -> None:
    """Kind's default CNI (kindnet) enforces NetworkPolicy since v0.24 (kube-network-policies,
    which honours `endPort`, the stream replication port range of a RabbitMQ cluster). Every
    kind the e2e runs is at least that, and the cluster keeps its default CNI."""
    versions = [e["kind"] for e in e2e_matrix()["include"]]
    (default,) = re.findall(
        r'KIND_VERSION="\$\{KIND_VERSION:-(v[\d.]+)\}"', (ROOT / "kind" / "up.sh").read_text()
    )
    for version in [*versions, default]:
        assert kind_version(version) >= (0, 24, 0), version
    (cluster,) = [d for d in yaml.safe_load_all((ROOT / "kind" / "cluster.yaml").read_text()) if d]
    assert not cluster.get("networking", {}).get("disableDefaultCNI"), (
        "kindnet enforces the policies"
    )
    # The broker's policy does use a port range on a cluster (the e2e checks it is honoured).
    rendered = helm_template("--set", "backend=rabbitmq", "--set", "rabbitmq.replicas=3")
    (policy,) = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    ports = [p for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]
    assert any("endPort" in p for p in ports), ports


def helm_template(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(ROOT / ".tools" / "bin" / "helm"), "template", "ttg", str(ROOT / "charts" / "ttg"),
         *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize("backend", ["redis", "rabbitmq", "rabbitmq-cluster"])
def test_kind_up_preloads_every_image_the_nodes_would_pull(backend: str) -> None:
    """No node pulls from Docker Hub (anonymous pulls are rate-limited): kind/up.sh pulls each
    image once on the host and `kind load`s it, and the chart never asks a node to pull again."""
    proc = subprocess.run(
        ["bash", str(ROOT / "kind" / "up.sh"), "images"],
        env={**os.environ, "BACKEND": backend},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    preloaded = set(proc.stdout.split())
    values = ["-f", str(ROOT / "values" / "kind.yaml")]
    if backend != "redis":
        values += ["-f", str(ROOT / "values" / "rabbitmq.yaml")]
    if backend == "rabbitmq-cluster":
        values += ["--set", "rabbitmq.replicas=3"]
    containers = [
        c
        for d in helm_template(*values)
        if d["kind"] in {"Deployment", "StatefulSet", "Job", "Pod"}
        for spec in [d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"]]
        for c in spec["containers"] + spec.get("initContainers", [])
    ]
    built = "ttg-worker:dev"  # kind/up.sh builds and loads it
    assert {c["image"] for c in containers} == preloaded | {built}, preloaded
    for c in containers:
        assert c.get("imagePullPolicy") in ("IfNotPresent", "Never"), (
            c["name"],
            c.get("imagePullPolicy"),
        )
    assert "docker.io/library/" in " ".join(preloaded)


def test_e2e_refuses_a_kubectl_two_minors_from_the_server(tmp_path: Path) -> None:
    """ci/e2e.sh stops with one line when kubectl and the server are too far apart. (A stand-in
    kubectl plays the cluster: only e2e.sh's check is under test here.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        '  *"version -o json"*)\n'
        '    echo \'{"clientVersion": {"minor": "31"}, "serverVersion": {"minor": "34+"}}\' ;;\n'
        "  *) exit 0 ;;\n"
        "esac\n"
    )
    kubectl.chmod(0o755)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    proc = subprocess.run(
        ["bash", "ci/e2e.sh"],
        cwd=ROOT,
        env={**os.environ, "KUBECONFIG": str(kubeconfig),
             "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "e2e: kubectl 1.31 cannot drive a 1.34 server (at most one minor apart): "
        "install kubectl 1.34"
    ]
