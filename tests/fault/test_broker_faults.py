"""Faults of the broker and of what is in it, on both backends: no fault strands a chunk.

Invariant 9: every delivery ends in exactly one of complete, retry or
release. A broker refusing writes for a while, a malformed task message, a
worker frozen past its lease: each run still finishes, verified, and every
worker still serves.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import scenarios
from tests.computes import GATE_ENV, GATE_FROM_ENV
from tests.conftest import BackendEnv
from tests.fault.conftest import LocalHarness, seed, status
from tests.helpers import child_env, eventually, ttg
from tests.injections import inject_task, refusal_noticed, writes_refused
from ttg.processes import LocalWorkers

pytestmark = pytest.mark.fault


def counted_chunks(backend: BackendEnv, run: str) -> list[dict]:  # type: ignore[type-arg]
    out = ttg("results", "--run", run, "--chunks", env=backend.env, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_broker_refusing_writes_for_longer_than_the_lease_loses_and_kills_nothing(
    request: pytest.FixtureRequest,
    backend: BackendEnv,
    harness: LocalHarness,
    workers: LocalWorkers,
    run_id: str,
    tmp_path: Path,
) -> None:
    # Redis at maxmemory answers OOM to every write, heartbeats included, for
    # longer than a lease: a worker must neither drop the outcome it holds nor
    # take the others' chunks once writes come back (nor count that as a delivery).
    node = request.getfixturevalue("rabbitmq_node") if backend.name == "rabbitmq" else None
    # The first 30% flows; then each worker waits at the gate with a chunk in hand, so the
    # run is still going however long the broker takes to start refusing (rabbitmqctl
    # can take 20 s on a loaded machine). A few chunks below the gate may wait with them,
    # in a worker's read-ahead behind its gated chunk.
    gate = tmp_path / "gate"
    seed(
        backend, run_id, "--params", "6000", "--chunk-size", "100", "--work-ms", "20",
        "--compute", "tests.computes:gated",
    )  # fmt: skip
    workers.start(2, TTG_LEASE_SECONDS="1", **{GATE_ENV: str(gate), GATE_FROM_ENV: "1800"})

    def each_held_at_the_gate() -> bool:
        s = status(backend, run_id)
        gated = {f["worker"] for f in s["in_flight"] if f["chunk"] >= 18}
        assert len(gated) == 2 and s["done"] >= 1, {k: s[k] for k in ("done", "in_flight")}
        return True

    eventually(each_held_at_the_gate, timeout=120, what="each worker held at the gate")
    with writes_refused(backend, node):
        # The workers finish their chunks into a broker that refuses them; held until
        # the fault bites: every worker's lease lapsed (Redis), or a worker blocked in
        # a publish (RabbitMQ).
        gate.touch()
        eventually(
            lambda: refusal_noticed(backend, node, run_id), timeout=60, what="workers stalled"
        )

    scenarios.wait_complete(harness, run_id, timeout=120)
    report = scenarios.assert_verified(harness, run_id)
    assert report["dead"] == 0 and report["duplicates"] == 0, report
    # Nobody stole from a live worker: every chunk was computed once, on its first delivery.
    assert report["redelivered"] == 0, report
    assert all(c["attempt"] == 1 for c in counted_chunks(backend, run_id))
    assert sorted(workers.alive()) == sorted(workers.procs), "a worker died of a full broker"


def test_malformed_task_messages_in_a_live_run_are_reported_and_kill_no_worker(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str
) -> None:
    seed(backend, run_id, "--params", "3000", "--chunk-size", "100", "--work-ms", "30")
    workers.start(2)
    eventually(lambda: status(backend, run_id)["done"] >= 3, timeout=60, what="under way")

    inject_task(backend, run_id, {})
    inject_task(backend, run_id, {"c": "seven", "a": "0"})
    inject_task(backend, run_id, {"c": "123456", "a": "0"})
    inject_task(backend, run_id, {"c": "4", "a": "-1"})

    scenarios.wait_complete(harness, run_id, timeout=120)
    s = eventually(
        lambda: (s := status(backend, run_id))["malformed"] == 4 and s, what="4 reported"
    )
    assert any("malformed" in e for e in s["recent_errors"]), s
    assert any("could not be read" in w for w in s["warnings"]), s
    scenarios.assert_verified(harness, run_id)
    assert sorted(workers.alive()) == sorted(workers.procs), "a malformed message killed a worker"


def test_frozen_worker_s_chunk_is_redone_and_its_late_result_is_a_visible_duplicate(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    seed(
        backend, run_id, "--params", "10", "--chunk-size", "10",
        "--compute", "tests.computes:gated",
    )  # fmt: skip
    (frozen,) = workers.start(1, TTG_LEASE_SECONDS="1", **{GATE_ENV: str(gate)})
    eventually(lambda: status(backend, run_id)["in_flight"], timeout=60, what="chunk held")
    workers.kill(frozen, signal.SIGSTOP)
    try:
        (live,) = workers.start(1, TTG_LEASE_SECONDS="1", **{GATE_ENV: str(gate)})

        def taken_over() -> bool:
            flights = status(backend, run_id)["in_flight"]
            return any(f["worker"] == live and f["deliveries"] == 2 for f in flights)

        eventually(taken_over, timeout=60, what="the frozen worker's chunk redelivered")
        gate.touch()
        scenarios.wait_complete(harness, run_id, timeout=60)
    finally:
        workers.kill(frozen, signal.SIGCONT)
    # The frozen worker wakes up, finishes its stale delivery, and records it.
    eventually(lambda: status(backend, run_id)["duplicates"] == 1, timeout=60, what="duplicate")

    report = scenarios.assert_verified(harness, run_id)
    assert report["duplicates"] == 1 and report["redelivered"] >= 1, report
    (chunk,) = counted_chunks(backend, run_id)
    assert (chunk["worker"], chunk["attempt"]) == (live, 2), chunk
    assert sorted(workers.alive()) == sorted(workers.procs)


def test_two_seeders_at_once_publish_each_chunk_once(backend: BackendEnv, run_id: str) -> None:
    args = ["seed", "--run", run_id, "--params", "20000", "--chunk-size", "1"]
    seeders = [
        subprocess.Popen(
            [sys.executable, "-m", "ttg", *args],
            env=child_env(backend.env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in seeders:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    depth = status(backend, run_id)["queue_depth"]
    if backend.name == "redis":
        # The cursor moves in the same step as its batch, compared and set: exactly once.
        assert depth == 20000
    else:
        # Two seeders may both publish what neither had confirmed: duplicates the ledger
        # absorbs, never a chunk missing.
        assert depth >= 20000
