"""RabbitMQ values that would break a cluster, or an upgrade, are refused at render time
with the reason and the way through (issue 20: N11, N16).

N16's guard compares the StatefulSet to render with the one installed, which the
chart reads with `lookup`. `helm template` (and Argo CD) has no cluster to look
up, so here the guard's helper is rendered by a small chart of the test's own,
which includes the real subchart and hands the helper the installed object as a
value; a second test holds the real template to calling it with `lookup`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.chart.conftest import CHART, render, run_helm

pytestmark = pytest.mark.chart

SUBCHART = CHART / "charts" / "rabbitmq"


def test_a_cluster_without_persistence_is_refused_with_the_reason(major: str) -> None:
    """N11: a node back on an empty volume boots blank; the -0 pod would form a second cluster."""
    proc = run_helm(
        major, "template", "ttg", str(CHART), "--set", "backend=rabbitmq",
        "--set", "rabbitmq.replicas=3", "--set", "rabbitmq.persistence.enabled=false",
    )  # fmt: skip
    assert proc.returncode != 0
    (reason,) = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert "rabbitmq.replicas=3 needs rabbitmq.persistence.enabled=true" in reason, proc.stderr
    assert "split" in reason and "rabbitmq.replicas=1" in reason
    # One node without persistence stays a throwaway broker, as before.
    one = render(major, "--set", "backend=rabbitmq", "--set", "rabbitmq.persistence.enabled=false")
    assert "StatefulSet" in one.kinds()


@pytest.fixture(scope="module")
def guard_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chart whose one template runs ``ttg-rabbitmq.unchangeable`` on ``.Values.existing``."""
    root = tmp_path_factory.mktemp("guard") / "guard"
    shutil.copytree(SUBCHART, root / "charts" / "rabbitmq")
    (root / "templates").mkdir()
    (root / "Chart.yaml").write_text(
        "apiVersion: v2\nname: guard\nversion: 0.0.1\n"
        "dependencies:\n  - name: rabbitmq\n    version: '*'\n"
    )
    (root / "values.yaml").write_text("existing: {}\nrabbitmq: {}\n")
    (root / "templates" / "check.yaml").write_text(
        '{{- $ctx := dict "Values" .Values.rabbitmq "Release" .Release'
        ' "fullname" "ttg-rabbitmq" }}\n'
        '{{- include "ttg-rabbitmq.unchangeable" (list $ctx .Values.existing) }}\n'
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: passed}\n"
    )
    return root


def installed(replicas: int, *, claim: str | None = "4Gi", class_: str = "") -> dict[str, Any]:
    """The parts of an installed StatefulSet the guard reads, as the API server returns them."""
    spec: dict[str, Any] = {
        "replicas": replicas,
        "podManagementPolicy": "Parallel" if replicas > 1 else "OrderedReady",
    }
    if claim is not None:
        claim_spec: dict[str, Any] = {"resources": {"requests": {"storage": claim}}}
        if class_:
            claim_spec["storageClassName"] = class_
        spec["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": claim_spec}]
    return {"kind": "StatefulSet", "spec": spec}


def guard(major: str, chart: Path, existing: dict[str, Any], *sets: str) -> tuple[bool, str]:
    args = [f"--set={s}" for s in sets]
    proc = run_helm(
        major, "template", "ttg", str(chart), f"--set-json=existing={json.dumps(existing)}", *args
    )
    return proc.returncode == 0, proc.stderr


def test_going_from_one_node_to_three_fails_early_with_the_documented_path(
    major: str, guard_chart: Path
) -> None:
    """N16: podManagementPolicy is immutable; the API server's own error names no way out."""
    ok, err = guard(major, guard_chart, installed(1), "rabbitmq.replicas=3")
    assert not ok
    assert "rabbitmq.replicas=3: StatefulSet ttg-rabbitmq runs 1 node(s)" in err, err
    assert "podManagementPolicy OrderedReady" in err and "to Parallel" in err
    for step in ("helm uninstall", "kubectl delete pvc", "'Changing the size' in the chart README"):
        assert step in err, step
    # And back: a cluster does not become one node in place either.
    ok, err = guard(major, guard_chart, installed(3), "rabbitmq.replicas=1")
    assert not ok and "podManagementPolicy Parallel" in err, err


@pytest.mark.parametrize(
    ("existing", "sets"),
    [
        ({}, ("rabbitmq.replicas=3",)),  # a first install: nothing to compare with
        (installed(1), ()),  # an upgrade that changes nothing the guard reads
        (installed(3), ("rabbitmq.replicas=5",)),  # 3 -> 5: new nodes join
        (installed(1, class_="fast"), ("rabbitmq.persistence.storageClass=fast",)),
        (installed(1, claim=None), ("rabbitmq.persistence.enabled=false",)),
    ],
)
def test_upgrades_kubernetes_allows_pass(
    major: str, guard_chart: Path, existing: dict[str, Any], sets: tuple[str, ...]
) -> None:
    ok, err = guard(major, guard_chart, existing, *sets)
    assert ok, err


@pytest.mark.parametrize(
    ("existing", "sets", "said"),
    [
        (installed(1, claim=None), (), "installed with persistence off"),
        (installed(1), ("rabbitmq.persistence.enabled=false",), "installed with persistence on"),
        (installed(1), ("rabbitmq.persistence.size=8Gi",), "claimed with size 4Gi"),
        (installed(1, class_="fast"), (), 'class "fast"'),
    ],
)
def test_changed_volume_claims_fail_early(
    major: str, guard_chart: Path, existing: dict[str, Any], sets: tuple[str, ...], said: str
) -> None:
    """A StatefulSet's volume claim template is immutable too (persistence on/off, size, class)."""
    ok, err = guard(major, guard_chart, existing, *sets)
    assert not ok
    assert said in err and "chart README" in err, err


def test_the_statefulset_runs_the_guard_on_the_installed_object() -> None:
    """The real template hands the guard what `lookup` finds under the StatefulSet's name."""
    text = (SUBCHART / "templates" / "statefulset.yaml").read_text()
    assert 'lookup "apps/v1" "StatefulSet" .Release.Namespace .fullname' in text
    assert 'include "ttg-rabbitmq.unchangeable" (list . $existing)' in text
