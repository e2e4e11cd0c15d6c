"""One pass over a run's ledger into everything the report draws, in flat memory.

A run may have 10^7 chunks, so no row is kept: every picture is made from time
bins, a duration histogram and a capped table of distinct errors. Time bins
live on one shared :class:`TimeGrid` whose bin width doubles whenever the
times seen so far would need more than ``MAX_TIME_BINS`` bins, so the bins
cover a run of any length without knowing its start or end in advance.

Memory is O(workers x MAX_TIME_BINS + distinct errors), independent of the
number of chunks. Individual chunk bars are kept only while the whole run has
few enough to draw (``LANE_BAR_LIMIT``, ``BAR_BUDGET``); past that every lane
is drawn from its bins.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterator

from ttg.failures import ErrorGroups
from ttg.report.model import Event
from ttg.run import Outcome

#: Most time bins a series keeps; ~ one per two pixels of a chart's width.
MAX_TIME_BINS = 600
#: Finest bin width is 2**_FINEST_EXP seconds (~1 ms); every width is a power of two.
_FINEST_EXP = -10
#: Chunk bars one worker lane may hold before every lane is drawn from bins.
LANE_BAR_LIMIT = 2000
#: Chunk bars the whole run may hold before every lane is drawn from bins.
BAR_BUDGET = 20_000
#: Redelivery markers kept per lane (their bins carry the rest).
LANE_MARKER_LIMIT = 2000
#: Failed attempts kept until the outcomes say which were replaced (events are a window too).
MAX_FAILED_EVENTS = 100_000
#: Duration histogram: bins per decade, and the decades covered (0.1 µs .. 10^6 s): a
#: compute of a few microseconds is a bin of its own, not lumped into the first one.
DURATION_BINS_PER_DECADE = 40
DURATION_DECADES = (-7, 6)

#: Outcome statuses in drawing order; anything else a ledger holds is drawn as dead.
STATUSES = ("ok", "errors", "dead")
# Bit set in a bar's kind byte when the chunk needed more than one delivery.
_REDELIVERED_BIT = 4


class TimeGrid:
    """Bin widths shared by every series, coarsened (doubled) as times arrive.

    Bins are aligned to the Unix epoch, so bin ``i`` at exponent ``e`` covers
    ``[i * 2**e, (i + 1) * 2**e)`` and halving an index moves it to the next
    coarser width exactly.
    """

    def __init__(self, max_bins: int = MAX_TIME_BINS) -> None:
        self.max_bins = max_bins
        self.exp = _FINEST_EXP
        self._lo: int | None = None
        self._hi = 0
        self.t_min = math.inf
        self.t_max = -math.inf

    @property
    def width(self) -> float:
        """Seconds per bin."""
        return 2.0**self.exp

    def index(self, t: float) -> int:
        """The bin holding ``t`` at the current width."""
        return math.floor(t / self.width)

    def include(self, t: float) -> None:
        """Make the grid cover ``t``, doubling the width as often as needed."""
        if self.t_min <= t <= self.t_max:
            return
        self.t_min = min(self.t_min, t)
        self.t_max = max(self.t_max, t)
        i = self.index(t)
        if self._lo is None:
            self._lo = self._hi = i
            return
        self._lo = min(self._lo, i)
        self._hi = max(self._hi, i)
        while self._hi - self._lo + 1 > self.max_bins:
            self.exp += 1
            self._lo >>= 1
            self._hi >>= 1

    def span(self) -> tuple[int, int] | None:
        """First and last bin index in use, or None before any time was seen."""
        return None if self._lo is None else (self._lo, self._hi)


class Series:
    """A sparse value per bin of a :class:`TimeGrid` (counts, or busy seconds)."""

    __slots__ = ("_exp", "bins", "grid")

    def __init__(self, grid: TimeGrid) -> None:
        self.grid = grid
        self._exp = grid.exp
        self.bins: dict[int, float] = {}

    def _sync(self) -> None:
        # The grid may have coarsened since this series last wrote: merge bins.
        shift = self.grid.exp - self._exp
        if shift:
            merged: dict[int, float] = {}
            for i, v in self.bins.items():
                j = i >> shift
                merged[j] = merged.get(j, 0.0) + v
            self.bins = merged
            self._exp = self.grid.exp

    def add(self, t: float, value: float = 1.0) -> None:
        """Add ``value`` to the bin holding ``t`` (the grid must cover ``t``)."""
        self._sync()
        i = self.grid.index(t)
        self.bins[i] = self.bins.get(i, 0.0) + value

    def add_span(self, start: float, end: float) -> None:
        """Add to each bin the seconds of ``[start, end)`` that fall in it."""
        self._sync()
        width = self.grid.width
        i, last = self.grid.index(start), self.grid.index(end)
        if i == last:
            self.bins[i] = self.bins.get(i, 0.0) + (end - start)
            return
        # At most MAX_TIME_BINS iterations: the grid covers both ends.
        t = start
        while i <= last:
            edge = min((i + 1) * width, end)
            self.bins[i] = self.bins.get(i, 0.0) + (edge - t)
            t = edge
            i += 1

    def dense(self) -> list[float]:
        """Values of every bin of the grid's span, zeros included."""
        self._sync()
        span = self.grid.span()
        if span is None:
            return []
        lo, hi = span
        return [self.bins.get(i, 0.0) for i in range(lo, hi + 1)]


class DurationHistogram:
    """Chunk durations on log-spaced bins, with exact count, min, max and mean."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, seconds: float) -> None:
        """Count one duration (clock skew can make it <= 0; it lands in the first bin)."""
        self.n += 1
        self.total += seconds
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)
        lo, hi = DURATION_DECADES
        if seconds > 0:
            i = math.floor(math.log10(seconds) * DURATION_BINS_PER_DECADE)
        else:
            i = lo * DURATION_BINS_PER_DECADE
        self.counts[min(max(i, lo * DURATION_BINS_PER_DECADE), hi * DURATION_BINS_PER_DECADE)] += 1

    @staticmethod
    def edges(i: int) -> tuple[float, float]:
        """Seconds covered by bin ``i``."""
        return 10 ** (i / DURATION_BINS_PER_DECADE), 10 ** ((i + 1) / DURATION_BINS_PER_DECADE)

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bin holding quantile ``q`` (within one bin, ~6%)."""
        if not self.n:
            return None
        rank = q * self.n
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(self.edges(i)[1], self.max)
        return self.max


class Lane:
    """One worker on the timeline: its bars (while few) and its bins (always)."""

    def __init__(self, name: str, grid: TimeGrid) -> None:
        self.name = name
        self.statuses: Counter[str] = Counter()
        self.params = 0
        self.first = math.inf
        #: Time of the last outcome this worker recorded (-inf: none).
        self.last_outcome = -math.inf
        #: Seconds spent computing, per bin.
        self.busy = Series(grid)
        #: Chunks finished, and those of them with errors or dead, per bin.
        self.done = Series(grid)
        self.problems = Series(grid)
        #: Redeliveries this worker received, per bin.
        self.redeliveries = Series(grid)
        self.bar_start = array("d")
        self.bar_end = array("d")
        #: Status index into STATUSES, plus _REDELIVERED_BIT when attempt > 1.
        self.bar_kind = bytearray()
        self.markers = array("d")
        #: Set when lost: the first redelivery of its chunks after its last outcome.
        self.lost_at: float | None = None

    @property
    def chunks(self) -> int:
        """Outcomes this worker recorded."""
        return sum(self.statuses.values())

    def bars(self) -> Iterator[tuple[float, float, int, bool]]:
        """Kept bars as (start, end, status index, redelivered)."""
        for s, e, k in zip(self.bar_start, self.bar_end, self.bar_kind, strict=True):
            yield s, e, k & 3, bool(k & _REDELIVERED_BIT)


class Aggregate:
    """Everything the report shows, built by one pass over chunks, then events."""

    def __init__(self) -> None:
        self.grid = TimeGrid()
        #: Chunks finished per bin, by status.
        self.finished = {s: Series(self.grid) for s in STATUSES}
        self.lanes: dict[str, Lane] = {}
        self.durations = DurationHistogram()
        #: Failed parameters and dead chunks, by exception type and message.
        self.failures = ErrorGroups()
        #: Failed attempts that a later attempt replaced, by message (see ``finish``).
        self.retried = ErrorGroups()
        #: "failed" events per chunk, oldest first, until ``finish`` sorts them.
        self._failed_events: dict[int, list[str | None]] = {}
        self._failed_held = 0
        #: One byte per chunk, set when its counted outcome is not ok.
        self._not_ok = bytearray()
        self.statuses: Counter[str] = Counter()
        self.event_kinds: Counter[str] = Counter()
        self.chunks = 0
        self.events = 0
        self.params = 0
        self.param_errors = 0
        #: Parameters with a result: chunks not dead, less their parameter errors.
        self.params_computed = 0
        #: Parameters of dead chunks.
        self.params_dead = 0
        #: Chunks whose counted outcome came from a second or later delivery.
        self.reattempted = 0
        self.max_attempt = 0
        self.never_ran = 0
        #: False once any lane or the run has too many bars: draw every lane from bins.
        self.bars_kept = True
        self._bars = 0

    def lane(self, name: str) -> Lane:
        """The lane of worker ``name``, created on first use."""
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = Lane(name, self.grid)
        return lane

    def add_chunk(self, row: Outcome) -> None:
        """Fold one counted ledger outcome into the aggregate."""
        self.chunks += 1
        status = str(row.status) if str(row.status) in STATUSES else "dead"
        self.statuses[status] += 1
        self.params += row.params
        n_errors = len(row.param_errors)
        self.param_errors += n_errors
        if status != "dead":
            self.params_computed += row.params - n_errors
        else:
            self.params_dead += row.params
        self.max_attempt = max(self.max_attempt, row.attempt)
        redelivered = row.attempt > 1
        self.reattempted += redelivered
        finished, started = row.finished_at, row.started_at
        grid = self.grid
        grid.include(finished)
        if started is not None:
            grid.include(started)
        self.finished[status].add(finished)

        lane = self.lane(row.worker)
        lane.statuses[status] += 1
        lane.params += row.params
        lane.first = min(lane.first, finished if started is None else started)
        lane.last_outcome = max(lane.last_outcome, finished)
        lane.done.add(finished)
        if status != "ok":
            lane.problems.add(finished)
            self.failures.add_chunk(status, row.error, row.param_errors, row.params, row.chunk)
            if row.chunk >= 0:
                if len(self._not_ok) <= row.chunk:
                    self._not_ok.extend(bytes(row.chunk + 1 - len(self._not_ok)))
                self._not_ok[row.chunk] = 1
        if started is None:
            self.never_ran += 1
            start = end = finished
        else:
            start, end = started, max(finished, started)
            lane.busy.add_span(start, end)
            self.durations.add(finished - started)
        if self.bars_kept:
            self._keep_bar(lane, start, end, STATUSES.index(status), redelivered)

    def _keep_bar(self, lane: Lane, start: float, end: float, status: int, again: bool) -> None:
        if len(lane.bar_kind) >= LANE_BAR_LIMIT or self._bars >= BAR_BUDGET:
            # Too many to draw one by one: free every bar, bins take over.
            self.bars_kept = False
            for other in self.lanes.values():
                other.bar_start, other.bar_end, other.bar_kind = array("d"), array("d"), bytearray()
            return
        lane.bar_start.append(start)
        lane.bar_end.append(end)
        lane.bar_kind.append(status | (_REDELIVERED_BIT if again else 0))
        self._bars += 1

    def add_event(self, ev: Event) -> None:
        """Fold one event in; call after every chunk (lost workers need their last outcome)."""
        self.events += 1
        self.event_kinds[ev.kind] += 1
        self.grid.include(ev.t)
        if ev.kind == "failed" and ev.chunk is not None and self._failed_held < MAX_FAILED_EVENTS:
            self._failed_events.setdefault(ev.chunk, []).append(ev.detail)
            self._failed_held += 1
        if ev.kind != "redelivered":
            return
        if ev.worker is not None:
            lane = self.lane(ev.worker)
            lane.first = min(lane.first, ev.t)
            lane.redeliveries.add(ev.t)
            if len(lane.markers) < LANE_MARKER_LIMIT:
                lane.markers.append(ev.t)
        if ev.previous_worker is not None:
            held = self.lane(ev.previous_worker)
            # Lost: its chunk went to someone else and it recorded nothing afterwards.
            if held.last_outcome <= ev.t and (held.lost_at is None or ev.t < held.lost_at):
                held.lost_at = ev.t
                held.first = min(held.first, ev.t)

    def finish(self) -> None:
        """Sort the failed attempts: only those a later attempt replaced count as retried.

        A chunk whose counted outcome holds failures recorded that outcome as its
        last "failed" event: it was not retried (or the retry is still to come),
        so it is left out. Every earlier failed attempt of the chunk was
        replaced — by a retry with backoff, or by a ``ttg retry`` round.
        """
        for chunk, details in self._failed_events.items():
            final = chunk < len(self._not_ok) and self._not_ok[chunk]
            replaced = details[:-1] if final else details
            for detail in replaced:
                self.retried.add("failed", detail, chunk=chunk)
        self._failed_events.clear()

    def lost_workers(self) -> list[str]:
        """Workers lost during the run, sorted by name."""
        return sorted(name for name, lane in self.lanes.items() if lane.lost_at is not None)
