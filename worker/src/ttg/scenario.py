"""Fault scenarios, written once for every place they run.

``ttg demo``, the local fault suite and the Kind end-to-end suite all inject
faults the same way: watch a run's status, act at a given fraction of
progress, then measure how the run recovers. They differ only in how they read
status and how they kill (a local ``os.kill``, or a kill on a Kind node), which
they pass in as two callables.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ttg.errors import BrokerError
from ttg.run import RunEvent

StatusFn = Callable[[], dict[str, Any]]
KillFn = Callable[[str, int], None]
EventsFn = Callable[[], Iterable[RunEvent]]

#: Clock granularity allowed between the killer's clock and the broker's event times
#: (Redis stamps events in whole milliseconds).
CLOCK_SLACK_S = 0.002
#: How long a redelivery the status showed may take to appear among the run's events.
EVENT_WAIT_S = 5.0


class ScenarioTimeout(AssertionError):
    """The run did not reach the awaited state in time."""


@dataclass(frozen=True)
class KillRecord:
    """A worker killed while holding ``chunk``, and how soon the chunk was taken up again."""

    worker: str
    chunk: int
    #: When the signal was sent (epoch seconds, comparable with event times).
    killed_at: float
    #: Seconds from the signal until the chunk was taken up again: the broker's own
    #: record of the redelivery when the caller can read the run's events, else until
    #: the first status that showed it (an upper bound: it includes a status read).
    redelivery_delay_s: float | None
    #: Where ``redelivery_delay_s`` comes from: "event" or "status".
    measured_by: str = "status"


def wait_for(
    status: StatusFn,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    poll: float = 0.05,
    what: str = "condition",
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll ``status`` until ``predicate`` holds; return that status.

    Raises:
        ScenarioTimeout: it did not hold within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = status()
        except BrokerError:
            # A broker restarting mid-scenario is part of some scenarios.
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll)
            continue
        if on_status:
            on_status(s)
        if predicate(s):
            return s
        if time.monotonic() >= deadline:
            raise ScenarioTimeout(
                f"timed out after {timeout:.0f}s waiting for {what}; last status: {s}"
            )
        time.sleep(poll)


def wait_for_progress(
    status: StatusFn,
    fraction: float,
    *,
    timeout: float,
    poll: float,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``wait_for`` until ``fraction`` of the run is done; that status."""
    return wait_for(
        status,
        lambda s: s["progress"] >= fraction,
        timeout=timeout,
        poll=poll,
        what=f"{fraction:.0%} progress",
        on_status=on_status,
    )


def kill_worker_holding_chunk_at(
    status: StatusFn,
    kill: KillFn,
    fraction: float,
    *,
    sig: int = signal.SIGKILL,
    timeout: float = 120,
    poll: float = 0.05,
    eligible: Callable[[str], bool] = lambda _w: True,
    on_status: Callable[[dict[str, Any]], None] | None = None,
    events: EventsFn | None = None,
) -> KillRecord:
    """Once ``fraction`` of the run is done, signal a worker while it holds a chunk.

    Then wait until that chunk is taken up again (claimed by another worker, or
    finished) and return the delay from the signal. With a signal other than
    SIGKILL the worker may finish the chunk itself; the delay is then until it
    is finished. Given the run's ``events``, the delay is the broker's: from the
    signal to the first redelivery recorded after it, which a slow status read
    cannot lengthen.
    """

    def holder(s: dict[str, Any]) -> dict[str, Any] | None:
        if s["progress"] < fraction:
            return None
        return next((f for f in s["in_flight"] if eligible(f["worker"])), None)

    s = wait_for(
        status,
        lambda s: holder(s) is not None,
        timeout=timeout,
        poll=poll,
        what=f"{fraction:.0%} progress with a chunk in flight",
        on_status=on_status,
    )
    victim = holder(s) or {}
    worker, chunk = victim["worker"], victim["chunk"]
    before = s["redelivered"]
    kill(worker, sig)
    killed_at, killed_mono = time.time(), time.monotonic()

    def taken_up(s: dict[str, Any]) -> bool:
        if s["redelivered"] > before or s["complete"]:
            return True
        return any(f["chunk"] == chunk and f["worker"] != worker for f in s["in_flight"])

    wait_for(
        status,
        taken_up,
        timeout=timeout,
        poll=poll,
        what=f"chunk {chunk} taken up again",
        on_status=on_status,
    )
    polled = round(time.monotonic() - killed_mono, 3)
    recorded = _recorded_redelivery(events, killed_at, poll) if events else None
    if recorded is None:
        return KillRecord(worker, chunk, killed_at, polled)
    return KillRecord(worker, chunk, killed_at, round(max(0.0, recorded), 3), "event")


def _recorded_redelivery(events: EventsFn, t: float, poll: float) -> float | None:
    """``first_redelivery_after`` in ``events``, waiting up to ``EVENT_WAIT_S`` for it.

    The status may show a chunk taken up a moment before its event can be read (a
    RabbitMQ worker's activity and its events travel apart); a chunk the killed
    worker had only read ahead is taken up without one (no delivery counted).
    """
    deadline = time.monotonic() + EVENT_WAIT_S
    while (found := first_redelivery_after(events(), t)) is None:
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)
    return found


def first_redelivery_after(events: Iterable[RunEvent], t: float) -> float | None:
    """Seconds from ``t`` to the first redelivery the broker recorded after it (None: none).

    Only the killed worker's chunks are redelivered after its kill (nothing else
    fails), so the first one is the kill's.
    """
    after = [e.t - t for e in events if e.kind == "redelivered" and e.t >= t - CLOCK_SLACK_S]
    return min(after, default=None)


@dataclass(frozen=True)
class NodeLossRecord:
    """A broker node killed mid-run, and how soon the run made progress again."""

    node: str
    killed_at: float
    #: Chunks with an outcome in the last status read before the kill.
    finished_before: int
    #: Seconds from the kill until a status showed more chunks finished than the
    #: first status read after it (or the run complete). An upper bound: it
    #: includes up to one status read, whose mean duration is ``status_read_s``.
    progress_again_s: float
    #: Mean duration of a status read after the kill: the figure's resolution.
    status_read_s: float


def _finished(s: dict[str, Any]) -> int:
    return int(s["done"]) + int(s["errors"]) + int(s["dead"])


def kill_broker_node_at(
    status: StatusFn,
    kill_node: Callable[[dict[str, Any]], str],
    fraction: float,
    *,
    timeout: float = 120,
    poll: float = 0.05,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> NodeLossRecord:
    """Once ``fraction`` of the run is done, kill one broker node; time until progress resumes.

    ``kill_node`` gets the status that triggered it, kills a node of its
    choice, and returns the node's name. Status reads that fail while the
    cluster reorganises (``BrokerError``) are retried. Progress is measured
    against the first status read after the kill, never one from before it
    (chunks finished just before the kill are not progress after it).
    """
    s = wait_for_progress(status, fraction, timeout=timeout, poll=poll, on_status=on_status)
    node = kill_node(s)
    killed_at = time.monotonic()
    reads: list[float] = []

    def timed() -> dict[str, Any]:
        t0 = time.monotonic()
        out = status()
        reads.append(time.monotonic() - t0)
        return out

    first = wait_for(
        timed, lambda _s: True, timeout=timeout, poll=poll, what="a status after the kill"
    )
    base = _finished(first)
    wait_for(
        timed,
        lambda s: _finished(s) > base or bool(s["complete"]),
        timeout=timeout,
        poll=poll,
        what=f"progress after node {node} died",
        on_status=on_status,
    )
    return NodeLossRecord(
        node=node,
        killed_at=killed_at,
        finished_before=_finished(s),
        progress_again_s=round(time.monotonic() - killed_at, 3),
        status_read_s=round(sum(reads) / len(reads), 3),
    )


def wait_complete(
    status: StatusFn,
    *,
    timeout: float = 600,
    poll: float = 0.2,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Wait until every chunk has an outcome; return the last status."""
    return wait_for(
        status,
        lambda s: s["complete"],
        timeout=timeout,
        poll=poll,
        what="run complete",
        on_status=on_status,
    )
