"""Argo CD packaging, workflows and scripts: what can be proven without a cluster or GitHub."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    ALL_APIS,
    CHART,
    PODMONITOR_INSTEAD,
    SCENARIO_DIR,
    assert_valid_strictly,
    render,
    run_helm,
    selects,
    without_generated_secrets,
)
from tests.helpers import ROOT

pytestmark = pytest.mark.chart

ARGOCD = ROOT / "argocd"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yaml"))
VENV_BIN = ROOT / ".venv" / "bin"


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def appset() -> dict[str, Any]:
    (doc,) = load(ARGOCD / "applicationset.yaml")
    return doc


def elements() -> list[dict[str, Any]]:
    """Every element the ApplicationSet's generators combine with a cluster."""
    out: list[dict[str, Any]] = []
    for g in appset()["spec"]["generators"]:
        if "list" in g:
            out += g["list"]["elements"]
        else:
            out += next(x["list"]["elements"] for x in g["matrix"]["generators"] if "list" in x)
    return out


def cluster_apis(element: dict[str, Any]) -> tuple[str, ...]:
    """The APIs an element's cluster offers: production's runs the Prometheus operator
    (its overlay turns monitoring on); a Kind cluster has Kubernetes' own only."""
    return tuple(ALL_APIS) if element["env"] == "production" else ()


def production_generator() -> dict[str, Any]:
    (matrix,) = [g["matrix"] for g in appset()["spec"]["generators"] if "matrix" in g]
    return matrix


def test_every_argocd_manifest_parses_and_is_an_argo_kind() -> None:
    kinds = {d["kind"] for p in ARGOCD.glob("*.yaml") for d in load(p)}
    assert kinds == {"AppProject", "ApplicationSet", "Application"}
    for p in ARGOCD.glob("*.yaml"):
        for d in load(p):
            assert d["apiVersion"] == "argoproj.io/v1alpha1", p
            assert d["metadata"]["namespace"] == "argocd", p


def test_one_application_per_backend_and_environment() -> None:
    pairs = {(e["backend"], e["env"]) for e in elements()}
    assert pairs == {(b, env) for b in ("redis", "rabbitmq") for env in ("kind", "production")}
    spec = appset()["spec"]["template"]["spec"]
    assert spec["source"]["path"] == "charts/ttg"
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert spec["project"] == "ttg"


@pytest.mark.parametrize("element", elements(), ids=lambda e: f"{e['backend']}-{e['env']}")
def test_the_render_argo_cd_would_do_succeeds_and_validates(element: dict[str, Any]) -> None:
    files = [(CHART / f).resolve() for f in element["valueFiles"]]
    for f in files:
        assert f.is_file(), f"{f} referenced by the ApplicationSet does not exist"
        assert ROOT in f.parents, "Argo CD only reads files inside the repository"
    args: list[str] = []
    for f in files:
        args += ["-f", str(f)]
    args += ["--set", f"worker.autoscaling.enabled={str(element['autoscaling']).lower()}"]
    # Argo CD renders with the destination cluster's APIs: production's monitoring
    # needs the Prometheus operator there (without it the render fails, loudly).
    r = render("helm4", *args, apis=cluster_apis(element))
    assert ("StatefulSet", f"ttg-{element['backend']}") in {
        (d["kind"], d["metadata"]["name"]) for d in r.docs
    }
    assert ("HorizontalPodAutoscaler" in r.kinds()) == element["autoscaling"]
    (project,) = load(ARGOCD / "project.yaml")
    allowed = {w["kind"] for w in project["spec"]["namespaceResourceWhitelist"]}
    assert r.kinds() <= allowed, f"the AppProject does not allow {r.kinds() - allowed}"
    assert_valid_strictly(r)


def test_replicas_are_ignored_only_where_autoscaling_is_on() -> None:
    patch = appset()["spec"]["templatePatch"]
    conditional = patch[
        patch.index("{{- if .autoscaling }}") : patch.index(
            "{{- end }}", patch.index("if .autoscaling")
        )
    ]
    assert '"/spec/replicas"' in conditional and "kind: Deployment" in conditional
    assert "/spec/replicas" not in yaml.safe_dump(appset()["spec"]["template"])
    assert any(e["autoscaling"] for e in elements()) and not all(
        e["autoscaling"] for e in elements()
    )


def test_production_goes_only_to_clusters_labelled_for_it() -> None:
    """The bootstrap must not put 20 one-CPU workers next to the Kind apps (issue 9)."""
    plain = [g["list"]["elements"] for g in appset()["spec"]["generators"] if "list" in g]
    for element in (e for group in plain for e in group):
        assert element["env"] == "kind", element
        assert element["server"] == "https://kubernetes.default.svc", element
    clusters, lists = production_generator()["generators"]
    assert clusters["clusters"]["selector"] == {"matchLabels": {"ttg.io/production": "true"}}
    assert {e["env"] for e in lists["list"]["elements"]} == {"production"}
    template = appset()["spec"]["template"]
    assert template["spec"]["destination"]["server"] == "{{ .server }}"
    assert "{{ .values.cluster }}" in template["metadata"]["name"], "one Application per cluster"


def test_project_admits_the_generated_namespaces_and_this_repository() -> None:
    (project,) = load(ARGOCD / "project.yaml")
    (bootstrap,) = [d for d in load(ARGOCD / "bootstrap.yaml") if d["kind"] == "Application"]
    pattern = project["spec"]["destinations"][0]["namespace"].replace("*", ".*")
    for e in elements():
        assert re.fullmatch(pattern, f"ttg-{e['backend']}-{e['env']}")
    repo = appset()["spec"]["template"]["spec"]["source"]["repoURL"]
    assert repo in project["spec"]["sourceRepos"]
    assert bootstrap["spec"]["source"]["path"] == "argocd"
    assert (ROOT / bootstrap["spec"]["source"]["path"]).is_dir()


def test_workflows_pass_actionlint_and_the_github_schema() -> None:
    lint = subprocess.run(
        [
            str(VENV_BIN / "actionlint"),
            "-shellcheck",
            str(VENV_BIN / "shellcheck"),
            *map(str, WORKFLOWS),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    schema = subprocess.run(
        [
            str(VENV_BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert schema.returncode == 0, schema.stdout + schema.stderr


def test_workflows_pass_zizmors_offline_audits() -> None:
    """Template injection, excessive permissions, unpinned or impostor references, credentials
    persisted by checkout...: zizmor's audits that need no GitHub API, with its default
    persona (what ci/lint.sh runs)."""
    proc = subprocess.run(
        [
            str(VENV_BIN / "zizmor"),
            "--offline",
            "--no-progress",
            str(ROOT / ".github" / "workflows"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout + proc.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_pin_actions_by_sha_and_read_only_permissions(workflow: Path) -> None:
    text = workflow.read_text()
    uses = re.findall(r"uses:\s*(\S+)(.*)", text)
    assert uses
    for action, comment in uses:
        if action.startswith("$/.github/workflows/"):
            # This repository's own workflow, at the same commit (self-repository form).
            assert (ROOT / action[2:]).is_file(), action
            continue
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), (
            f"{action} is not pinned by SHA"
        )
        assert re.search(r"#\s*v\d", comment), f"{action} has no version comment"
    doc = yaml.safe_load(text)
    assert doc["permissions"] in ({}, {"contents": "read"})
    for job in doc["jobs"].values():
        if "uses" in job:
            continue  # a called workflow: its own jobs are checked in its file
        assert "timeout-minutes" in job
        for step in job["steps"]:
            run = step.get("run", "")
            assert not run or run.startswith(("make ", "bash ci/", "SKIP_CLUSTER=1 make ")), run


def test_every_shell_script_passes_shellcheck() -> None:
    scripts = sorted(
        {
            *ROOT.glob("ci/*.sh"),
            *ROOT.glob("kind/*.sh"),
            ROOT / "ci" / "ensure-helm",
            ROOT / ".ci" / "run",
        }
    )
    assert len(scripts) >= 6
    proc = subprocess.run(
        [str(VENV_BIN / "shellcheck"), *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout


def test_kind_cluster_has_one_control_plane_and_three_labelled_workers() -> None:
    (cluster,) = load(ROOT / "kind" / "cluster.yaml")
    roles = [n["role"] for n in cluster["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") == 3
    assert all(n.get("labels") for n in cluster["nodes"])


def test_make_has_the_cluster_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("kind-up", "kind-down", "e2e"):
        assert re.search(rf"^{target}:.*## ", makefile, re.M), target


def argo_cd_label_tracking(docs: list[dict[str, Any]], app: str) -> list[dict[str, Any]]:
    """What Argo CD's label tracking does: the instance label of every object it manages
    becomes the Application's name (pod templates and selectors are left alone)."""
    out = copy.deepcopy(docs)
    for d in out:
        d["metadata"].setdefault("labels", {})["app.kubernetes.io/instance"] = app
    return out


def template_labels(d: dict[str, Any]) -> dict[str, str]:
    if d["kind"] == "Pod":
        return dict(d["metadata"]["labels"])
    return dict(d["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
def test_selectors_keep_matching_when_argo_cd_rewrites_the_instance_label(backend: str) -> None:
    monitoring = ("-f", str(SCENARIO_DIR / "monitoring-values.yaml"), "--set", f"backend={backend}")
    r = render("helm4", *monitoring, apis=tuple(ALL_APIS))
    # The PodMonitor, from the render that has it instead of the ServiceMonitor.
    pod_monitor = render("helm4", *monitoring, *PODMONITOR_INSTEAD, apis=tuple(ALL_APIS))
    docs = argo_cd_label_tracking(
        r.docs + [d for d in pod_monitor.docs if d["kind"] == "PodMonitor"],
        f"ttg-{backend}-production-eu1",
    )
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    names = lambda ds: {d["metadata"]["name"] for d in ds}  # noqa: E731
    (service_monitor,) = by_kind["ServiceMonitor"]
    scraped = [
        s
        for s in by_kind["Service"]
        if selects(service_monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert names(scraped) == {"ttg-worker", "ttg-exporter"}
    (pod_monitor,) = by_kind["PodMonitor"]
    scraped = [
        w
        for w in by_kind["Deployment"]
        if selects(pod_monitor["spec"]["selector"], template_labels(w))
    ]
    assert names(scraped) == {"ttg-worker", "ttg-exporter"}
    (policy,) = by_kind["NetworkPolicy"]
    admitted = policy["spec"]["ingress"][0]["from"][0]["podSelector"]
    clients = by_kind["Deployment"] + by_kind["Job"] + by_kind["Pod"]
    assert all(selects(admitted, template_labels(c)) for c in clients)
    assert selects(policy["spec"]["podSelector"], template_labels(by_kind["StatefulSet"][0]))
    for service in by_kind["Service"]:
        assert any(
            selects(service["spec"]["selector"], template_labels(w))
            for w in by_kind["Deployment"] + by_kind["StatefulSet"]
        ), service["metadata"]["name"]


@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
def test_generated_broker_secret_survives_uninstall_and_argo_cd_prune(backend: str) -> None:
    secret = render("helm4", "--set", f"backend={backend}").get("Secret", f"ttg-{backend}")
    annotations = secret["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert "Prune=false" in annotations["argocd.argoproj.io/sync-options"].split(",")


@pytest.mark.parametrize("element", elements(), ids=lambda e: f"{e['backend']}-{e['env']}")
def test_an_unchanged_resync_renders_the_same_manifests(element: dict[str, Any]) -> None:
    """Argo CD re-renders on every sync: the same values must give the same objects.

    Only the generated Secret differs (no `lookup` in Argo CD): its data is in the
    Applications' ignoreDifferences, RespectIgnoreDifferences keeps it in the
    cluster, so there is no diff. The seeding hook does run again on every sync,
    and adds nothing: `ttg seed` of an existing run is a no-op (invariant 7; the
    fault suite checks it against real brokers).
    """
    args: list[str] = []
    for f in element["valueFiles"]:
        args += ["-f", str((CHART / f).resolve())]
    args += ["--set", f"worker.autoscaling.enabled={str(element['autoscaling']).lower()}"]
    args += [f"--api-versions={a}" for a in cluster_apis(element)]
    first = run_helm("helm4", "template", "ttg", str(CHART), *args)
    second = run_helm("helm4", "template", "ttg", str(CHART), *args)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    docs = [[d for d in yaml.safe_load_all(p.stdout) if d] for p in (first, second)]
    assert without_generated_secrets(docs[0]) == without_generated_secrets(docs[1])
    # What differs is exactly what the Applications tell Argo CD to ignore.
    ignored = {
        (d["kind"], d["name"].replace("{{ .backend }}", element["backend"]))
        for d in appset()["spec"]["template"]["spec"]["ignoreDifferences"]
    }
    differing = {(a["kind"], a["metadata"]["name"]) for a, b in zip(*docs, strict=True) if a != b}
    assert differing <= ignored, differing - ignored


def test_argocd_readme_says_how_the_worker_image_reaches_the_cluster() -> None:
    text = (ARGOCD / "README.md").read_text()
    assert "ghcr.io/ttg-sweeps/ttg-worker" in text
    assert "kind load" in text or "make kind-up" in text
    assert "imagePullSecrets" in text
    assert "ttg.io/production" in text
