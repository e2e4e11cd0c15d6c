"""What chart-testing's `ct lint` checks with its default configuration, done here.

`ct` itself cannot be downloaded on this machine (CI runs it: ci/ct-lint.sh), so
this runs its checks one by one: Chart.yaml against ct's chart schema (strict:
no unknown keys), yamllint with ct's default rules on Chart.yaml, values.yaml and
every ci/*-values.yaml, maintainers, a version bump against main when the chart
changed, and `helm lint` per ci values file (test_chart.py). And what `ct install`
needs: the ci scenarios install on a bare cluster (no Secret made beforehand, no
CRD needed for rendering).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.chart.conftest import CHART, CT_SCENARIOS, render
from tests.helpers import ROOT

pytestmark = pytest.mark.chart

#: chart-testing's default yamllint rules (its etc/lintconf.yaml), as a yamllint config.
CT_YAMLLINT_RULES = {
    "rules": {
        "braces": {
            "min-spaces-inside": 0,
            "max-spaces-inside": 0,
            "min-spaces-inside-empty": -1,
            "max-spaces-inside-empty": -1,
        },
        "brackets": {
            "min-spaces-inside": 0,
            "max-spaces-inside": 0,
            "min-spaces-inside-empty": -1,
            "max-spaces-inside-empty": -1,
        },
        "colons": {"max-spaces-before": 0, "max-spaces-after": 1},
        "commas": {"max-spaces-before": 0, "min-spaces-after": 1, "max-spaces-after": 1},
        "comments": {"require-starting-space": True, "min-spaces-from-content": 2},
        "document-end": "disable",
        "document-start": "disable",
        "empty-lines": {"max": 2, "max-start": 0, "max-end": 0},
        "hyphens": {"max-spaces-after": 1},
        "indentation": {
            "spaces": "consistent",
            "indent-sequences": "whatever",
            "check-multi-line-strings": False,
        },
        "key-duplicates": "enable",
        "line-length": "disable",
        "new-line-at-end-of-file": "enable",
        "new-lines": {"type": "unix"},
        "trailing-spaces": "enable",
        "truthy": {"level": "warning"},
    }
}

#: chart-testing's Chart.yaml schema (its etc/chart_schema.yaml): key -> (types, required).
CHART_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "home": ((str,), False),
    "version": ((str,), True),
    "apiVersion": ((str,), True),
    "appVersion": ((str, int, float), False),
    "description": ((str,), False),
    "keywords": ((list,), False),
    "sources": ((list,), False),
    "maintainers": ((list,), False),
    "dependencies": ((list,), False),
    "icon": ((str,), False),
    "engine": ((str,), False),
    "condition": ((str,), False),
    "tags": ((str,), False),
    "deprecated": ((bool,), False),
    "kubeVersion": ((str,), False),
    "annotations": ((dict,), False),
    "type": ((str,), False),
}
DEPENDENCY_KEYS = {
    "name",
    "version",
    "repository",
    "condition",
    "tags",
    "enabled",
    "import-values",
    "alias",
}
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?"
)
CHARTS = [CHART, *sorted(p.parent for p in (CHART / "charts").glob("*/Chart.yaml"))]


def chart_yaml(chart: Path = CHART) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((chart / "Chart.yaml").read_text())
    return doc


@pytest.mark.parametrize("chart", CHARTS, ids=lambda p: p.name)
def test_chart_yaml_passes_chart_testings_schema_strictly(chart: Path) -> None:
    doc = chart_yaml(chart)
    assert set(doc) <= set(CHART_SCHEMA), (
        f"keys ct's schema does not know: {set(doc) - set(CHART_SCHEMA)}"
    )
    for key, (types, required) in CHART_SCHEMA.items():
        if required:
            assert key in doc, key
        if key in doc:
            assert isinstance(doc[key], types), (key, doc[key])
    assert doc["apiVersion"] == "v2"
    assert SEMVER.fullmatch(doc["version"]), doc["version"]
    for dependency in doc.get("dependencies", []):
        assert {"name", "version"} <= set(dependency) <= DEPENDENCY_KEYS, dependency
        sub = yaml.safe_load((chart / "charts" / dependency["name"] / "Chart.yaml").read_text())
        assert sub["version"] == dependency["version"], dependency["name"]


def test_maintainers_are_what_ct_validates() -> None:
    """ct needs maintainers (name + email or url); it checks each name is an account on
    the repository's host (https://github.com/<name>), which only CI can reach."""
    maintainers = chart_yaml()["maintainers"]
    assert maintainers
    home = chart_yaml()["home"]
    for m in maintainers:
        assert set(m) <= {"name", "email", "url"}, m
        assert re.fullmatch(r"[A-Za-z0-9](-?[A-Za-z0-9])*", m["name"]), "a GitHub account name"
        assert m.get("email") or m.get("url"), m
        assert home.startswith(f"https://github.com/{m['name']}/"), (home, m)


@pytest.mark.parametrize(
    "path",
    [CHART / "Chart.yaml", CHART / "values.yaml", *CT_SCENARIOS],
    ids=lambda p: str(p.relative_to(CHART)),
)
def test_yaml_passes_yamllint_with_chart_testings_rules(path: Path) -> None:
    problems = [
        p
        for p in linter.run(
            path.read_text(), YamlLintConfig(content=yaml.safe_dump(CT_YAMLLINT_RULES))
        )
        if p.level == "error"
    ]
    assert not problems, "\n".join(f"{path.name}:{p.line}:{p.column} {p.message}" for p in problems)


def test_changed_chart_has_a_higher_version_than_main() -> None:
    """ct's check-version-increment: a chart that differs from the target branch needs a bump."""
    has_main = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "main"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if has_main.returncode != 0:
        pytest.skip("no local main branch to compare with (CI's ct lint compares instead)")
    changed = subprocess.run(
        ["git", "diff", "--quiet", "main", "--", "charts/ttg"], cwd=ROOT, check=False
    ).returncode
    if changed == 0:
        pytest.skip("the chart is as on main")
    old = subprocess.run(
        ["git", "show", "main:charts/ttg/Chart.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Version(chart_yaml()["version"]) > Version(yaml.safe_load(old)["version"])


def referenced_secrets(spec: dict[str, Any]) -> set[str]:
    """Secrets a pod cannot start without (optional references excluded)."""
    names = set()
    for c in spec.get("initContainers", []) + spec["containers"]:
        for e in c.get("env") or []:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                names.add(ref["name"])
        for source in c.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref and not ref.get("optional"):
                names.add(ref["name"])
    for v in spec.get("volumes", []):
        if "secret" in v and not v["secret"].get("optional"):
            names.add(v["secret"]["secretName"])
    return names


@pytest.mark.parametrize("values", CT_SCENARIOS, ids=lambda p: p.name)
def test_ct_install_scenarios_need_no_secret_made_beforehand(values: Path) -> None:
    """`ct install` runs each ci/*-values.yaml on a bare cluster: every Secret a pod
    needs must be one the chart renders."""
    r = render("helm4", "-f", str(values))
    rendered = {d["metadata"]["name"] for d in r.docs if d["kind"] == "Secret"}
    for name, spec in r.pod_specs():
        missing = referenced_secrets(spec) - rendered
        assert not missing, (
            f"{values.name}: {name} needs Secrets {missing} the chart does not create"
        )
