"""Compute functions for the fault tests (imported by real worker processes)."""

from __future__ import annotations

import os
import signal

#: The parameter that makes the faulty computes misbehave.
POISON = 13


def explode_on_13(x: int) -> int:
    """Raise for the poison parameter, square otherwise."""
    if x == POISON:
        raise ValueError(f"cannot compute parameter {x}")
    return x * x


def die_on_13(x: int) -> int:
    """Kill the worker process for the poison parameter: a chunk that kills its worker."""
    if x == POISON:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x
