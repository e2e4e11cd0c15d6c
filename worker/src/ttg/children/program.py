"""Program computes (``ttg seed --exec 'PROGRAM ARG...'``): one run of the program per parameter.

The arguments come from ``ttg.command`` (one substitution pass, never a shell);
the parameter is also in the environment (``TTG_PARAM`` as JSON, ``TTG_INDEX``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from ttg.command import arguments


class ProgramFailed(Exception):
    """The program exited non-zero or died by a signal; the text names how."""


def describe_exit(code: int) -> str:
    """``exited with code 3`` or ``killed by signal 11 (SIGSEGV)``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exited with code {code}"


def run(argv: Sequence[str], value: Any, index: int, env: dict[str, str]) -> Any:
    """Run the program for one parameter: its stdout as JSON, else its stripped text.

    Raises:
        ProgramFailed: it exited non-zero (``exit N: <last stderr line>``) or died.
    """
    child_env = {**env, "TTG_PARAM": json.dumps(value), "TTG_INDEX": str(index)}
    try:
        done = subprocess.run(
            arguments(argv, value, index),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=child_env,
            close_fds=True,
            check=False,
        )
    except OSError as e:
        raise ProgramFailed(f"cannot run {argv[0]!r}: {e.strerror or e}") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        last = lines[-1].strip()[:300] if lines else ""
        if done.returncode < 0:
            raise ProgramFailed(describe_exit(done.returncode) + (f": {last}" if last else ""))
        raise ProgramFailed(f"exit {done.returncode}: {last}")
    text = done.stdout.decode(errors="replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text.strip()


#: Variables a compute process never sees: the broker's address, credentials and TLS
#: files (``ttg.endpoint``, ``ttg.config``), whatever backend names them.
HIDDEN_PREFIXES = ("TTG_BROKER_", "TTG_BACKEND", "TTG_REDIS", "TTG_RABBITMQ", "TTG_COMPUTE_ALLOW")


def scrubbed_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a compute process gets: the worker's without the broker's variables.

    A child needs none of them (everything it needs comes over the protocol);
    any compute could read them from its own process otherwise.
    """
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not k.startswith(HIDDEN_PREFIXES)}
