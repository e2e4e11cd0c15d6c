"""Rendering the chart with real Helm binaries (3 and 4), cached per scenario."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helpers import ROOT

CHART = ROOT / "charts" / "ttg"
#: Helm majors the chart promises to work with, and where `make tools` puts them.
HELMS = {
    "helm3": Path(os.environ.get("HELM3", ROOT / ".tools" / "bin" / "helm3")),
    "helm4": Path(os.environ.get("HELM4", ROOT / ".tools" / "bin" / "helm")),
}
#: APIs a cluster with the Prometheus operator and KEDA offers (for the optional objects).
ALL_APIS = [
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "keda.sh/v1alpha1/ScaledObject",
]
#: cert-manager's API (the brokers' TLS certificates).
CERT_MANAGER_API = "cert-manager.io/v1/Certificate"
#: Kubernetes versions every rendered manifest must validate against, strictly.
KUBE_VERSIONS = ("1.29.0", "1.34.0")
#: Kinds from CRDs, which the Kubernetes schemas do not know.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject", "Certificate"}
#: Values every scenario test renders: chart-testing's (charts/ttg/ci, which `ct`
#: also installs), render-only ones that need APIs or Secrets a bare cluster
#: lacks (tests/chart/scenarios), and the environment overlays (values/).
SCENARIO_DIR = ROOT / "tests" / "chart" / "scenarios"
CT_SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
SCENARIOS = (
    CT_SCENARIOS
    + sorted(SCENARIO_DIR.glob("*-values.yaml"))
    + sorted((ROOT / "values").glob("*.yaml"))
)


#: Settings that swap the ServiceMonitor for a PodMonitor (the chart refuses both at once).
PODMONITOR_INSTEAD = (
    "--set",
    "metrics.serviceMonitor.enabled=false",
    "--set",
    "metrics.podMonitor.enabled=true",
)


def needs_apis(values: Path) -> bool:
    """Whether a values file turns on what the chart renders only with its API
    (KEDA, the Prometheus operator's objects): without it, rendering fails."""
    doc = yaml.safe_load(values.read_text()) or {}
    metrics = doc.get("metrics") or {}
    monitors = ("serviceMonitor", "podMonitor", "prometheusRule")
    return bool((doc.get("keda") or {}).get("enabled")) or any(
        (metrics.get(m) or {}).get("enabled") for m in monitors
    )


#: Annotation on Secrets whose values the chart generates once and keeps (lookup).
KEEP = "helm.sh/resource-policy"


def without_generated_secrets(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The docs with the data of kept, generated Secrets masked.

    Without a cluster (helm template, Argo CD) `lookup` finds nothing, so those
    Secrets get new random values on every render; in a cluster the chart reuses
    the stored ones, and they are never overwritten (kept, and ignored by Argo CD).
    """

    def mask(d: dict[str, Any]) -> dict[str, Any]:
        if d["kind"] == "Secret" and d["metadata"].get("annotations", {}).get(KEEP) == "keep":
            return {**d, "data": dict.fromkeys(d.get("data", {}), "<generated>")}
        return d

    return [mask(d) for d in docs]


@dataclass(frozen=True)
class Rendered:
    docs: list[dict[str, Any]]

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.docs}

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert found, (
            f"no {kind} {name} in {[(d['kind'], d['metadata']['name']) for d in self.docs]}"
        )
        return found[0]

    def pod_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(object name, pod spec) of every pod template and bare pod."""
        out = []
        for d in self.docs:
            spec = d.get("spec", {})
            if d["kind"] == "Pod":
                out.append((d["metadata"]["name"], spec))
            elif "template" in spec:
                out.append((d["metadata"]["name"], spec["template"]["spec"]))
        return out


def assert_valid_strictly(r: Rendered) -> None:
    """Every object validates strictly for each of KUBE_VERSIONS (CRD kinds: their shape only)."""
    assert r.docs
    for doc in r.docs:
        if doc["kind"] in CRD_KINDS:
            assert {"apiVersion", "metadata", "spec"} <= doc.keys()
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(
                    f"{doc['kind']} {doc['metadata']['name']} invalid for {version}: {e.message}"
                )


def assert_restricted(r: Rendered) -> None:
    """Every pod meets the restricted Pod Security Standard (and sets its resources)."""
    for name, spec in r.pod_specs():
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in spec["containers"] + spec.get("initContainers", []):
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert csc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert csc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "resources" in c, (name, c["name"])
        # Restricted allows only these volume types (no hostPath and the like).
        for v in spec.get("volumes", []):
            kinds = set(v) - {"name"}
            assert kinds <= {
                "configMap",
                "secret",
                "emptyDir",
                "persistentVolumeClaim",
                "projected",
                "downwardAPI",
                "csi",
                "ephemeral",
            }, (name, v)


def helm(major: str) -> Path:
    path = HELMS[major]
    if not path.exists():
        pytest.fail(f"{path} missing: run `make tools` (installs Helm 3 and 4 into .tools/bin)")
    return path


def run_helm(major: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm(major)), *args], capture_output=True, text=True, timeout=120, check=False
    )


@cache
def render(major: str, *args: str, apis: tuple[str, ...] = ()) -> Rendered:
    """`helm template ttg charts/ttg ARGS`, parsed; fails the test on a Helm error."""
    api_args = [f"--api-versions={a}" for a in apis]
    proc = run_helm(major, "template", "ttg", str(CHART), "--namespace", "sweeps", *api_args, *args)
    assert proc.returncode == 0, proc.stderr
    return Rendered([d for d in yaml.safe_load_all(proc.stdout) if d])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects ``labels``."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        # A bare map, as in a Service's selector.
        selector = {"matchLabels": selector}
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@pytest.fixture(params=sorted(HELMS))
def major(request: pytest.FixtureRequest) -> str:
    return str(request.param)
