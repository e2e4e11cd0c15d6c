"""The local harness: real worker processes on this machine, real signals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import BackendEnv
from tests.helpers import ttg_json
from ttg.local import LocalWorkers


@dataclass
class LocalHarness:
    """``tests.scenarios.Harness`` over local processes."""

    backend: BackendEnv
    workers: LocalWorkers

    def ttg_json(self, *args: str) -> dict[str, Any]:
        return ttg_json(*args, env=self.backend.env)

    def kill_worker(self, worker: str, sig: int) -> None:
        self.workers.kill(worker, sig)

    def restart_broker(self) -> None:
        self.backend.restart()


def seed(backend: BackendEnv, run: str, *args: str) -> dict[str, Any]:
    """``ttg seed --run RUN ARGS``, which must succeed; its JSON report."""
    out = ttg_json("seed", "--run", run, *args, env=backend.env)
    assert out["_exit"] == 0, out
    return out


def status(backend: BackendEnv, run: str) -> dict[str, Any]:
    """``ttg status --run RUN --json``."""
    return ttg_json("status", "--run", run, env=backend.env)


@pytest.fixture
def harness(backend: BackendEnv, workers: LocalWorkers) -> LocalHarness:
    return LocalHarness(backend, workers)
