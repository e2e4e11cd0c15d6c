"""The ``ttg`` command line.

Exit codes (docs/contract.md): 0 yes/done; 1 the answer is no (verify found
failures or problems); 2 bad input, including a run the broker does not know
(one line on stderr, never a traceback); 3 broker unreachable; 4 the broker
refused our credentials or our TLS handshake; 5 the run's data in the broker
cannot be read (garbage, or a spec from a newer version); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ttg import __version__, config, logs
from ttg.backoff import Backoff
from ttg.broker import TLS, Broker, open_broker, with_credentials
from ttg.decode import one_line
from ttg.errors import AuthenticationError, BrokerConnectionError, TTGError, UsageError
from ttg.run import check_run_id

log = logging.getLogger("ttg")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def float_at_least(minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is below {minimum}")
        return value

    return parse


def run_id(text: str) -> str:
    try:
        return check_run_id(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def tls_of(args: argparse.Namespace) -> TLS:
    return TLS(args.broker_ca_file, args.broker_cert_file, args.broker_key_file)


def broker_url(args: argparse.Namespace) -> str:
    return with_credentials(args.broker_url, args.broker_username, args.broker_password)


def connect(args: argparse.Namespace, *, default_wait: float = 0.0) -> Broker:
    """The broker the connection settings on ``args`` name, waited for if it is not up yet.

    Waits up to ``TTG_CONNECT_TIMEOUT_SECONDS`` (``default_wait`` when unset),
    saying on stderr why, then gives up with exit code 3.
    """
    wait = args.connect_timeout_seconds
    wait = default_wait if wait is None else wait
    deadline = time.monotonic() + wait
    backoff = Backoff(cap=5.0)
    while True:
        try:
            return open_broker(args.backend, broker_url(args), tls=tls_of(args))
        except AuthenticationError:
            raise
        except BrokerConnectionError as e:
            delay = backoff.next()
            left = deadline - time.monotonic()
            if left < delay:
                raise
            log.warning("waiting for the broker (%.0f s left): %s", left, e)
            time.sleep(delay)


def emit(args: argparse.Namespace, report: dict[str, Any], text: str) -> None:
    print(json.dumps(report, sort_keys=True, default=str) if args.json else text, flush=True)


Command = Callable[..., argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    from ttg.cli import demo, runs, serve  # noqa: PLC0415 - they import this module's helpers

    parser = Parser(prog="ttg", description="Parameter sweeps computed exactly once, provably.")
    parser.add_argument("--version", action="version", version=f"ttg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str, *settings: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        config.add(p, *settings)
        p.set_defaults(func=fn, settings=settings)
        return p

    serve.add_parsers(command)
    runs.add_parsers(command)
    demo.add_parser(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        config.resolve(args, *args.settings)
        logs.setup(args.log_format, args.log_level)
        return int(args.func(args))
    except TTGError as e:
        # Messages may quote what the broker or user code holds: one line, no escapes.
        print(f"ttg: error: {one_line(str(e), 2000)}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # `ttg results | head`: the reader left; not an error. Quiet the interpreter's
        # own flush of stdout at exit, which would fail the same way.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
