"""The ``ttg`` command line: a thin door over the Python API (``ttg.sweep``).

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
import logging
import os
import sys
from collections.abc import Callable, Sequence

import ttg
from ttg import config, logs
from ttg.cli import demo, local, runs, serve
from ttg.cli.common import Parser
from ttg.decode import one_line
from ttg.errors import Interrupted, TTGError

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
