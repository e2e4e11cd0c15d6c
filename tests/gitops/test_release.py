"""Publishing: the release workflow, its script, the locked image dependencies, Dependabot.

What can be checked without GitHub or a registry: the workflow's shape and
permissions, the tag check and the chart packaging of ci/release.sh (run for
real), and that the image's hash-pinned lock satisfies the package's ranges.
"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.chart.conftest import CHART
from tests.helpers import ROOT

pytestmark = pytest.mark.chart

WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"
LOCK = ROOT / "worker" / "requirements.lock"


def workflow() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return doc


def chart_yaml() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return doc


def release(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "ci" / "release.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if s.get("uses", "").startswith(f"{action}@")]


def test_release_runs_on_version_tags_with_least_privilege() -> None:
    doc = workflow()
    # PyYAML reads the key `on` as True.
    assert doc[True] == {"push": {"tags": ["v*"]}}
    assert doc["permissions"] == {}
    jobs = doc["jobs"]
    assert jobs["check"]["permissions"] == {"contents": "read"}
    for name in ("image", "chart"):
        assert jobs[name]["permissions"] == {
            "contents": "read",
            "packages": "write",
            "id-token": "write",
        }, name
    assert jobs["image"]["needs"] == "check" and jobs["chart"]["needs"] == "image"


def test_release_builds_both_architectures_signs_and_attaches_an_sbom() -> None:
    image = workflow()["jobs"]["image"]
    (build,) = steps_using(image, "docker/build-push-action")
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True and build["with"]["sbom"] is True
    assert build["with"]["context"] == "worker"
    assert steps_using(image, "docker/setup-qemu-action")
    assert steps_using(image, "docker/setup-buildx-action")
    assert steps_using(image, "docker/login-action")
    (sbom,) = steps_using(image, "anchore/sbom-action")
    assert "steps.build.outputs.digest" in sbom["with"]["image"]
    assert steps_using(image, "sigstore/cosign-installer")
    runs = " ".join(s.get("run", "") for s in image["steps"])
    assert "release.sh sign-image" in runs and "${DIGEST}" in runs
    chart = workflow()["jobs"]["chart"]
    runs = " ".join(s.get("run", "") for s in chart["steps"])
    assert "release.sh package" in runs and "release.sh push-chart" in runs


def test_release_tag_must_be_the_chart_version_and_app_version() -> None:
    version = chart_yaml()["version"]
    assert chart_yaml()["appVersion"] == version
    ok = release("check-tag", f"v{version}")
    assert ok.returncode == 0, ok.stderr
    wrong = release("check-tag", "v99.0.0")
    assert wrong.returncode != 0 and f"Chart.yaml has version {version}" in wrong.stderr
    assert release("check-tag", version).returncode != 0, "the tag needs its v"


def test_release_image_is_ghcr_owner_ttg_worker_at_app_version() -> None:
    proc = release("image-ref", GITHUB_REPOSITORY_OWNER="TTG-Sweeps")
    assert proc.returncode == 0, proc.stderr
    app = chart_yaml()["appVersion"]
    assert proc.stdout.splitlines() == [
        f"version={app}",
        f"image=ghcr.io/ttg-sweeps/ttg-worker:{app}",
    ]


def test_release_packages_a_chart_that_runs_the_owners_image(tmp_path: Path) -> None:
    proc = release("package", str(tmp_path), GITHUB_REPOSITORY_OWNER="Some-Fork")
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tmp_path / f"ttg-{chart_yaml()['version']}.tgz") as tar:
        member = tar.extractfile("ttg/values.yaml")
        assert member is not None
        values = yaml.safe_load(member.read())
    assert values["image"]["repository"] == "ghcr.io/some-fork/ttg-worker"
    assert values["image"]["tag"] == "", "the tag follows appVersion"
    # The source chart keeps the project's own image.
    repository = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    assert repository == "ghcr.io/ttg-sweeps/ttg-worker"


@pytest.mark.parametrize("readme", [ROOT / "README.md", CHART / "README.md"], ids=["top", "chart"])
def test_readmes_install_the_published_chart(readme: Path) -> None:
    text = readme.read_text()
    assert re.search(r"helm install ttg oci://ghcr\.io/ttg-sweeps/charts/ttg", text)
    versions = set(re.findall(r"charts/ttg --version (\S+)", text))
    assert versions == {chart_yaml()["version"]}, "the README installs the current release"


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes) from worker/requirements.lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z])", LOCK.read_text()):
        m = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\]+)", block)
        if m:
            name = re.sub(r"[-_.]+", "-", m[1]).lower()
            out[name] = (m[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def test_image_lock_pins_every_dependency_with_hashes_within_the_package_ranges() -> None:
    pyproject = tomllib.loads((ROOT / "worker" / "pyproject.toml").read_text())
    lock = locked()
    assert lock, "worker/requirements.lock has no pins"
    wanted = [Requirement(r) for r in pyproject["project"]["dependencies"]] + [
        Requirement(r) for r in pyproject["build-system"]["requires"]
    ]
    for req in wanted:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in lock, f"{req.name} is not in worker/requirements.lock: run `make lock`"
        version, _ = lock[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"{req.name}=={version} in the lock is outside {req.specifier}: run `make lock`"
        )
    for name, (version, hashes) in lock.items():
        assert hashes, f"{name}=={version} has no --hash"
    header = LOCK.read_text().splitlines()[:6]
    assert "#    make lock" in header, "the lock says how to regenerate it"


def test_image_installs_the_lock_with_hash_checking() -> None:
    dockerfile = (ROOT / "worker" / "Dockerfile").read_text()
    assert "COPY requirements.lock" in dockerfile
    assert re.search(r"pip install --require-hashes [^\n]*-r requirements\.lock", dockerfile)
    # The package itself: no index, no build isolation (so nothing unhashed is fetched).
    assert re.search(r"pip install --no-deps --no-build-isolation --no-index", dockerfile)
    assert "requirements.lock" not in (ROOT / "worker" / ".dockerignore").read_text()


def test_dependabot_watches_actions_the_base_image_and_python() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    watched = {(u["package-ecosystem"], u["directory"]) for u in config["updates"]}
    assert {("github-actions", "/"), ("docker", "/worker"), ("pip", "/worker"), ("pip", "/")} <= (
        watched
    )
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "check-jsonschema"),
            "--builtin-schema",
            "vendor.dependabot",
            str(ROOT / ".github" / "dependabot.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Dependabot reads FROM lines: the base image must be named there, not via ARG.
    froms = re.findall(r"^FROM (\S+)", (ROOT / "worker" / "Dockerfile").read_text(), re.M)
    assert froms and all(f.startswith("python:") for f in froms), froms
