"""RabbitMQ-only faults: heartbeats during long chunks, cut connections, changed settings."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests import scenarios
from tests.conftest import BackendEnv, backend_env
from tests.fault.conftest import LocalHarness, seed, status
from tests.helpers import eventually, ttg, ttg_json
from ttg.local import LocalWorkers, RabbitMQNode

pytestmark = [pytest.mark.fault, pytest.mark.integration]


@pytest.fixture
def backend(rabbitmq_node: RabbitMQNode) -> Iterator[BackendEnv]:
    """These tests run on RabbitMQ only (the shared suites cover both backends)."""
    yield from backend_env("rabbitmq", rabbitmq_node)


def connections(node: RabbitMQNode) -> list[tuple[str, str]]:
    """(pid, client port) of every AMQP connection the node has."""
    out = node.ctl_run("list_connections", "pid", "peer_port", "--quiet", "--no-table-headers")
    return [tuple(line.split("\t")) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def test_heartbeats_are_served_while_a_chunk_computes_for_three_intervals(
    backend: BackendEnv, rabbitmq_node: RabbitMQNode, workers: LocalWorkers, run_id: str
) -> None:
    # Lease 1 s -> heartbeat 1 s; the chunk computes 4 s. A worker whose I/O
    # stalled with the computation would be disconnected by the broker after
    # two missed heartbeats, and its chunk redelivered.
    seed(backend, run_id, "--params", "10", "--chunk-size", "10", "--work-ms", "4000")
    (only,) = workers.start(1, TTG_LEASE_SECONDS="1")
    before = eventually(lambda: connections(rabbitmq_node), what="worker connected")

    eventually(
        lambda: status(backend, run_id)["complete"],
        timeout=30,
        what="done",
    )

    report = ttg_json("verify", "--run", run_id, env=backend.env)
    assert report["ok"] and report["redelivered"] == 0, report
    assert set(before) <= set(connections(rabbitmq_node)), "the worker's connection was dropped"
    rows = ttg("results", "--run", run_id, env=backend.env, check=True).stdout
    assert f'"worker": "{only}"' in rows and '"attempt": 1' in rows


def test_connection_cut_while_holding_a_chunk_is_redelivered(
    backend: BackendEnv,
    rabbitmq_node: RabbitMQNode,
    harness: LocalHarness,
    workers: LocalWorkers,
    run_id: str,
) -> None:
    seed(backend, run_id, "--params", "2000", "--chunk-size", "100", "--work-ms", "400")
    workers.start(2, TTG_LEASE_SECONDS="1")
    eventually(lambda: status(backend, run_id)["in_flight"], what="in flight")

    # The broker closes every worker connection, as a network cut would end them.
    for pid, _port in connections(rabbitmq_node):
        rabbitmq_node.ctl_run("close_connection", pid, "test: network cut")

    scenarios.wait_complete(harness, run_id, timeout=120)
    report = scenarios.assert_verified(harness, run_id)
    assert report["redelivered"] >= 1, report
    assert sorted(workers.alive()) == sorted(workers.procs), "a worker died instead of reconnecting"


def test_a_changed_retry_delay_does_not_upset_the_broker(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str
) -> None:
    # Two deployments with different retry delays serve the same run: nothing
    # about the delay is a queue argument, so neither gets PRECONDITION_FAILED.
    seed(
        backend,
        run_id,
        "--params",
        "100",
        "--chunk-size",
        "10",
        "--compute",
        "tests.computes:explode_on_13",
        "--max-deliveries",
        "4",
    )
    (first,) = workers.start(1, TTG_RETRY_DELAY_SECONDS="0.1")
    eventually(
        lambda: status(backend, run_id)["failed"] >= 1,
        what="a failure",
    )
    (second,) = workers.start(1, TTG_RETRY_DELAY_SECONDS="0.3")

    scenarios.wait_complete(harness, run_id, timeout=60)

    report = scenarios.assert_verified(harness, run_id, allow_dead=True)
    assert report["dead"] == 1 and report["failed"] == 4, report
    time.sleep(0.5)
    assert sorted(workers.alive()) == sorted([first, second])
