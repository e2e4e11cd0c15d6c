"""What every part of the worker shares: its settings, its doors, where shutdown stands.

``loop.Worker`` sets these up; ``dispatch`` (the compute threads) and ``settle``
(the main thread) use them. Verdicts are what computing decided for a delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ttg.broker import Consumer
from ttg.children.supervisor import Supervisor
from ttg.metrics import Metrics, Probes
from ttg.run import Delivery, Outcome
from ttg.store.writer import ResultsWriter
from ttg.worker.long import LongWatch
from ttg.worker.readahead import ReadAhead

#: One logger for the worker, whichever part speaks (log search and tests use its name).
log = logging.getLogger("ttg.worker")


@dataclass(frozen=True)
class Complete:
    outcome: Outcome
    #: Compute time, for the histogram and the read-ahead (None: nothing was computed).
    seconds: float | None = None


@dataclass(frozen=True)
class Retry:
    error: str


@dataclass(frozen=True)
class Release:
    #: Why this worker cannot run it at all (``Consumer.decline``); None: given back.
    why: str | None = None


Verdict = Complete | Retry | Release

#: ``_with_retries`` result when the delivery's run was deleted: nothing to settle.
GONE = object()


class WorkerState:
    """The attributes ``loop.Worker`` sets, declared once for the parts that use them."""

    consumer: Consumer
    name: str
    results: ResultsWriter
    metrics: Metrics
    probes: Probes
    grace_seconds: float
    retry_delay: float
    compute_allow: tuple[str, ...]
    read_ahead: ReadAhead
    #: The compute processes, one per concurrency slot.
    children: Supervisor
    #: Which of their parameters run long (``ttg status`` names them).
    long: LongWatch
    concurrency: int
    #: Set by the first signal; the deadline for the chunk in hand.
    stop_deadline: float | None
    _stopped: threading.Event
    _fetching_stopped: bool
    #: Deliveries fetched and not yet settled or given back (the main thread's), by id.
    _in_hand: dict[int, Delivery]
    #: Notified by the main thread whenever deliveries leave ``_in_hand``.
    _settled: threading.Condition

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    def _past_deadline(self) -> bool:
        return self.stop_deadline is not None and time.monotonic() >= self.stop_deadline
