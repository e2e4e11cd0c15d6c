"""Settings: every ``TTG_*`` environment variable is also a flag of the same name.

The chart sets environment variables and nothing else; people at a terminal use
flags. A flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ttg.endpoint import BACKENDS, DEFAULT_BACKEND, DEFAULT_URL
from ttg.errors import UsageError
from ttg.limits import MAX_DELIVERIES


@dataclass(frozen=True)
class Setting:
    """One setting: flag ``--name``, variable ``TTG_NAME``."""

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def env(self) -> str:
        return "TTG_" + self.name.upper().replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name


def seconds(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    """A parser of a finite number of seconds in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    NaN and the infinities are refused: a NaN grace never expires, an infinite
    lease never lets a dead worker's chunks go.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
            raise ValueError(f"must be a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}")
        return value

    return parse


def integer(lo: int, hi: int) -> Callable[[str], int]:
    """A parser of an integer in ``[lo, hi]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("must be an integer") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be an integer from {lo} to {hi}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("must be a port number, 0-65535") from None
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number, 0-65535")
    return value


def _results_url(text: str) -> str:
    from ttg.store import parse_url  # noqa: PLC0415 - config stays below the store

    try:
        return parse_url(text)
    except UsageError as e:
        raise ValueError(str(e).removeprefix(f"results URL {text!r}: ")) from None


def _allow(text: str) -> tuple[str, ...]:
    from ttg.compute import parse_allow  # noqa: PLC0415 - config stays below compute

    return parse_allow(text)


#: Every setting, by flag name.
SETTINGS = {
    s.name: s
    for s in [
        Setting("backend", str, DEFAULT_BACKEND, "broker kind", tuple(BACKENDS)),
        Setting(
            "broker-url",
            str,
            DEFAULT_URL,
            "broker URL (RabbitMQ: several, comma-separated, for a cluster)",
        ),
        Setting("broker-username", str, None, "user, replacing the one in the URL"),
        Setting("broker-password", str, None, "password, replacing the one in the URL"),
        Setting("broker-ca-file", str, None, "CA bundle that signed the broker's TLS certificate"),
        Setting("broker-cert-file", str, None, "client TLS certificate (mutual TLS)"),
        Setting("broker-key-file", str, None, "client TLS private key (mutual TLS)"),
        Setting(
            "connect-timeout-seconds",
            seconds(0, 10**7),
            None,
            "wait this long for an unreachable broker (default: 0 for commands, "
            "forever for worker and exporter)",
        ),
        Setting(
            "rabbitmq-expect-nodes",
            integer(0, 99),
            0,
            "RabbitMQ: declare nothing until this many nodes of the broker URL run in one "
            "cluster (waiting as for an unreachable broker; 0: at once)",
        ),
        Setting("metrics-port", _port, 9100, "port of /metrics, /healthz, /readyz (0: off)"),
        Setting(
            "lease-seconds",
            seconds(0, 3600, lo_open=True),
            2.0,
            "a silent worker's chunks are redelivered after this",
        ),
        Setting(
            "max-deliveries",
            integer(1, MAX_DELIVERIES),
            5,
            "deliveries of a chunk before it is recorded dead (part of the run's spec)",
        ),
        Setting(
            "retry-delay-seconds",
            seconds(0, 3600),
            1.0,
            "first retry delay after a compute error",
        ),
        Setting(
            "grace-seconds",
            seconds(0, 86400),
            25.0,
            "on SIGTERM, time to finish the chunk in hand",
        ),
        Setting(
            "prefetch",
            integer(1, 100_000),
            256,
            "most chunks a worker holds at once (a cap: read-ahead adapts below it)",
        ),
        Setting(
            "concurrency",
            integer(1, 256),
            1,
            "chunks a worker computes at once, each in its own compute process",
        ),
        Setting("compute", str, "ttg.compute:square", "compute function module:function"),
        Setting(
            "results-url",
            _results_url,
            "broker",
            "where a new run's results go: broker, file:///PATH or s3://BUCKET/PREFIX "
            "(part of the run's spec)",
        ),
        Setting(
            "compute-allow",
            _allow,
            "ttg.compute:square",
            "computes a run may name, comma-separated: module prefixes, module:function, "
            "exec:PROGRAM",
        ),
        Setting("log-format", str, "text", "log line format", ("text", "json")),
        Setting("log-level", str, "INFO", "log level", ("DEBUG", "INFO", "WARNING", "ERROR")),
        Setting("worker-name", str, None, "consumer name (default <hostname>-<pid>-<random>)"),
    ]
}

#: Settings every command that talks to a broker takes.
CONNECTION = (
    "backend",
    "broker-url",
    "broker-username",
    "broker-password",
    "broker-ca-file",
    "broker-cert-file",
    "broker-key-file",
    "connect-timeout-seconds",
    "rabbitmq-expect-nodes",
    "log-format",
    "log-level",
)


def add(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the flags ``names`` to ``parser``, with defaults from the environment."""
    for name in names:
        s = SETTINGS[name]
        parser.add_argument(
            s.flag,
            dest=name.replace("-", "_"),
            default=None,
            metavar=s.env,
            help=f"{s.help} (env {s.env}, default {s.default})",
        )


def resolve(args: argparse.Namespace, *names: str) -> None:
    """Fill each setting on ``args``: flag, else environment, else default; check types.

    ``args.defaulted`` names the settings nobody set (a worker may then pick for itself).

    Raises:
        UsageError: a value does not parse or is not allowed.
    """
    defaults: set[str] = getattr(args, "defaulted", set())
    args.defaulted = defaults
    for name in names:
        s = SETTINGS[name]
        attr = name.replace("-", "_")
        raw = getattr(args, attr, None)
        source = s.flag
        if raw is None:
            raw, source = os.environ.get(s.env), s.env
        if raw is None or raw == "":
            raw, source = s.default, f"default of {s.flag}"
            defaults.add(name)
            if raw is None or not isinstance(raw, str) or s.type is str:
                setattr(args, attr, raw)
                continue
        if s.choices:
            canonical = {c.lower(): c for c in s.choices}.get(raw.lower())
            if canonical is None:
                raise UsageError(f"{source}={raw!r}: choose one of {', '.join(s.choices)}")
            raw = canonical
        try:
            setattr(args, attr, s.type(raw))
        except ValueError as e:
            raise UsageError(f"{source}={raw[:80]!r}: {e}") from None


def default_worker_name() -> str:
    """``<hostname>-<pid>-<random>``: unique even when a restarted container reuses a pid."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
