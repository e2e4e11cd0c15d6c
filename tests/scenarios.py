"""Fault scenarios and verification, shared by the local fault suite and the Kind e2e suite.

A ``Harness`` is where a scenario runs: local processes (tests/fault) or a Kind
cluster (tests/e2e). Both drive the same scenario code (``ttg.scenario``, also
behind ``ttg demo``) and check the outcome with the same ``assert_verified``,
through the real ``ttg status`` and ``ttg verify`` commands.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ttg import scenario
from ttg.errors import BrokerConnectionError
from ttg.run import RunEvent
from ttg.scenario import KillRecord, NodeLossRecord

__all__ = [
    "ClusterHarness",
    "EventHarness",
    "Harness",
    "KillRecord",
    "NodeLossRecord",
    "assert_verified",
    "kill_broker_node_at",
    "kill_worker_holding_chunk_at",
    "restart_broker_at",
    "wait_complete",
]


class Harness(Protocol):
    """The environment a scenario runs in."""

    def ttg_json(self, *args: str) -> dict[str, Any]:
        """Run ``ttg ARGS --json`` against the run's broker.

        Returns the parsed object, whatever the exit code, with the exit code
        added under ``_exit``.
        """
        ...

    def kill_worker(self, worker: str, sig: int) -> None:
        """Signal the worker process whose consumer name is ``worker``."""
        ...

    def restart_broker(self) -> None:
        """Restart the broker, keeping its data; return once it accepts connections again."""
        ...


@runtime_checkable
class EventHarness(Harness, Protocol):
    """Where the run's events can be read (a local broker)."""

    def events(self, run: str) -> list[RunEvent]:
        """The run's recorded events (``Broker.events``), oldest first."""
        ...


@runtime_checkable
class ClusterHarness(Harness, Protocol):
    """Where the broker is a cluster of nodes (a RabbitMQ cluster)."""

    def kill_broker_node(self) -> str:
        """SIGKILL one broker node, the one serving the most TTG connections; its name.

        Returns once the node is killed, without waiting for it to come back
        (on Kubernetes the kubelet restarts it; a local harness when told to).
        """
        ...


def _status(h: Harness, run: str) -> scenario.StatusFn:
    return lambda: h.ttg_json("status", "--run", run)


def kill_worker_holding_chunk_at(
    h: Harness, run: str, fraction: float, *, sig: int = signal.SIGKILL, timeout: float = 120
) -> KillRecord:
    """Signal a worker holding a chunk once ``fraction`` of ``run`` is done; time the redelivery.

    Where the harness reads the run's events (``EventHarness``), the delay is the
    broker's record, not how soon a status read saw it.
    """
    events = (lambda: h.events(run)) if isinstance(h, EventHarness) else None
    return scenario.kill_worker_holding_chunk_at(
        _status(h, run), h.kill_worker, fraction, sig=sig, timeout=timeout, events=events
    )


def kill_broker_node_at(
    h: Harness,
    run: str,
    fraction: float,
    kill_node: Callable[[dict[str, Any]], str] | None = None,
    *,
    timeout: float = 120,
) -> NodeLossRecord:
    """Kill a broker node at ``fraction`` of ``run``; time until progress resumes.

    ``kill_node`` picks and kills the node (given the status that triggered it);
    by default a ``ClusterHarness`` kills the one serving the most connections.
    The run must go on without it: its quorum queues and streams keep a
    majority, and the workers it served reconnect to the other nodes. A status
    read that fails while the cluster reorganises (exit 3, a one-line error and
    no JSON) is retried.
    """
    if kill_node is None:
        cluster = h
        assert isinstance(cluster, ClusterHarness), "give kill_node, or a ClusterHarness"
        kill_node = lambda _s: cluster.kill_broker_node()  # noqa: E731 - a one-line adapter

    def status() -> dict[str, Any]:
        try:
            s = h.ttg_json("status", "--run", run)
        except AssertionError as e:  # no JSON printed: the command failed
            raise BrokerConnectionError(str(e)) from None
        if s["_exit"] != 0:
            raise BrokerConnectionError(f"ttg status exited {s['_exit']}")
        return s

    return scenario.kill_broker_node_at(status, kill_node, fraction, timeout=timeout)


def restart_broker_at(
    h: Harness, run: str, fraction: float, *, timeout: float = 120
) -> dict[str, Any]:
    """Restart the broker once ``fraction`` of ``run`` is done; the status just before."""
    s = scenario.wait_for_progress(_status(h, run), fraction, timeout=timeout, poll=0.1)
    h.restart_broker()
    return s


def wait_complete(h: Harness, run: str, *, timeout: float = 600) -> dict[str, Any]:
    return scenario.wait_complete(_status(h, run), timeout=timeout)


def assert_verified(h: Harness, run: str, *, allow_failed: bool = False) -> dict[str, Any]:
    """``ttg verify`` passes: every chunk has exactly one counted outcome, totals match.

    Duplicates may have been recorded (at-least-once delivery), but none was
    counted: ``verify`` checks the counters against the ledger itself. With
    ``allow_failed``, dead chunks and parameter errors are accepted
    (``--allow-failed``); without, a single one fails verification.
    """
    report = h.ttg_json("verify", "--run", run, *(["--allow-failed"] if allow_failed else []))
    assert report["ok"], f"ttg verify failed: {report.get('problems')} {report}"
    assert report["_exit"] == 0, report
    assert report["complete"] and report["missing"] == 0, report
    assert report["problems"] == [], report
    # Acknowledged tasks are removed: a finished run leaves nothing queued.
    assert report["queue_depth"] == 0, report
    finished = report["done"] + report["errors"] + report["dead"]
    assert finished == report["total_chunks"], report
    if not allow_failed:
        assert report["dead"] == report["errors"] == 0, report
        assert report["done_params"] == report["total_params"], report
    return report
