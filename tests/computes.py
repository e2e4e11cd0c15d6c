"""Compute functions for the fault tests (imported by real worker processes)."""

from __future__ import annotations

import os
import signal
import time

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


def flaky_on_13(x: int) -> int:
    """Fail in a way worth retrying (a flaky resource) for the poison parameter, every time."""
    if x == POISON:
        raise ConnectionError(f"resource for parameter {x} unavailable")
    return x * x


def set_on_13(x: int) -> object:
    """Return something JSON cannot hold for the poison parameter."""
    return {x} if x == POISON else x * x


#: Environment variable naming the gate file of ``gated``.
GATE_ENV = "TTG_TEST_GATE"
#: Environment variable: the first parameter ``gated`` holds at its gate (default 0, all).
GATE_FROM_ENV = "TTG_TEST_GATE_FROM"


def gated(x: int) -> int:
    """Square ``x`` once the gate file exists: a chunk that lasts exactly as long as a test needs.

    Fault tests open the gate (create the file) once the fault they inject has
    happened, so no chunk finishes before it however slow the machine is.
    Parameters below ``TTG_TEST_GATE_FROM`` pass at once: a run that flows
    freely up to a known point, then waits there.
    """
    if x < int(os.environ.get(GATE_FROM_ENV, "0")):
        return x * x
    path = os.environ[GATE_ENV]
    deadline = time.monotonic() + 300
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.02)
    return x * x


def dict_then_plain(x: int) -> object:
    """A result whose shape changes after the first 1,500 parameters (the export tests)."""
    if x < 1500:
        return {"x": x, "tag": "=HYPERLINK(1)"}
    return x if x % 2 else {"x": x, "late": -x}


def label(p: dict[str, object]) -> str:
    """A grid point as one string: ``{"a": 1, "b": "x"}`` -> ``"a=1,b=x"``."""
    return ",".join(f"{k}={v}" for k, v in p.items())


def damped(p: dict[str, float]) -> dict[str, float | None]:
    """A grid point -> a dict result; a real ZeroDivisionError at zeta 0 while the file
    ``TTG_TEST_BROKEN`` names exists (delete it: the bug is fixed, ``retry`` re-runs)."""
    if p["zeta"] == 0:
        broken = os.environ.get("TTG_TEST_BROKEN", "")
        if broken and os.path.exists(broken):
            return {"amplitude": p["omega"] / p["zeta"]}
        return {"amplitude": None, "omega2": p["omega"] ** 2}
    return {"amplitude": p["omega"] / p["zeta"], "omega2": p["omega"] ** 2}


def config_cost(row: dict[str, object]) -> float:
    """A table row -> a number, using every column (types as the table kept them)."""
    assert isinstance(row["name"], str) and isinstance(row["layers"], int), row
    return float(row["layers"]) * float(row["lr"])  # type: ignore[arg-type]


def several_errors(x: int) -> int:
    """Three distinct errors, each on a known set of parameters; the rest square."""
    if x % 10 == 3:
        return x // (x - x)  # ZeroDivisionError: integer division or modulo by zero
    if x % 10 == 7:
        return {"a": 1}["mass"]  # KeyError: 'mass'
    if x == 50:
        raise ValueError("negative mass at x=50")
    return x * x


#: Environment variable naming the file whose existence "fixes" ``explode_on_13_until_fixed``.
FIXED_ENV = "TTG_TEST_FIXED"
#: Bytes of the result ``huge_on_13`` returns for the poison parameter: over the broker's
#: cap for one result (1 MiB), well under a results store's (64 MiB).
HUGE_BYTES = 2 << 20


def explode_on_13_until_fixed(x: int) -> int:
    """``explode_on_13`` until the file named by ``TTG_TEST_FIXED`` exists (the bug fixed)."""
    if x == POISON and not os.path.exists(os.environ.get(FIXED_ENV, "/nonexistent")):
        raise ValueError(f"cannot compute parameter {x}")
    return x * x


def huge_on_13(x: int) -> object:
    """A 2 MiB string for the poison parameter, the square otherwise."""
    return "x" * HUGE_BYTES if x == POISON else x * x


def paced_gated(x: int) -> int:
    """``gated`` after 1 ms: a run that flows at a steady pace up to its gate, whatever
    the machine's load, and ends only once the test opens the gate."""
    time.sleep(0.001)
    return gated(x)
