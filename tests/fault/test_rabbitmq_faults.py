"""RabbitMQ-only faults: heartbeats during long chunks, cut connections, changed settings."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import scenarios
from tests.computes import GATE_ENV
from tests.conftest import BackendEnv, backend_env
from tests.fault.conftest import LocalHarness, seed, status
from tests.helpers import eventually, ttg, ttg_json
from ttg.brokers.rabbitmq import connection
from ttg.endpoint import TLS
from ttg.errors import BrokerConnectionError
from ttg.processes import LocalWorkers, RabbitMQNode

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
    tmp_path: Path,
) -> None:
    # Chunks that last until the test opens the gate: however slow rabbitmqctl is
    # on a loaded machine, the cut lands while each worker holds its chunk.
    gate = tmp_path / "gate"
    seed(
        backend, run_id, "--params", "20", "--chunk-size", "10",
        "--compute", "tests.computes:gated",
    )  # fmt: skip
    workers.start(2, TTG_LEASE_SECONDS="1", **{GATE_ENV: str(gate)})

    def each_holds_one() -> list[dict[str, Any]]:
        flights = status(backend, run_id)["in_flight"]
        return flights if len({f["worker"] for f in flights}) == 2 else []

    held = eventually(each_holds_one, timeout=60, what="each worker holding a chunk")
    # One broker call closes every connection, as a network cut would end them.
    rabbitmq_node.ctl_run("close_all_connections", "test: network cut")

    def redelivered() -> bool:
        flights = status(backend, run_id)["in_flight"]
        return {f["chunk"] for f in flights if f["deliveries"] == 2} == {f["chunk"] for f in held}

    eventually(redelivered, timeout=60, what="both held chunks delivered again")
    gate.touch()
    scenarios.wait_complete(harness, run_id, timeout=120)
    report = scenarios.assert_verified(harness, run_id)
    assert report["redelivered"] >= 2, report
    assert sorted(workers.alive()) == sorted(workers.procs), "a worker died instead of reconnecting"


def test_a_worker_holds_one_serviced_connection_and_serves_after_idling(
    backend: BackendEnv, rabbitmq_node: RabbitMQNode, workers: LocalWorkers, run_id: str
) -> None:
    # A connection nothing services is dropped by the broker after two missed
    # heartbeats; a worker idle between runs then lost the next run's first chunk.
    # A worker holds exactly one connection, its I/O thread serves its heartbeats
    # (1 s here: the lease) while idle, and the next run is served at once.
    seed(backend, run_id, "--params", "100", "--chunk-size", "10")
    (only,) = workers.start(1, TTG_LEASE_SECONDS="1")
    eventually(lambda: status(backend, run_id)["complete"], timeout=60, what="first run done")

    def worker_connections() -> list[str]:
        out = rabbitmq_node.ctl_run(
            "list_connections", "pid", "client_properties", "--quiet", "--no-table-headers"
        )
        return [line.split("\t")[0] for line in out.splitlines() if only in line]

    held = eventually(worker_connections, what="the worker's connection listed")
    assert len(held) == 1, f"a worker must hold one connection, it holds {held}"
    idle_since = time.monotonic()
    # Idle for several heartbeat windows, its one connection alive throughout.
    eventually(
        lambda: time.monotonic() - idle_since > 8 and worker_connections() == held,
        timeout=60,
        what="8 s idle on the same connection",
    )
    second = f"{run_id}-next"
    seed(backend, second, "--params", "100", "--chunk-size", "10")
    eventually(lambda: status(backend, second)["complete"], timeout=60, what="second run done")
    report = ttg_json("verify", "--run", second, env=backend.env)
    assert report["ok"] and report["redelivered"] == 0, report
    assert worker_connections() == held


def test_task_queue_delivery_limit_is_the_run_s_max_deliveries(
    backend: BackendEnv, rabbitmq_node: RabbitMQNode, run_id: str
) -> None:
    seed(backend, run_id, "--params", "10", "--chunk-size", "10", "--max-deliveries", "3")
    out = rabbitmq_node.ctl_run("list_queues", "name", "arguments", "--quiet", "--no-table-headers")
    (line,) = [line for line in out.splitlines() if line.startswith(f"ttg.{run_id}.tasks\t")]
    assert '{"x-delivery-limit",3}' in line, line


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
        "tests.computes:flaky_on_13",
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

    report = scenarios.assert_verified(harness, run_id, allow_failed=True)
    assert report["errors"] == 1 and report["failed"] == 4, report
    assert sorted(workers.alive()) == sorted([first, second])


def group_stopped(pgid: int) -> bool:
    """Every process of process group ``pgid`` is stopped (state T in /proc)."""
    states = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid:
            states.append(fields[0])
    return bool(states) and all(s == "T" for s in states)


def test_a_publisher_confirm_that_never_comes_cuts_the_connection(
    rabbitmq_node: RabbitMQNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stream whose leader node dies can lose a confirm (seen on a 3-node cluster);
    # here the node is frozen instead, so no confirm comes and, with 60 s heartbeats,
    # nothing else would end the wait for a minute or two.
    monkeypatch.setattr(connection, "CONFIRM_TIMEOUT_SECONDS", 1.0)
    conn = connection.open_connection(connection.parameters(rabbitmq_node.url, TLS(), 60))
    ch = conn.channel()
    ch.confirm_delivery()
    name = f"ttg.confirm-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(name, arguments={"x-queue-type": "quorum"}, durable=True)
    assert rabbitmq_node.proc is not None
    os.killpg(rabbitmq_node.proc.pid, signal.SIGSTOP)
    try:
        # Frozen once every process of its group is: on a loaded machine the stop can
        # lag the signal (a confirm came once, in a fresh-clone run beside busy loops).
        eventually(lambda: group_stopped(rabbitmq_node.proc.pid), what="the node frozen")
        started = time.monotonic()
        with pytest.raises(connection.ConfirmTimeout):
            connection.publish(ch, name, {"n": 1})
        waited = time.monotonic() - started
    finally:
        os.killpg(rabbitmq_node.proc.pid, signal.SIGCONT)
    assert waited < 10, waited
    assert not conn.is_open
    with pytest.raises(BrokerConnectionError):
        connection.translate(connection.ConfirmTimeout("x"))
    cleanup = connection.open_connection(connection.parameters(rabbitmq_node.url, TLS(), 60))
    cleanup.channel().queue_delete(name)
    cleanup.close()
