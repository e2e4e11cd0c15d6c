"""The Applications Argo CD generates, as it would render them (tests/gitops/appset.py):
what they track, what they are called, and what their project lets them sync
(issue 20: N3, N5, N17)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version

from tests.chart.conftest import ALL_APIS, CERT_MANAGER_API, CHART, render
from tests.gitops.appset import name_normalized, render_applications
from tests.helpers import ROOT

pytestmark = pytest.mark.chart

ARGOCD = ROOT / "argocd"
PRODUCTION = {"ttg.io/production": "true"}
#: Cluster names as `argocd cluster add <context>` registers them: kubeconfig context
#: names of GKE and EKS (underscores, colons, slashes), two that differ only at the end.
CLUSTERS = [
    {"name": "in-cluster", "server": "https://kubernetes.default.svc"},
    {"name": "gke_lab-sweeps_europe-west1_prod", "server": "https://10.0.0.1"},
    {
        "name": "arn:aws:eks:eu-west-1:123456789012:cluster/materials-science-sweeps-a",
        "server": "https://a.eks.amazonaws.com",
    },
    {
        "name": "arn:aws:eks:eu-west-1:123456789012:cluster/materials-science-sweeps-b",
        "server": "https://b.eks.amazonaws.com",
    },
    {"name": "My_Laptop", "server": "https://127.0.0.1:6443"},
]
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def applications() -> list[dict[str, Any]]:
    """For every cluster above registered and labelled for production."""
    return render_applications([{**c, "labels": PRODUCTION} for c in CLUSTERS])


def chart_version() -> Version:
    return Version(yaml.safe_load((CHART / "Chart.yaml").read_text())["version"])


def test_the_renderer_is_argo_cds_normalisation() -> None:
    assert name_normalized("gke_lab_europe-west1_prod") == "gke-lab-europe-west1-prod"
    assert name_normalized("arn:aws:eks:x:1:cluster/Prod.") == "arn-aws-eks-x-1-cluster-prod"
    assert name_normalized("-_in-cluster_-") == "in-cluster"


def test_production_tracks_a_released_tag_and_staging_tracks_main() -> None:
    """N3: main always names an image of a version not yet released (the image tag is the
    chart's appVersion); production must run a release whose image exists."""
    apps = applications()
    assert {a["metadata"]["labels"]["ttg.io/env"] for a in apps} == {"kind", "production"}
    for app in apps:
        revision = app["spec"]["source"]["targetRevision"]
        if app["metadata"]["labels"]["ttg.io/env"] == "kind":
            assert revision == "main", app["metadata"]["name"]
            continue
        tag = re.fullmatch(r"v(\d+\.\d+\.\d+)", revision)
        assert tag, f"{app['metadata']['name']} tracks {revision}, not a release tag"
        # A release main has reached: the tag of a version no later than main's chart.
        assert Version(tag[1]) <= chart_version(), revision
        assert app["spec"]["source"]["path"] == "charts/ttg"


def test_application_names_and_labels_stay_valid_for_gke_and_eks_cluster_names() -> None:
    """N5: Application names are DNS names, short enough for Argo CD's label tracking
    (app.kubernetes.io/instance is a 63-character label value), distinct per cluster."""
    apps = applications()
    production = [a for a in apps if a["metadata"]["labels"]["ttg.io/env"] == "production"]
    assert len(production) == 2 * len(CLUSTERS)
    names = [a["metadata"]["name"] for a in apps]
    assert len(set(names)) == len(names), "two clusters share an Application name"
    for app in apps:
        name = app["metadata"]["name"]
        assert len(name) <= 63 and DNS_SUBDOMAIN.fullmatch(name), name
        for key, value in app["metadata"]["labels"].items():
            assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), (name, key, value)
    eks = [
        a for a in production if a["spec"]["destination"]["server"].endswith("eks.amazonaws.com")
    ]
    assert len({a["metadata"]["labels"]["ttg.io/cluster"] for a in eks}) == 2
    by_server = {a["spec"]["destination"]["server"]: a for a in production}
    # Short enough: Argo CD's nameNormalized as it is.
    gke = by_server["https://10.0.0.1"]["metadata"]["labels"]["ttg.io/cluster"]
    assert gke == "gke-lab-sweeps-europe-west1-prod"
    # Longer: its first 30 characters and 8 of the whole name's hash.
    eks_a = by_server["https://a.eks.amazonaws.com"]["metadata"]["labels"]["ttg.io/cluster"]
    assert re.fullmatch(r"arn-aws-eks-eu-west-1-12345678-[0-9a-f]{8}", eks_a), eks_a


def test_every_application_renders_its_own_values_files() -> None:
    for app in applications():
        helm = app["spec"]["source"]["helm"]
        assert helm["valueFiles"], app["metadata"]["name"]
        env = app["metadata"]["labels"]["ttg.io/env"]
        assert any(f.endswith(f"values/{env}.yaml") for f in helm["valueFiles"])
        assert app["spec"]["project"] == "ttg"


@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
def test_the_project_admits_everything_the_chart_renders_with_tls_monitoring_and_keda(
    backend: str,
) -> None:
    """N5: TLS from cert-manager renders Certificates; the project must let them sync."""
    settings = [
        f"backend={backend}", f"{backend}.tls.enabled=true",
        f"{backend}.tls.clientAuth.enabled=true", f"{backend}.tls.certManager.issuerRef.name=ca",
        "keda.enabled=true", "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true", "metrics.grafanaDashboard.enabled=true",
    ]  # fmt: skip
    if backend == "rabbitmq":
        settings += ["rabbitmq.replicas=3"]
    r = render(
        "helm4",
        *(w for s in settings for w in ("--set", s)),
        apis=(*ALL_APIS, CERT_MANAGER_API),
    )
    assert "Certificate" in r.kinds()
    (project,) = load(ARGOCD / "project.yaml")
    allowed = {(w["group"], w["kind"]) for w in project["spec"]["namespaceResourceWhitelist"]}
    rendered = {(d["apiVersion"].rpartition("/")[0], d["kind"]) for d in r.docs}
    assert rendered <= allowed, f"the AppProject does not allow {rendered - allowed}"


def sync_wave(doc: dict[str, Any]) -> int:
    annotations = doc["metadata"].get("annotations", {})
    return int(annotations.get("argocd.argoproj.io/sync-wave", "0"))


def test_bootstrap_syncs_the_project_before_the_applicationset_in_a_project_of_its_own() -> None:
    """N17: the ApplicationSet names project `ttg`: the project must exist first; and the
    bootstrap Application, which may create projects, is not in the allow-all `default`."""
    (project,) = load(ARGOCD / "project.yaml")
    (application_set,) = load(ARGOCD / "applicationset.yaml")
    assert sync_wave(project) < sync_wave(application_set)
    docs = load(ARGOCD / "bootstrap.yaml")
    (bootstrap,) = [d for d in docs if d["kind"] == "Application"]
    (own,) = [d for d in docs if d["kind"] == "AppProject"]
    assert docs.index(own) < docs.index(bootstrap), "kubectl apply creates the project first"
    assert bootstrap["spec"]["project"] == own["metadata"]["name"] != "default"
    spec = own["spec"]
    # Only what argocd/ holds, only into the argocd namespace of this cluster, only from here.
    synced = {(d["apiVersion"].split("/")[0], d["kind"]) for d in (project, application_set)}
    assert {(w["group"], w["kind"]) for w in spec["namespaceResourceWhitelist"]} == synced
    assert not spec.get("clusterResourceWhitelist")
    assert spec["destinations"] == [
        {"server": "https://kubernetes.default.svc", "namespace": "argocd"}
    ]
    repo = application_set["spec"]["template"]["spec"]["source"]["repoURL"]
    assert spec["sourceRepos"] == [repo] == [bootstrap["spec"]["source"]["repoURL"]]
    assert bootstrap["spec"]["destination"] == spec["destinations"][0]
