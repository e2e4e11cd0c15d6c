"""How many chunks a worker holds ahead of computing them."""

from __future__ import annotations

#: Measured work a worker holds ahead, seconds: enough chunks to hide the broker's round
#: trips behind computing, few enough that a busy worker never sits on work an idle one
#: could do (a small run is shared, not swallowed by the first worker to fetch).
READ_AHEAD_SECONDS = 0.05


class ReadAhead:
    """How many chunks to hold: enough to hide broker round trips, little enough work to share.

    The worker keeps up to ``budget_s`` seconds of measured work in hand (an
    exponentially weighted mean of chunk durations), at least 1 chunk and at
    most ``cap``. Unknown durations start at one chunk; tiny chunks soon raise
    it to the cap, anything longer than the budget keeps it at 1, so an idle
    worker beside a busy one never waits while chunks sit in the busy one's
    read-ahead.
    """

    def __init__(self, cap: int, budget_s: float) -> None:
        self.cap = max(1, cap)
        self.budget_s = budget_s
        self.mean_s: float | None = None

    def observe(self, seconds: float) -> None:
        self.mean_s = seconds if self.mean_s is None else 0.8 * self.mean_s + 0.2 * seconds

    @property
    def limit(self) -> int:
        if self.mean_s is None:
            return 1
        return max(1, min(self.cap, int(self.budget_s / max(self.mean_s, 1e-6))))
