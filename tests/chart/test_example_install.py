"""The `helm install` line of examples/README.md renders what the guide says, with Helm 3 and 4."""

from __future__ import annotations

import re
import shlex
from typing import Any

import kubernetes_validate
import pytest

from tests.chart.conftest import KUBE_VERSIONS, Rendered, render
from tests.examples.sweep import ALLOW, COMPUTE, GRID, GUIDE
from tests.helpers import ROOT
from ttg.compute import check_allowed, parse_allow
from ttg.space import parse

pytestmark = pytest.mark.chart

#: The guide's helm command: the one shell block that starts with it.
GUIDE_HELM = re.compile(r"```sh\n(helm install ttg charts/ttg .*?)\n```", re.S)
#: The top-level README's short form of it: the indented block that runs the example's compute.
README_HELM = re.compile(
    r"^    (helm install ttg charts/ttg --set image\.repository=[^\n]*\\\n"
    r"\s+--set run\.compute=.*?)\n\n",
    re.S | re.M,
)
#: Where each document keeps its helm line.
HELM_LINES = {"examples/README.md": GUIDE_HELM, "README.md": README_HELM}


def helm_args(doc: str) -> list[str]:
    """The arguments after `helm install ttg charts/ttg` in ``doc``, as the shell splits them."""
    (block,) = HELM_LINES[doc].findall((ROOT / doc).read_text())
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:4] == ["helm", "install", "ttg", "charts/ttg"], words
    return words[4:]


def guide_image() -> str:
    """The image the guide builds and pushes."""
    (tag,) = re.findall(r"docker build -t (\S+) examples/sweep-sim/", GUIDE.read_text())
    return tag


def container(r: Rendered, kind: str, name: str) -> dict[str, Any]:
    first: dict[str, Any] = r.get(kind, name)["spec"]["template"]["spec"]["containers"][0]
    return first


@pytest.mark.parametrize("doc", sorted(HELM_LINES))
def test_helm_line_runs_the_example_compute_over_its_grid_in_its_image(
    major: str, doc: str
) -> None:
    r = render(major, *helm_args(doc))

    for kind, name in [("Deployment", "ttg-worker"), ("Job", "ttg-seed"),
                       ("Deployment", "ttg-exporter")]:  # fmt: skip
        assert container(r, kind, name)["image"] == guide_image(), (kind, name)
    seeder = container(r, "Job", "ttg-seed")
    args = seeder["args"]
    assert args[args.index("--compute") + 1] == COMPUTE
    assert args[args.index("--space") + 1] == GRID, "the grid survives Helm whole"
    assert args[args.index("--chunk-size") + 1] == "4"
    assert "--params" not in args
    assert parse(GRID).size == 32
    allow = r.get("ConfigMap", "ttg-worker")["data"]["TTG_COMPUTE_ALLOW"]
    assert ALLOW in allow.split(",")
    assert {"name": "TTG_COMPUTE_ALLOW", "value": allow} in seeder["env"]
    check_allowed(COMPUTE, parse_allow(allow))


def test_guide_helm_line_renders_valid_manifests(major: str) -> None:
    for doc in render(major, *helm_args("examples/README.md")).docs:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(
                    f"{doc['kind']} {doc['metadata']['name']} invalid for {version}: {e.message}"
                )
