"""What every ``ttg`` subcommand shares: the parser's refusals, value checks, output.

The subcommand modules import this; ``ttg.cli`` (the package) imports them to
build the parser, so every import runs downward.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from ttg.endpoint import Endpoint
from ttg.errors import UsageError
from ttg.run import check_run_id


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


def endpoint(args: argparse.Namespace) -> Endpoint:
    """The broker the resolved connection settings on ``args`` name."""
    return Endpoint.from_settings(args)


def emit(args: argparse.Namespace, report: Mapping[str, Any], text: str) -> None:
    """``report`` as one JSON object with ``--json``, else ``text``."""
    print(json.dumps(report, sort_keys=True, default=str) if args.json else text, flush=True)


#: ``command(name, fn, help, *settings)``: adds one subcommand (see ``ttg.cli.build_parser``).
Command = Callable[..., argparse.ArgumentParser]
