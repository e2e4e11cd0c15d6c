"""A worker's death counts against the chunk it had begun, never against its read-ahead.

Issue 17 item 5. One-parameter chunks, a small ``max-deliveries``, one worker at a
time restarted whenever it dies (as Kubernetes restarts a pod), on each backend: a
worker killed again and again while it holds chunks fetched ahead must not walk
those healthy chunks to the dead letters, and a chunk that kills every worker that
begins it still ends there, alone.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests import scenarios
from tests.computes import DIE_ALWAYS_ENV, DIE_DIR_ENV, DIE_ON_ENV
from tests.conftest import BackendEnv
from tests.fault.conftest import LocalHarness, seed
from tests.helpers import eventually, ttg
from ttg.processes import LocalWorkers

pytestmark = [pytest.mark.fault, pytest.mark.integration]


#: One-parameter chunks, a couple of milliseconds each: a worker reads a dozen or more ahead.
RUN = ("--params", "40", "--chunk-size", "1", "--work-ms", "2", "--max-deliveries", "3")
#: Parameters whose first computation SIGKILLs its worker: four deaths, more than
#: max-deliveries, each with the rest of the run in the dying worker's read-ahead.
DIE_ON = "5,8,11,14"


#: Deliveries a chunk may count for its neighbours' sake: once. Short chunks are
#: queued with the compute process behind the one it is on, marked begun as they are
#: queued (and on RabbitMQ the 40 chunks travel as one message, marked whole), so a
#: death counts those once; from then on each is computed alone, marked as it starts.
NEIGHBOURS = 1


def serve_with_restarts(
    backend: BackendEnv, workers: LocalWorkers, run: str, count: int, **env: str
) -> list[str]:
    """``count`` workers, each replaced whenever it dies, until ``run`` is complete; the
    workers that died by SIGKILL."""
    admin = backend.broker()

    def complete() -> bool:
        for _ in range(count - len(workers.alive())):
            workers.start(1, TTG_LEASE_SECONDS="1", **env)
        return admin.progress(run).complete

    eventually(complete, timeout=180, interval=0.1, what="the run complete")
    return [n for n, p in workers.procs.items() if p.poll() == -signal.SIGKILL]


def chunk_rows(backend: BackendEnv, run: str) -> list[dict]:  # type: ignore[type-arg]
    out = ttg("results", "--run", run, "--chunks", env=backend.env, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_workers_killed_with_read_ahead_leave_no_healthy_chunk_dead(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    seed(backend, run_id, *RUN, "--compute", "tests.computes:die_once_on_listed")
    killed = serve_with_restarts(
        backend, workers, run_id, 1, **{DIE_ON_ENV: DIE_ON, DIE_DIR_ENV: str(tmp_path)}
    )

    report = scenarios.assert_verified(harness, run_id)  # ttg verify exits 0: every chunk ok
    assert report["dead"] == 0 and report["done"] == 40, report
    assert len(killed) == 4, killed
    attempts = {r["chunk"]: r["attempt"] for r in chunk_rows(backend, run_id)}
    # Each death counted once, against the chunk it killed; nothing it held ahead counted.
    killers = {int(c) for c in DIE_ON.split(",")}
    for chunk, attempt in attempts.items():
        assert attempt <= 1 + (chunk in killers) + NEIGHBOURS, attempts


def test_a_chunk_that_kills_every_worker_dies_alone(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    seed(backend, run_id, *RUN, "--compute", "tests.computes:die_once_on_listed")
    # Two deaths on the way (5, 8) bring the poison (13) to a worker that holds the rest
    # of the run read ahead; the poison then kills each worker that begins it.
    env = {DIE_ON_ENV: "5,8", DIE_ALWAYS_ENV: "13", DIE_DIR_ENV: str(tmp_path)}
    killed = serve_with_restarts(backend, workers, run_id, 1, **env)

    report = scenarios.assert_verified(harness, run_id, allow_failed=True)
    assert report["dead"] == 1 and report["done"] == 39, report
    assert ttg("verify", "--run", run_id, env=backend.env).returncode == 1
    (dead,) = [r for r in chunk_rows(backend, run_id) if r["status"] != "ok"]
    assert dead["chunk"] == 13, dead
    # The poison: once per delivery, max-deliveries times (less once if it was counted
    # for a neighbour's sake: queued behind 5 or 8 when they killed their worker).
    assert 2 + 3 - NEIGHBOURS <= len(killed) <= 2 + 3, killed
