"""Settings: every ``TTG_*`` environment variable is also a flag of the same name.

The chart sets environment variables and nothing else; people at a terminal use
flags. A flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ttg.broker import BACKENDS
from ttg.errors import UsageError


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


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _port(text: str) -> int:
    value = int(text)
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
        Setting("backend", str, "redis", "broker kind", tuple(BACKENDS)),
        Setting(
            "broker-url",
            str,
            "redis://localhost:6379/0",
            "broker URL (RabbitMQ: several, comma-separated, for a cluster)",
        ),
        Setting("broker-username", str, None, "user, replacing the one in the URL"),
        Setting("broker-password", str, None, "password, replacing the one in the URL"),
        Setting("broker-ca-file", str, None, "CA bundle that signed the broker's TLS certificate"),
        Setting("broker-cert-file", str, None, "client TLS certificate (mutual TLS)"),
        Setting("broker-key-file", str, None, "client TLS private key (mutual TLS)"),
        Setting(
            "connect-timeout-seconds",
            _non_negative_float,
            None,
            "wait this long for an unreachable broker (default: 0 for commands, "
            "forever for worker and exporter)",
        ),
        Setting("metrics-port", _port, 9100, "port of /metrics, /healthz, /readyz (0: off)"),
        Setting(
            "lease-seconds",
            _positive_float,
            2.0,
            "a silent worker's chunks are redelivered after this",
        ),
        Setting(
            "max-deliveries",
            _positive_int,
            5,
            "deliveries of a chunk before it is recorded dead (part of the run's spec)",
        ),
        Setting(
            "retry-delay-seconds",
            _non_negative_float,
            1.0,
            "first retry delay after a compute error",
        ),
        Setting(
            "grace-seconds",
            _non_negative_float,
            25.0,
            "on SIGTERM, time to finish the chunk in hand",
        ),
        Setting(
            "prefetch",
            _positive_int,
            64,
            "most chunks a worker holds at once (a cap: read-ahead adapts below it)",
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
            "ttg.compute",
            "module prefixes a run's compute may come from, comma-separated",
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

    Raises:
        UsageError: a value does not parse or is not allowed.
    """
    for name in names:
        s = SETTINGS[name]
        attr = name.replace("-", "_")
        raw = getattr(args, attr, None)
        source = s.flag
        if raw is None:
            raw, source = os.environ.get(s.env), s.env
        if raw is None or raw == "":
            raw, source = s.default, f"default of {s.flag}"
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
            raise UsageError(f"{source}={raw!r}: {e}") from None


def default_worker_name() -> str:
    """``<hostname>-<pid>-<random>``: unique even when a restarted container reuses a pid."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
