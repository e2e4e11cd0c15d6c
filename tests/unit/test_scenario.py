"""The shared fault scenario's measurements (``ttg.scenario``), on scripted status reads."""

from __future__ import annotations

import signal
import time
from typing import Any

from ttg import scenario
from ttg.run import RunEvent

#: How long each scripted status read takes: a loaded machine's ``ttg status``.
SLOW_READ_S = 0.3


class _Run:
    """A run whose worker ``w1`` holds chunk 7 until killed; ``w2`` takes it up 0.1 s later."""

    def __init__(self) -> None:
        self.killed_at: float | None = None
        self.events: list[RunEvent] = [RunEvent(time.time() - 60, "redelivered", 3, "w1")]

    def status(self) -> dict[str, Any]:
        time.sleep(SLOW_READ_S)
        taken = self.killed_at is not None and time.time() >= self.killed_at + 0.1
        holder = "w2" if taken else "w1"
        return {
            "progress": 0.5,
            "complete": False,
            "redelivered": 1 + taken,
            "in_flight": [{"chunk": 7, "worker": holder}],
        }

    def kill(self, worker: str, sig: int) -> None:
        assert (worker, sig) == ("w1", signal.SIGKILL)
        self.killed_at = time.time()
        self.events.append(RunEvent(self.killed_at + 0.1, "redelivered", 7, "w2", "w1"))


def test_the_redelivery_delay_is_the_brokers_record_not_a_slow_status_read() -> None:
    run = _Run()
    killed = scenario.kill_worker_holding_chunk_at(
        run.status, run.kill, 0.5, timeout=10, events=lambda: run.events
    )
    assert (killed.worker, killed.chunk, killed.measured_by) == ("w1", 7, "event")
    # The event before the kill is not the kill's redelivery; the one 0.1 s after it is.
    assert killed.redelivery_delay_s == 0.1, killed


def test_without_events_the_delay_is_until_a_status_showed_it() -> None:
    run = _Run()
    killed = scenario.kill_worker_holding_chunk_at(run.status, run.kill, 0.5, timeout=10)
    assert killed.measured_by == "status"
    assert killed.redelivery_delay_s is not None
    assert killed.redelivery_delay_s >= SLOW_READ_S, killed


def test_the_first_redelivery_after_a_time() -> None:
    events = [
        RunEvent(10.0, "redelivered", 1),
        RunEvent(12.5, "failed", 2),
        RunEvent(13.0, "redelivered", 2),
        RunEvent(12.0, "redelivered", 3),
    ]
    assert scenario.first_redelivery_after(events, 11.0) == 1.0
    assert scenario.first_redelivery_after(events, 13.5) is None
    assert scenario.first_redelivery_after([], 0.0) is None
