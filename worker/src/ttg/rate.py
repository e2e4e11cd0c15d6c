"""The rate of a growing count, and how long until it reaches a target (``RateMeter``).

Apart from ``ttg.metrics``: ``ttg status`` and the API's progress use it, and must
not import the Prometheus client and the HTTP server to do so.
"""

from __future__ import annotations

import collections
import time

#: How far back a rate looks at least, seconds, and at least how many steps it spans:
#: long chunks finish in bursts, and a rate needs several bursts to mean anything.
RATE_WINDOW_SECONDS = 60.0
RATE_WINDOW_STEPS = 10
#: A count that has not grown for this long has no rate (nothing says it will grow again).
RATE_MAX_AGE_SECONDS = 3600.0


class RateMeter:
    """The rate of a growing count (chunks finished), and the time until it reaches a target.

    An exponentially smoothed rate halved every few seconds without a step, so
    chunks longer than that read as a collapsing rate (an ETA of 77,220 s with
    24 s left). This one is a plain average over a window of *steps*: the
    moments the count was seen to grow. The window starts at the latest step
    that leaves at least ``window`` seconds and ``steps`` counts behind it (or
    at the first reading), and ends at the last step, so chunks that finish in
    bursts every few minutes still give their true rate. While the next step
    is overdue (the silence since the last one is longer than the mean gap
    between steps) the silence counts too, so a stall lowers the rate. Steps
    older than ``max_age`` are forgotten: a count that stopped growing that
    long ago has no rate.
    """

    def __init__(
        self,
        window: float = RATE_WINDOW_SECONDS,
        steps: int = RATE_WINDOW_STEPS,
        max_age: float = RATE_MAX_AGE_SECONDS,
    ) -> None:
        self.window = window
        self.steps = steps
        self.max_age = max_age
        #: (time, count) of the first reading and of every reading that saw the count grow.
        self._steps: collections.deque[tuple[float, int]] = collections.deque()
        self._now = 0.0
        #: The first reading found the count already grown: its first step is no measure.
        self._mid_run = False

    def update(self, count: int, now: float | None = None) -> float:
        """Take a reading of the count; the rate now (per second, 0 while unknown)."""
        now = time.monotonic() if now is None else now
        self._now = now
        s = self._steps
        if s and count < s[-1][1]:
            s.clear()  # a count that went down is another count (a run deleted and seeded again)
        if not s:
            s.append((now, count))
            self._mid_run = count > 0
        elif count > s[-1][1]:
            if self._mid_run:
                # The first reading came mid-run: the chunks of this step started before
                # it, at times we do not know. Measure from this step on.
                self._mid_run = False
                s.clear()
            s.append((now, count))
        while len(s) >= 2 and (
            (now - s[1][0] >= self.window and count - s[1][1] >= self.steps)
            or now - s[0][0] > self.max_age
        ):
            s.popleft()
        return self.rate

    def _measure(self) -> tuple[float, float, float] | None:
        """(rate, mean gap between steps, silence since the last step), None while unknown."""
        s = self._steps
        if len(s) < 2:
            return None
        (t0, c0), (t1, c1) = s[0], s[-1]
        gap = (t1 - t0) / (len(s) - 1)
        silence = self._now - t1
        elapsed = max(t1 - t0, self._now - t0 - gap)
        return ((c1 - c0) / elapsed, gap, silence) if elapsed > 0 else None

    @property
    def rate(self) -> float:
        """Per second, as of the last reading; 0 while unknown."""
        m = self._measure()
        return m[0] if m else 0.0

    def eta(self, remaining: int) -> float | None:
        """Seconds until ``remaining`` more counts, as of the last reading; None while unknown.

        Between steps it counts down (the time since the last step is taken off,
        up to one mean gap), so it does not jump at every burst of long chunks.
        """
        if remaining <= 0:
            return 0.0
        m = self._measure()
        if m is None or m[0] <= 0:
            return None
        rate, gap, silence = m
        return max(0.0, remaining / rate - min(silence, gap))
