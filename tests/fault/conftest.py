"""The local harness: real worker processes on this machine, real signals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests import scenarios
from tests.conftest import BackendEnv
from tests.helpers import ttg_json
from ttg.broker import Broker
from ttg.processes import LocalWorkers
from ttg.run import RunEvent


@dataclass
class LocalHarness:
    """``tests.scenarios.Harness`` over local processes."""

    backend: BackendEnv
    workers: LocalWorkers
    _broker: Broker | None = field(default=None, init=False)

    def ttg_json(self, *args: str) -> dict[str, Any]:
        return ttg_json(*args, env=self.backend.env)

    def kill_worker(self, worker: str, sig: int) -> None:
        self.workers.kill(worker, sig)

    def restart_broker(self) -> None:
        self.backend.restart()

    def events(self, run: str) -> list[RunEvent]:
        if self._broker is None:  # one connection for every read, closed with the backend
            self._broker = self.backend.broker()
        return list(self._broker.events(run))


def seed(backend: BackendEnv, run: str, *args: str) -> dict[str, Any]:
    """``ttg seed --run RUN ARGS``, which must succeed; its JSON report."""
    out = ttg_json("seed", "--run", run, *args, env=backend.env)
    assert out["_exit"] == 0, out
    return out


def status(backend: BackendEnv, run: str) -> dict[str, Any]:
    """``ttg status --run RUN --json``."""
    return ttg_json("status", "--run", run, env=backend.env)


def two_runs_at_once(h: LocalHarness, run: str, other: str) -> None:
    """Seed ``run`` (3,000 parameters in 30 chunks) and ``other`` (100 in 15 chunks of
    another space), serve both with the same 2 workers, and assert each verifies alone."""
    seed(h.backend, run, "--params", "3000", "--chunk-size", "100", "--work-ms", "20")
    seed(h.backend, other, "--space", "range:1000:1500:5", "--chunk-size", "7", "--work-ms", "20")
    h.workers.start(2)

    scenarios.wait_complete(h, run, timeout=60)
    scenarios.wait_complete(h, other, timeout=60)

    a = scenarios.assert_verified(h, run)
    b = scenarios.assert_verified(h, other)
    assert (a["total_chunks"], a["total_params"]) == (30, 3000)
    assert (b["total_chunks"], b["total_params"]) == (15, 100)
    assert a["closed_form"] == b["closed_form"] == "match"


@pytest.fixture
def harness(backend: BackendEnv, workers: LocalWorkers) -> LocalHarness:
    return LocalHarness(backend, workers)
