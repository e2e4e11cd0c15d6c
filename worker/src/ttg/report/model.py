"""What ``ttg report`` reads and returns: the interface the brokers build against.

These types need nothing of the ``report`` extra, so rows can be built
without it installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ttg.run import RunEvent


@dataclass(frozen=True)
class ChunkRow:
    """One counted ledger outcome, so one per chunk.

    Attributes:
        chunk: The chunk number.
        status: ``"ok"``, ``"errors"`` (some parameters raised, the rest were
            kept) or ``"dead"``.
        params: Parameters in the chunk.
        param_errors: Parameters whose compute raised (0 unless ``errors``).
        worker: The worker that recorded the outcome.
        attempt: The delivery that produced it (1 is the first delivery).
        started_at: Unix seconds the worker started computing; None if the
            chunk never ran (dead-lettered without running).
        finished_at: Unix seconds the outcome was recorded.
        error: For ``dead`` the reason, for ``errors`` the first parameter error.
    """

    chunk: int
    status: str
    params: int
    param_errors: int
    worker: str
    attempt: int
    started_at: float | None
    finished_at: float
    error: str | None


#: Something that happened to a chunk besides its counted outcome: the brokers'
#: own ``RunEvent`` (kinds redelivered, released, failed, malformed, retry).
Event = RunEvent


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`ttg.report.write_report` wrote.

    Attributes:
        path: The HTML file.
        bytes: Its size.
        chunks: Chunk rows read from the ledger.
        events: Events read.
        workers: Every worker named by a row or an event, sorted.
        lost_workers: Workers lost (killed) during the run, sorted: named as the
            previous holder of a redelivered chunk at a time after which they
            recorded no outcome.
    """

    path: Path
    bytes: int
    chunks: int
    events: int
    workers: list[str] = field(default_factory=list)
    lost_workers: list[str] = field(default_factory=list)
