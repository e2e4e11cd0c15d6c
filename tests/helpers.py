"""Helpers shared by the suites: polling, and running the real ``ttg`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ttg.brokers.rabbitmq.seeder import GROUP_PARAMS

T = TypeVar("T")

#: The repository root: on PYTHONPATH of every worker the tests start, so test
#: compute functions (tests.computes:...) import in worker processes.
ROOT = Path(__file__).resolve().parent.parent
#: Chunks of this many parameters travel one per task message on RabbitMQ too (smaller
#: ones are grouped, and a group is marked begun whole): tests that count messages or
#: judge single chunks use it.
ALONE = GROUP_PARAMS


def eventually(
    fn: Callable[[], T], *, timeout: float = 30, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``fn`` until it returns a truthy value or stops raising AssertionError.

    Returns that value; fails the test with the last error after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
            last: Any = f"last value {value!r}"
        except AssertionError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what or fn} ({last})")
        time.sleep(interval)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra or {})}
    return env


def ttg(
    *args: str, env: Mapping[str, str], timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ttg ARGS`` as a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "ttg", *args],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ttg {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def ttg_json(*args: str, env: Mapping[str, str], timeout: float = 120) -> dict[str, Any]:
    """Run ``ttg ARGS --json`` and parse its one JSON object, whatever the exit code."""
    proc = ttg(*args, "--json", env=env, timeout=timeout)
    try:
        out: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(
            f"ttg {' '.join(args)} printed no JSON (exit {proc.returncode}): "
            f"{proc.stdout!r} {proc.stderr!r}"
        ) from None
    out["_exit"] = proc.returncode
    return out
