"""``ttg local``: an embedded broker (and local workers) on this machine, until Ctrl-C.

The first command of a session: it prints the two variables that point every
other ``ttg`` command, and ``ttg.Sweep``, at it — a broker on its own socket,
never the machine's own Redis on 6379.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from ttg.cli.common import Command, int_at_least
from ttg.endpoint import BACKENDS


def cmd_local(args: argparse.Namespace) -> int:
    # Imported here: every ``ttg`` process imports this module to build its parser.
    from ttg.embedded import Local  # noqa: PLC0415

    host = Local(
        max(args.workers, 1),
        backend=args.backend,
        compute_allow=tuple(args.compute_allow),
        lease_seconds=args.lease_seconds,
    )
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        host.start()
        if args.workers:
            host.start_workers()
        url = host.endpoint.url
        print(
            f"ttg local: a {args.backend} broker at {url}"
            + (f", {args.workers} workers (logs in {host.log_dir})" if args.workers else "")
            + "\nIn another terminal (or before `python`):\n"
            f"  export TTG_BACKEND={args.backend} TTG_BROKER_URL={url}\n"
            "Ctrl-C stops it (the broker's data goes with it).",
            flush=True,
        )
        while not stop:
            time.sleep(0.2)
            if args.workers:
                host.check()
        print("ttg local: stopping", file=sys.stderr)
        return 0
    finally:
        host.stop()


def add_parser(command: Command) -> None:
    p = command(
        "local",
        cmd_local,
        "start an embedded broker (and local workers) on this machine and print its URL",
        "log-format",
        "log-level",
        "lease-seconds",
        "compute-allow",
    )
    p.add_argument(
        "--workers", type=int_at_least(0), default=0, help="also run N local workers (0)"
    )
    p.add_argument("--backend", choices=tuple(BACKENDS), default="redis")
