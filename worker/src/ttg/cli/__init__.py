"""The ``ttg`` command line.

Exit codes (docs/contract.md): 0 yes/done; 1 the answer is no (verify found
failures or problems); 2 bad input, including a run the broker does not know
(one line on stderr, never a traceback); 3 broker unreachable; 4 the broker
refused our credentials or our TLS handshake; 5 the run's data in the broker
cannot be read (garbage, or a spec from a newer version); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
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
from ttg.errors import (
    AuthenticationError,
    BrokerConnectionError,
    Interrupted,
    TTGError,
    UsageError,
)
from ttg.run import check_run_id

log = logging.getLogger("ttg")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


#: Largest integer a flag takes unless it says less (a signed 64-bit integer).
MAX_FLAG_INT = 2**63 - 1


def int_at_least(minimum: int, maximum: int = MAX_FLAG_INT) -> Callable[[str], int]:
    """An argparse type: an integer in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{text[:40]} is above {maximum}")
        return value

    return parse


def float_at_least(minimum: float, maximum: float = 1e9) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[minimum, maximum]`` (never NaN or infinite)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
        if not minimum <= value <= maximum:  # also refuses nan and the infinities
            raise argparse.ArgumentTypeError(f"{text[:40]} is not between {minimum} and {maximum}")
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
        kind = "" if isinstance(e, Interrupted) else "error: "
        print(f"ttg: {kind}{one_line(str(e), 2000)}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # `ttg results | head`: the reader left; not an error. Quiet the interpreter's
        # own flush of stdout at exit, which would fail the same way.
        _quiet_stdout()
        return 0
    except OSError as e:
        # Writing the output failed (a full disk, /dev/full, a file system gone read-only):
        # the output's place is the user's input, so exit 2, in one line.
        _quiet_stdout()
        what = "cannot write the output" if e.errno in _WRITE_ERRORS else "error"
        print(f"ttg: error: {what}: {one_line(e.strerror or str(e), 300)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


#: errno values that say a write failed for want of room or of a writable device.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's own flush at exit would fail again."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
