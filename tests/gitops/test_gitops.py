"""Argo CD packaging, workflows and scripts: what can be proven without a cluster or GitHub."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import CHART, render
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
    return appset()["spec"]["generators"][0]["list"]["elements"]


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
    r = render("helm4", *args)
    assert ("StatefulSet", f"ttg-{element['backend']}") in {
        (d["kind"], d["metadata"]["name"]) for d in r.docs
    }
    assert ("HorizontalPodAutoscaler" in r.kinds()) == element["autoscaling"]
    (project,) = load(ARGOCD / "project.yaml")
    allowed = {w["kind"] for w in project["spec"]["namespaceResourceWhitelist"]}
    assert r.kinds() <= allowed, f"the AppProject does not allow {r.kinds() - allowed}"
    for doc in r.docs:
        for version in ("1.29.0", "1.34.0"):
            kubernetes_validate.validate(doc, version, strict=True)


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


def test_project_admits_the_generated_namespaces_and_this_repository() -> None:
    (project,) = load(ARGOCD / "project.yaml")
    (bootstrap,) = load(ARGOCD / "bootstrap.yaml")
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


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_pin_actions_by_sha_and_read_only_permissions(workflow: Path) -> None:
    text = workflow.read_text()
    uses = re.findall(r"uses:\s*(\S+)(.*)", text)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), (
            f"{action} is not pinned by SHA"
        )
        assert re.search(r"#\s*v\d", comment), f"{action} has no version comment"
    doc = yaml.safe_load(text)
    assert doc["permissions"] in ({}, {"contents": "read"})
    for job in doc["jobs"].values():
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
