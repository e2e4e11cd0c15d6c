"""``ttg report``: one self-contained HTML file that shows how a run went.

It reads a run's ledger outcomes (:class:`ttg.run.Outcome`, as every backend
yields them) and events; it knows nothing of brokers. It reads the chunks once, in flat
memory (:mod:`ttg.report.aggregate`), draws with matplotlib
(:mod:`ttg.report.charts`, which says why matplotlib) and writes one HTML file
with everything inline (:mod:`ttg.report.page`).

Matplotlib comes with the optional ``report`` extra; the worker image does not
carry it, and only :func:`write_report` needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ttg.errors import UsageError, needs_extra
from ttg.outputs import replacing
from ttg.report.aggregate import Aggregate
from ttg.report.model import Event, ReportSummary
from ttg.run import Outcome, RunSpec
from ttg.verify import VerifyReport

__all__ = ["Event", "ReportSummary", "write_report"]

#: What to tell someone whose install lacks the extra.
MISSING_EXTRA = str(needs_extra("ttg report", "report"))


def write_report(
    path: Path,
    *,
    run: str,
    verify: VerifyReport,
    spec: RunSpec,
    chunks: Iterable[Outcome],
    events: Iterable[Event],
) -> ReportSummary:
    """Write the report of ``run`` to ``path`` as one self-contained HTML file.

    ``chunks`` is read once, before ``events`` (a lost worker is one that
    recorded no outcome after its chunks were redelivered, so every outcome
    must be known first); neither is held in memory.

    Args:
        path: Where the ``.html`` goes; a regular file replaced if it exists (written
            beside it and renamed over it); a FIFO, device or symbolic link is refused.
        run: The run id.
        verify: What ``ttg verify`` found.
        spec: The run's spec (names failing parameters by their values).
        chunks: The counted ledger outcomes, one per chunk; may be 10^7.
        events: Redeliveries, releases, failures and the like (~10^5 at most).

    Returns:
        What was written: path, size, rows read, workers and lost workers.

    Raises:
        UsageError: the ``report`` extra is not installed, or ``path`` cannot
            be written.
    """
    try:
        # Only the pictures need matplotlib; fail before reading a 10^7-row ledger.
        import matplotlib  # noqa: F401, PLC0415 - optional: the report extra
    except ImportError:
        raise UsageError(MISSING_EXTRA) from None
    from ttg.report import page  # noqa: PLC0415 - imports matplotlib

    agg = Aggregate()
    for row in chunks:
        if not row.src:  # reused results were recorded at seeding: no worker's time
            agg.add_chunk(row)
    for ev in events:
        agg.add_event(ev)
    agg.finish()
    html = page.render(run, verify, agg, spec)

    path = Path(path)
    # A reader never sees half a report, and nothing but a regular file is replaced.
    with replacing(path, "cannot write the report to") as tmp:
        try:
            tmp.write_text(html, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write the report to {path}: {e.strerror or e}") from None
    return ReportSummary(
        path=path,
        bytes=path.stat().st_size,
        chunks=agg.chunks,
        events=agg.events,
        workers=sorted(agg.lanes),
        lost_workers=agg.lost_workers(),
    )
