"""Publishing: the release workflow, its script, the locked image dependencies, Dependabot.

What can be checked without GitHub or a registry: the workflow's shape and
permissions, the tag check and the chart packaging of ci/release.sh (run for
real), and that the image's hash-pinned lock satisfies the package's ranges.
"""

from __future__ import annotations

import http.server
import os
import re
import shlex
import subprocess
import tarfile
import threading
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from packaging.requirements import Requirement

from tests.chart.conftest import CHART, HELMS
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
        stdin=subprocess.DEVNULL,
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
    for name in ("ci", "e2e"):
        assert jobs[name]["permissions"] == {"contents": "read"}, name
    for name in ("image", "chart"):
        assert jobs[name]["permissions"] == {
            "contents": "read",
            "packages": "write",
            "id-token": "write",
        }, name
    assert jobs["chart"]["needs"] == "image"


def needs(job: dict[str, Any]) -> set[str]:
    value = job.get("needs", [])
    return {value} if isinstance(value, str) else set(value)


def upstream(jobs: dict[str, Any], name: str) -> set[str]:
    """Every job ``name`` waits for, directly or not."""
    out: set[str] = set()
    for n in needs(jobs[name]):
        out |= {n} | upstream(jobs, n)
    return out


def test_nothing_is_published_before_ci_and_e2e_pass_on_the_tagged_commit() -> None:
    """The gate (issue 20, N14): the release runs the same CI and e2e workflows as every
    change, on the tagged commit, and every job that can write packages waits for both."""
    jobs = workflow()["jobs"]
    gates = {"ci": "ci.yaml", "e2e": "e2e.yaml"}
    for name, called in gates.items():
        # The self-repository form: this repository's workflow at the tagged commit.
        assert jobs[name]["uses"] == f"$/.github/workflows/{called}", jobs[name]
        called_doc = yaml.safe_load((ROOT / ".github" / "workflows" / called).read_text())
        assert "workflow_call" in called_doc[True], f"{called} cannot be called"
    publishing = [n for n, j in jobs.items() if j.get("permissions", {}).get("packages") == "write"]
    assert set(publishing) == {"image", "chart"}
    for name in publishing:
        assert set(gates) <= upstream(jobs, name), name


def test_the_chart_is_packaged_with_the_digest_the_image_job_built() -> None:
    jobs = workflow()["jobs"]
    image, chart = jobs["image"], jobs["chart"]
    assert image["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"
    (package,) = [s for s in chart["steps"] if "release.sh package" in s.get("run", "")]
    assert package["env"]["IMAGE_DIGEST"] == "${{ needs.image.outputs.digest }}"
    runs = [s.get("run", "") for s in chart["steps"]]
    assert runs.index("bash ci/release.sh check-public") > runs.index(
        "bash ci/release.sh push-chart out/chart"
    )


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


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_release_packages_a_chart_that_runs_the_owners_image_by_digest(tmp_path: Path) -> None:
    proc = release(
        "package", str(tmp_path), GITHUB_REPOSITORY_OWNER="Some-Fork", IMAGE_DIGEST=DIGEST
    )
    assert proc.returncode == 0, proc.stderr
    package = tmp_path / f"ttg-{chart_yaml()['version']}.tgz"
    with tarfile.open(package) as tar:
        member = tar.extractfile("ttg/values.yaml")
        assert member is not None
        values = yaml.safe_load(member.read())
    assert values["image"]["repository"] == "ghcr.io/some-fork/ttg-worker"
    assert values["image"]["tag"] == "", "the tag follows appVersion"
    assert values["image"]["digest"] == DIGEST
    # Every pod of the worker image in the packaged chart pulls exactly that image.
    rendered = subprocess.run(
        [str(HELMS["helm4"]), "template", "ttg", str(package)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    images = set(re.findall(r'image: "(ghcr\.io/some-fork/ttg-worker[^"]*)"', rendered))
    assert images == {f"ghcr.io/some-fork/ttg-worker:{chart_yaml()['appVersion']}@{DIGEST}"}
    # The source chart keeps the project's own image, by tag.
    source = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    assert source["repository"] == "ghcr.io/ttg-sweeps/ttg-worker" and source["digest"] == ""


@pytest.mark.parametrize("digest", ["", "sha256:abc", "latest"])
def test_release_refuses_to_package_without_the_image_digest(tmp_path: Path, digest: str) -> None:
    proc = release("package", str(tmp_path), GITHUB_REPOSITORY_OWNER="o", IMAGE_DIGEST=digest)
    assert proc.returncode != 0 and "IMAGE_DIGEST" in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("*.tgz"))


READMES = [ROOT / "README.md", CHART / "README.md"]


def test_chart_readme_says_the_default_backend_is_a_single_point_of_failure() -> None:
    """Issue 20, N9 (its words): one Redis pod on one ReadWriteOnce volume, said plainly,
    with what to use instead; the in-chart Redis HA sentence is its helper's to complete."""
    text = " ".join((CHART / "README.md").read_text().split())
    assert "one Redis pod on one ReadWriteOnce volume: a single point of failure" in text
    assert "rabbitmq.replicas=3" in text and "redis+cluster://" in text
    # And it is true: the default renders one Redis replica on one ReadWriteOnce claim.
    rendered = subprocess.run(
        [str(HELMS["helm4"]), "template", "ttg", str(CHART)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    (sts,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def shell_lines(text: str) -> list[list[str]]:
    """The README's indented helm and docker command lines, continuations joined, as the
    shell splits them."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in re.findall(r"^    ((?:helm|docker) .*)$", joined, re.M):
        command = line.split("  #")[0]
        for part in command.split(" && "):
            out.append(shlex.split(part))
    return out


@pytest.mark.parametrize("readme", READMES, ids=["top", "chart"])
def test_readmes_lead_with_an_install_that_works_from_a_checkout(readme: Path) -> None:
    """Issue 20, N1: the first install a newcomer reads works before any release: it builds
    the worker image and installs charts/ttg running exactly that image."""
    commands = shell_lines(readme.read_text())
    installs = [c for c in commands if c[:2] == ["helm", "install"]]
    first = installs[0]
    assert first[3] == "charts/ttg", first
    builds = [c for c in commands[: commands.index(first)] if c[:2] == ["docker", "build"]]
    assert builds, "no `docker build` of the worker image before the first install"
    built = builds[-1][builds[-1].index("-t") + 1]
    assert builds[-1][-1] == "worker", builds[-1]
    sets = [w for i, w in enumerate(first) if w == "--set" or first[i - 1] == "--set"]
    rendered = subprocess.run(
        [str(HELMS["helm4"]), "template", "ttg", str(CHART), *sets],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    images = {
        c["image"]
        for d in docs
        if d["kind"] in {"Deployment", "Job", "Pod"}
        for c in (d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"])["containers"]
    }
    assert images == {built}, (images, built)


@pytest.mark.parametrize("readme", READMES, ids=["top", "chart"])
def test_readmes_present_the_oci_chart_as_what_a_release_tag_publishes(readme: Path) -> None:
    text = readme.read_text()
    lines = [
        c for c in shell_lines(text) if c[:2] == ["helm", "install"] and c[3].startswith("oci:")
    ]
    assert lines, "the released chart is not shown"
    for words in lines:
        assert words[3] == "oci://ghcr.io/ttg-sweeps/charts/ttg", words
        # No version that may not exist yet: the one a release tag published.
        assert words[words.index("--version") + 1] == "<version>", words
    assert re.search(r"tag `v<version>`", text), "which tag publishes it"
    assert "ghcr.io/ttg-sweeps/charts/ttg --version 0." not in text


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


# -- signing and verifying, as the release does it and the README tells users to ---------

REPOSITORY, TAG = "TTG-Sweeps/ttg", "v" + str(chart_yaml()["version"])
SIGNER = f"https://github.com/{REPOSITORY}/.github/workflows/release.yaml@refs/tags/{TAG}"
ISSUER = "https://token.actions.githubusercontent.com"


def recording(bin_dir: Path, name: str, log: Path, stdout: str = "") -> Path:
    """An executable ``name`` that records its arguments in ``log`` (one call per line).

    Stands in for the registry clients (helm push, cosign), which need GitHub's
    OIDC token and ghcr.io: what is checked is the order and the arguments
    release.sh gives them.
    """
    path = bin_dir / name
    path.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "{name} $*" >> {shlex.quote(str(log))}\n'
        # Read what is piped in (a password), as the real client does: the writer
        # must never find the pipe closed.
        "cat > /dev/null\n"
        f"printf '%s' {shlex.quote(stdout)}\n"
    )
    path.chmod(0o755)
    return path


def test_push_chart_signs_the_pushed_digest_and_verifies_it_as_users_will(tmp_path: Path) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    pushed = "sha256:" + "ab" * 32
    helm = recording(
        bin_dir, "helm", log, f"Pushed: ghcr.io/ttg-sweeps/charts/ttg\nDigest: {pushed}\n"
    )
    recording(bin_dir, "cosign", log)
    version = chart_yaml()["version"]
    (tmp_path / f"ttg-{version}.tgz").write_text("a chart")
    proc = release(
        "push-chart", str(tmp_path),
        HELM=str(helm), PATH=f"{bin_dir}:{os.environ['PATH']}",
        GITHUB_REPOSITORY_OWNER="TTG-Sweeps", GITHUB_REPOSITORY=REPOSITORY,
        GITHUB_REF=f"refs/tags/{TAG}", GITHUB_ACTOR="bot", GITHUB_TOKEN="t",  # noqa: S106
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    chart = "ghcr.io/ttg-sweeps/charts/ttg"
    assert calls[1] == f"helm push {tmp_path}/ttg-{version}.tgz oci://ghcr.io/ttg-sweeps/charts"
    assert calls[2:] == [
        f"cosign sign --yes {chart}@{pushed}",
        f"cosign verify {chart}@{pushed} --certificate-identity {SIGNER} "
        f"--certificate-oidc-issuer {ISSUER}",
    ]


def test_sign_image_verifies_the_signature_it_made(tmp_path: Path) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    recording(bin_dir, "cosign", log)
    image = "ghcr.io/ttg-sweeps/ttg-worker@sha256:" + "cd" * 32
    proc = release(
        "sign-image", image, str(tmp_path / "sbom.json"),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        GITHUB_REPOSITORY=REPOSITORY, GITHUB_REF=f"refs/tags/{TAG}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == f"cosign sign --yes {image}"
    assert calls[-1] == (
        f"cosign verify {image} --certificate-identity {SIGNER} --certificate-oidc-issuer {ISSUER}"
    )


@pytest.mark.parametrize("readme", [ROOT / "README.md", CHART / "README.md"], ids=["top", "chart"])
def test_readmes_verify_the_image_and_the_chart_as_the_release_signs_them(readme: Path) -> None:
    text = readme.read_text().replace("\\\n", " ")
    verifies = {
        m[0]: m[1]
        for m in re.findall(
            r"cosign verify (ghcr\.io/ttg-sweeps/(?:ttg-worker|charts/ttg)):\S+ (.*)", text
        )
    }
    assert set(verifies) == {"ghcr.io/ttg-sweeps/ttg-worker", "ghcr.io/ttg-sweeps/charts/ttg"}
    for ref, flags in verifies.items():
        words = shlex.split(flags)
        identity = words[words.index("--certificate-identity") + 1]
        # The release workflow of this repository, at the tag of that release.
        assert re.fullmatch(
            r"https://github\.com/ttg-sweeps/ttg/\.github/workflows/release\.yaml@refs/tags/v\S+",
            identity,
        ), (ref, identity)
        assert words[words.index("--certificate-oidc-issuer") + 1] == ISSUER, ref


# -- can anyone pull what was published? -------------------------------------------------


class Registry(http.server.BaseHTTPRequestHandler):
    """Enough of a registry's token and manifest endpoints for anonymous pulls."""

    public: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            self._answer(200, b'{"token": "anonymous"}')
        else:
            self._answer(404, b"")

    def do_HEAD(self) -> None:
        repository = self.path.removeprefix("/v2/").split("/manifests/")[0]
        self._answer(200 if repository in self.public else 401, b"")

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("public", "warned"),
    [
        ({"ttg-sweeps/ttg-worker", "ttg-sweeps/charts/ttg"}, None),
        ({"ttg-sweeps/ttg-worker"}, "ttg-sweeps/charts/ttg"),
        (set(), "ttg-sweeps/ttg-worker ttg-sweeps/charts/ttg"),
    ],
    ids=["public", "chart-private", "both-private"],
)
def test_check_public_warns_about_packages_nobody_can_pull(
    public: set[str], warned: str | None
) -> None:
    Registry.public = public
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proc = release(
            "check-public",
            GITHUB_REPOSITORY_OWNER="TTG-Sweeps",
            REGISTRY_API=f"http://127.0.0.1:{server.server_address[1]}",
        )
    finally:
        server.shutdown()
    # A release that did publish stays green; the warning is an annotation on it.
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("::warning")]
    if warned is None:
        assert not warnings, proc.stdout
        assert "can be pulled without credentials" in proc.stderr
    else:
        (warning,) = warnings
        assert f"not pullable without credentials: {warned}." in warning
        assert "Change visibility" in warning
