"""The ``ttg`` command line: worker, seed, status, verify, results, demo.

Exit codes: 0 yes/done, 1 the answer is no (verify failed, unknown run),
2 bad input (one line on stderr, never a traceback), 3 broker unreachable.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ttg import __version__, config, logs
from ttg import space as spaces
from ttg.broker import Broker, open_broker, with_credentials
from ttg.cli import demo
from ttg.cli import progress as bars
from ttg.errors import BrokerConnectionError, TTGError, UsageError
from ttg.metrics import Metrics, Probes, RateMeter, RunWatcher, serve
from ttg.run import RunSpec, check_run_id
from ttg.verify import status_report, verify
from ttg.worker import Worker

log = logging.getLogger("ttg")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


def _run_id(text: str) -> str:
    try:
        return check_run_id(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def connect(args: argparse.Namespace) -> Broker:
    """The broker the connection settings on ``args`` name."""
    url = with_credentials(args.broker_url, args.broker_username, args.broker_password)
    return open_broker(args.backend, url)


def emit(args: argparse.Namespace, report: dict[str, Any], text: str) -> None:
    print(json.dumps(report, sort_keys=True) if args.json else text, flush=True)


# -- seed -----------------------------------------------------------------------


def cmd_seed(args: argparse.Namespace) -> int:
    if args.space:
        space = spaces.parse(args.space)
        if args.params is not None and args.params != space.size:
            raise UsageError(f"--params {args.params} but --space has {space.size} parameters")
    elif args.params is None:
        raise UsageError("give --params N (a range 0..N-1) or --space")
    else:
        space = spaces.RangeSpace(0, args.params)
    spec = RunSpec(
        run=args.run,
        space=space.to_spec(),
        chunk_size=args.chunk_size,
        compute=args.compute,
        work_ms=args.work_ms,
        max_deliveries=args.max_deliveries,
    )
    broker = connect(args)
    bar = bars.Bar(f"seeding {spec.run}", enabled=not args.json and sys.stderr.isatty())
    report = broker.seed(spec, on_progress=bar.update)
    bar.close()
    out = {
        "run": report.run,
        "total_chunks": report.total_chunks,
        "total_params": report.total_params,
        "seeded_chunks": report.seeded_chunks,
        "added": report.added,
        "already_seeded": report.already_seeded,
    }
    text = (
        f"run {report.run}: {report.total_params} parameters in {report.total_chunks} chunks; "
        + (
            "already seeded, nothing added"
            if report.already_seeded
            else f"published {report.added} chunks"
        )
    )
    emit(args, out, text)
    return 0


# -- worker ---------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    # Until the worker's own handlers are in place, a signal just ends the wait.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    broker = _connect_patiently(args)
    name = args.worker_name or config.default_worker_name()
    metrics = Metrics()
    watcher = RunWatcher(lambda: connect(args), metrics, interval=max(args.lease_seconds, 2.0))
    probes = Probes(ready=lambda: watcher.ready)
    consumer = broker.consumer(name, lease_seconds=args.lease_seconds, prefetch=args.prefetch)
    worker = Worker(
        broker,
        consumer,
        metrics=metrics,
        probes=probes,
        grace_seconds=args.grace_seconds,
        retry_delay=args.retry_delay_seconds,
        max_deliveries=args.max_deliveries_override,
    )
    worker.install_signal_handlers()
    watcher.start()
    if args.metrics_port:
        serve(args.metrics_port, metrics, probes)
    log.info(
        "worker %s: backend %s, lease %.1fs, metrics :%s",
        name,
        args.backend,
        args.lease_seconds,
        args.metrics_port or "off",
    )
    return worker.run()


def _connect_patiently(args: argparse.Namespace) -> Broker:
    """Workers often start before their broker does: wait for it, with backoff."""
    delay = 0.2
    while True:
        try:
            return connect(args)
        except BrokerConnectionError as e:
            log.warning("waiting for the broker: %s", e)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


# -- status / verify / results -----------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    broker = connect(args)
    if not args.watch:
        report = status_report(broker.progress(args.run))
        emit(args, report, bars.describe(report))
        return 0
    meter = RateMeter(halflife=5.0)
    bar = bars.Bar(args.run, enabled=not args.json and sys.stdout.isatty(), stream=sys.stdout)
    while True:
        p = broker.progress(args.run)
        rate = meter.update(p.finished)
        report = status_report(p, rate)
        if args.json:
            print(json.dumps(report, sort_keys=True), flush=True)
        elif bar.enabled:
            bar.update(p.finished, p.total_chunks, suffix=bars.suffix(report))
        else:
            print(bars.describe(report), flush=True)
        if p.complete:
            bar.close()
            if bar.enabled:
                print(bars.describe(report))
            return 0
        time.sleep(args.interval)


def cmd_verify(args: argparse.Namespace) -> int:
    report = verify(connect(args), args.run)
    if args.strict and report["dead"]:
        report["ok"] = False
        report["problems"].append(f"{report['dead']} chunks are dead-lettered (--strict)")
    verdict = "VERIFIED" if report["ok"] else "NOT VERIFIED"
    lines = [f"{verdict}: {bars.describe(report)}", f"closed form: {report['closed_form']}"]
    if report["missing"]:
        lines.append(f"missing {report['missing']} chunks, e.g. {report['missing_sample']}")
    lines += [f"problem: {p}" for p in report["problems"]]
    emit(args, report, "\n".join(lines))
    return 0 if report["ok"] else 1


def cmd_delete(args: argparse.Namespace) -> int:
    broker = connect(args)
    if not broker.delete(args.run):
        raise UsageError(f"no run {args.run!r} to delete")
    emit(args, {"run": args.run, "deleted": True}, f"run {args.run} deleted")
    return 0


#: Columns of `ttg results`, in order.
RESULT_FIELDS = ("chunk", "params", "status", "result", "error", "worker", "attempt", "finished_at")


def cmd_results(args: argparse.Namespace) -> int:
    broker = connect(args)
    broker.spec(args.run)  # an unknown run is an error, not an empty file
    rows = sorted(broker.ledger(args.run), key=lambda o: o.chunk)
    out = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        if args.format == "csv":
            writer = csv.writer(out)
            writer.writerow(RESULT_FIELDS)
            for o in rows:
                writer.writerow(
                    [
                        o.chunk,
                        o.params,
                        o.status,
                        json.dumps(o.result),
                        o.error or "",
                        o.worker,
                        o.attempt,
                        o.finished_at,
                    ]
                )
        else:
            for o in rows:
                row = {
                    "chunk": o.chunk,
                    "params": o.params,
                    "status": o.status,
                    "result": o.result,
                    "error": o.error,
                    "worker": o.worker,
                    "attempt": o.attempt,
                    "finished_at": o.finished_at,
                }
                out.write(json.dumps(row) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


# -- parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ttg", description="Parameter sweeps computed exactly once, provably.")
    parser.add_argument("--version", action="version", version=f"ttg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str, *settings: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        config.add(p, *settings)
        p.set_defaults(func=fn, settings=settings)
        return p

    conn = config.CONNECTION
    p = command(
        "seed",
        cmd_seed,
        "publish a run's chunks (idempotent, resumable)",
        *conn,
        "compute",
        "max-deliveries",
    )
    p.add_argument("--run", required=True, type=_run_id)
    p.add_argument("--params", type=_int(1), help="parameters 0..N-1 (or give --space)")
    p.add_argument("--chunk-size", required=True, type=_int(1))
    p.add_argument("--work-ms", type=_int(0), default=0, help="simulated cost per chunk")
    p.add_argument("--space", help="range:START:STOP[:STEP] or grid:NAME=v1,v2;NAME=...")
    p.add_argument("--json", action="store_true")

    p = command(
        "worker",
        cmd_worker,
        "compute chunks of every live run until SIGTERM",
        *conn,
        "metrics-port",
        "lease-seconds",
        "retry-delay-seconds",
        "grace-seconds",
        "prefetch",
        "worker-name",
    )
    p.add_argument(
        "--max-deliveries",
        dest="max_deliveries_override",
        type=_int(1),
        default=None,
        help="override each run's max deliveries (env TTG_MAX_DELIVERIES)",
    )

    p = command("status", cmd_status, "progress of a run", *conn)
    p.add_argument("--run", required=True, type=_run_id)
    p.add_argument("--watch", action="store_true", help="live progress bar until the run completes")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between updates with --watch"
    )
    p.add_argument("--json", action="store_true")

    p = command(
        "verify", cmd_verify, "exit 0 only if every chunk has exactly one counted outcome", *conn
    )
    p.add_argument("--run", required=True, type=_run_id)
    p.add_argument(
        "--strict", action="store_true", help="dead-lettered chunks fail verification too"
    )
    p.add_argument("--json", action="store_true")

    p = command("results", cmd_results, "export a run's ledger, one row per chunk", *conn)
    p.add_argument("--run", required=True, type=_run_id)
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--output", help="file to write (default stdout)")

    p = command("delete", cmd_delete, "remove a run and everything the broker holds for it", *conn)
    p.add_argument("--run", required=True, type=_run_id)
    p.add_argument("--json", action="store_true")

    demo.add_parser(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        config.resolve(args, *args.settings)
        if args.command == "worker" and args.max_deliveries_override is None:
            # Unset means "each run's own limit", so the default of 5 does not apply here.
            args.max_deliveries_override = config.from_env_only("max-deliveries")
        logs.setup(args.log_format, args.log_level)
        return int(args.func(args))
    except TTGError as e:
        print(f"ttg: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
