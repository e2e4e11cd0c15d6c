"""One version: the package's metadata, ``ttg --version``, the chart and its image agree."""

from __future__ import annotations

import re
import tomllib

import yaml

import ttg
from tests.helpers import ROOT
from tests.helpers import ttg as run_ttg


def test_one_version_everywhere() -> None:
    package = tomllib.loads((ROOT / "worker" / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((ROOT / "charts" / "ttg" / "Chart.yaml").read_text())
    # The chart's appVersion is the worker image's tag and its version label (ci/release.sh).
    assert chart["version"] == chart["appVersion"] == package
    assert ttg.__version__ == package, "the installed metadata is stale: pip install -e worker"
    assert run_ttg("--version", env={}).stdout.strip() == f"ttg {package}"
    # Nothing in the package writes the version down a second time.
    sources = (ROOT / "worker" / "src" / "ttg").rglob("*.py")
    assert not [p for p in sources if re.search(r"__version__ = \"\d+\.\d+", p.read_text())]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{package}]" in changelog
