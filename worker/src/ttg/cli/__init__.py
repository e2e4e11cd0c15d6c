"""The ``ttg`` command line: a thin door over the Python API (``ttg.sweep``).

Exit codes (docs/contract.md): 0 yes/done; 1 the answer is no (verify found
failures or problems); 2 bad input, including a run the broker does not know
(one line on stderr, never a traceback); 3 broker unreachable; 4 the broker
refused our credentials or our TLS handshake; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

import ttg
from ttg import config, logs
from ttg.cli import demo, local, runs, serve
from ttg.cli.common import Parser
from ttg.errors import TTGError

log = logging.getLogger("ttg")


class _Version(argparse.Action):
    """``--version``: the package's version, looked up only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"ttg {ttg.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ttg", description="Parameter sweeps computed exactly once, provably.")
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
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
    local.add_parser(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        config.resolve(args, *args.settings)
        logs.setup(args.log_format, args.log_level)
        return int(args.func(args))
    except TTGError as e:
        print(f"ttg: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # `ttg results | head`: the reader left; not an error. Quiet the interpreter's
        # own flush of stdout at exit, which would fail the same way.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
