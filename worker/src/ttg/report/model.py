"""What ``ttg report`` returns, and the events it reads (chunks are the ledger's ``Outcome``).

These types need nothing of the ``report`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ttg.run import RunEvent

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
