"""Parameters running far longer than their run's usual: what ``ttg status`` names as
likely hangs (a run seeded without ``--param-timeout`` has nothing else to stop one).

The worker knows which parameter each compute process is on and since when
(``Supervisor.busy``), and how long its run's parameters usually take: the
median of the per-parameter times of the chunks it finished in the run, and of
the parameters already done in the chunk in hand. It reports to the broker
(``Consumer.running_long``) every parameter that has run at least
``REPORT_MIN_SECONDS`` and ``HANG_FACTOR`` times that median, or just
``REPORT_MIN_SECONDS`` while it knows no median; ``ttg status`` calls one a
likely hang when it has a median to compare with.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence

from ttg.children.supervisor import Busy
from ttg.run import HANG_FACTOR, LongParam

#: Shortest run of a parameter worth reporting, whatever the median.
REPORT_MIN_SECONDS = 2.0
#: How often the worker looks.
CHECK_SECONDS = 1.0
#: Per-parameter times kept per run for its median.
KEPT = 101


class LongWatch:
    """Which parameters run long, said to the broker only when that changes."""

    def __init__(self, say: Callable[[Sequence[LongParam]], None]) -> None:
        self._say = say
        self._times: dict[str, deque[float]] = {}
        self._said: frozenset[tuple[str, int, int]] = frozenset()
        self._next = 0.0

    def finished(self, run: str, seconds: float, params: int) -> None:
        """A chunk of ``run`` took ``seconds`` for ``params`` parameters."""
        if params > 0:
            self._times.setdefault(run, deque(maxlen=KEPT)).append(seconds / params)

    def median(self, run: str, busy: Busy | None = None) -> float | None:
        times = list(self._times.get(run, ()))
        if busy is not None and busy.param > busy.lo:
            times.append((busy.since - busy.started) / (busy.param - busy.lo))
        return round(statistics.median(times), 6) if times else None

    def check(self, busy: Sequence[Busy], chunk_of: Callable[[str, int], int | None]) -> None:
        """Look (at most every ``CHECK_SECONDS``) and report what changed."""
        now = time.time()
        if now < self._next and busy:
            return
        self._next = now + CHECK_SECONDS
        long = []
        for b in busy:
            chunk = chunk_of(b.run, b.lo)
            median = self.median(b.run, b)
            limit = max(REPORT_MIN_SECONDS, HANG_FACTOR * (median or 0.0))
            if chunk is not None and now - b.since >= limit:
                long.append(LongParam(b.run, chunk, b.param, b.since, median))
        said = frozenset((p.run, p.chunk, p.param) for p in long)
        if said != self._said:
            self._said = said
            self._say(long)
