"""Fixtures of the results-store suites: a file store and a real S3-compatible server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.store.s3server import BUCKET, SeaweedS3

#: The stores every store suite runs against.
STORES = ["file", "s3"]


@dataclass
class StoreEnv:
    """A results store as the tests see it: its URL and what a process needs to reach it."""

    kind: str
    url: str
    env: dict[str, str] = field(default_factory=dict)
    #: The file store's directory (None for S3).
    root: Path | None = None
    server: SeaweedS3 | None = None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """One SeaweedFS for the session (a few seconds to start); each test has its own prefix."""
    server = SeaweedS3().start()
    yield server
    server.cleanup()


def _store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    if kind == "file":
        root = tmp_path / "results"
        root.mkdir()
        return StoreEnv("file", f"file://{root}", root=root)
    server: SeaweedS3 = request.getfixturevalue("s3_server")
    return StoreEnv("s3", f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}", dict(server.env), server=server)


@pytest.fixture(params=STORES)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StoreEnv:
    """Each results store in turn, reachable from this process and from the processes it starts."""
    s = _store(request.param, request, tmp_path)
    for name, value in s.env.items():
        monkeypatch.setenv(name, value)
    return s


@pytest.fixture
def file_store(tmp_path: Path) -> StoreEnv:
    root = tmp_path / "results"
    root.mkdir()
    return StoreEnv("file", f"file://{root}", root=root)
