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
