"""Compute functions for the fault tests (imported by real worker processes)."""

from __future__ import annotations

import json
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


#: Environment variable: parameters ``die_once_on_listed`` kills its worker on, comma-separated.
DIE_ON_ENV = "TTG_TEST_DIE_ON"
#: Environment variable: the directory where ``die_once_on_listed`` notes whom it killed for.
DIE_DIR_ENV = "TTG_TEST_DIE_DIR"
#: Environment variable: parameters ``die_once_on_listed`` kills its worker on every time.
DIE_ALWAYS_ENV = "TTG_TEST_DIE_ALWAYS"


def die_once_on_listed(x: int) -> int:
    """Kill the worker the first time each listed parameter is computed, then square.

    A worker SIGKILLed mid-chunk (its own OOM, a node loss), on a different chunk each
    time, whatever it holds read ahead; every chunk is healthy on its next delivery, but
    for those listed in ``TTG_TEST_DIE_ALWAYS`` (poison: they kill every worker that
    begins them). The compute runs in the worker's compute process: the worker is its
    parent (the compute process then dies with it).
    """
    worker = os.getppid()
    if str(x) in os.environ.get(DIE_ALWAYS_ENV, "").split(","):
        os.kill(worker, signal.SIGKILL)
        time.sleep(60)  # until this process dies with its worker
    if str(x) in os.environ.get(DIE_ON_ENV, "").split(","):
        note = os.path.join(os.environ[DIE_DIR_ENV], f"died-on-{x}")
        if not os.path.exists(note):
            with open(note, "w"):
                pass
            os.kill(worker, signal.SIGKILL)
            time.sleep(60)
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


#: Environment variable naming the file ``counted`` appends each parameter to.
CALLS_ENV = "TTG_TEST_CALLS"


def counted(p: dict[str, object]) -> str:
    """``label``, and one line per call appended to ``$TTG_TEST_CALLS``: what was computed."""
    with open(os.environ[CALLS_ENV], "a", encoding="utf-8") as f:
        f.write(json.dumps(p, sort_keys=True) + "\n")
    return label(p)


#: What ``misbehave`` does per parameter (the rest are squared): one failure class per chunk
#: of 10, at its fourth parameter, so every chunk has healthy parameters on both sides.
MISBEHAVIOUR = {3: "raise", 13: "hang", 23: "segfault", 33: "exit", 43: "memory"}


def misbehave(x: int) -> int:
    """Every way a parameter can fail its process, and a probe of what a compute can see.

    Parameter 44 returns how many broker variables its process can read (0 expected).
    """
    how = MISBEHAVIOUR.get(x)
    if how == "raise":
        raise ValueError(f"cannot compute parameter {x}")
    if how == "hang":
        while True:
            time.sleep(1)
    if how == "segfault":
        import ctypes  # noqa: PLC0415 - only this parameter needs it

        ctypes.string_at(0)
    if how == "exit":
        os._exit(3)
    if how == "memory":
        hog = bytearray(1024 * 2**20)
        return len(hog)
    if x == 44:
        return sum(k.startswith(("TTG_BROKER", "TTG_BACKEND")) for k in os.environ)
    return x * x


def hang_on_13(x: int) -> int:
    """Square, but parameter 13 never returns (a run seeded without ``--param-timeout``)."""
    while x == 13:
        time.sleep(1)
    return x * x


#: Environment variable naming the directory where ``misbehave_noted`` notes each start.
NOTES_ENV = "TTG_TEST_NOTES"


def misbehave_noted(x: int) -> int:
    """``misbehave``, leaving a file ``X-<n>`` in ``TTG_TEST_NOTES`` each time ``x`` starts."""
    where = os.environ[NOTES_ENV]
    n = sum(name.startswith(f"{x}-") for name in os.listdir(where))
    open(os.path.join(where, f"{x}-{n}"), "w").close()
    return misbehave(x)


#: Environment variable naming the directory of ``rendezvous``.
RENDEZVOUS_ENV = "TTG_TEST_RENDEZVOUS"


def rendezvous(x: int) -> int:
    """Wait (up to 30 s) until another parameter is computing at the same time: 1 if it was.

    Each parameter leaves a file named after itself and its process; two
    processes computing at once each see the other's.
    """
    where = os.environ[RENDEZVOUS_ENV]
    mine = f"{x}-{os.getpid()}"
    open(os.path.join(where, mine), "w").close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(not name.endswith(f"-{os.getpid()}") for name in os.listdir(where)):
            return 1
        time.sleep(0.02)
    return 0


def paced_gated(x: int) -> int:
    """``gated`` after 1 ms: a run that flows at a steady pace up to its gate, whatever
    the machine's load, and ends only once the test opens the gate."""
    time.sleep(0.001)
    return gated(x)


#: Environment variable: the milliseconds ``paced`` spends on each parameter before its gate opens.
PACE_ENV = "TTG_TEST_PACE_MS"


def paced(x: int) -> int:
    """Square ``x`` after ``TTG_TEST_PACE_MS`` ms while the gate file is absent, at once after.

    A run that flows at a known pace for as long as a test needs (its chunks' durations
    are the test's to know), then finishes as soon as the test opens the gate.
    """
    if not os.path.exists(os.environ[GATE_ENV]):
        time.sleep(int(os.environ[PACE_ENV]) / 1000)
    return x * x


def gated_zero(x: int) -> int:
    """``gated`` for parameter 0 alone: one chunk held as long as a test needs, the rest free."""
    return gated(x) if x == 0 else x * x
