"""One backoff policy for every retry in the package: exponential, capped, jittered.

Jitter matters here: when a broker comes back, every worker that was waiting
for it retries; without jitter they all arrive in the same millisecond.
"""

from __future__ import annotations

import random
import threading
import time

#: First delay, seconds.
BASE_SECONDS = 0.1
#: Longest delay, seconds.
CAP_SECONDS = 5.0


class Backoff:
    """Delays ``base * 2**n`` capped at ``cap``, each drawn from its upper half.

    "Equal jitter": a delay is never shorter than half its step, so a retry
    loop cannot spin, and never the same for two processes.
    """

    def __init__(self, base: float = BASE_SECONDS, cap: float = CAP_SECONDS) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        """The next delay, seconds; each call doubles the step up to the cap."""
        step = min(self.cap, self.base * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return random.uniform(step / 2, step)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.attempt = 0

    def sleep(self, stop: threading.Event | None = None) -> None:
        """Sleep the next delay, or until ``stop`` is set."""
        delay = self.next()
        if stop is None:
            time.sleep(delay)
        else:
            stop.wait(delay)
