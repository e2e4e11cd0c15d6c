"""``ttg demo``: the whole system on one machine, no cluster.

An embedded broker and W real ``ttg worker`` processes (``ttg.local``), one
SIGKILLed while it holds a chunk once a fraction of the run is done, a live
progress bar, and a verified summary at the end — through the same
``ttg.Sweep`` the Python API and the other commands use.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

from ttg import progress as bars
from ttg.cli.common import Command, int_at_least
from ttg.endpoint import BACKENDS
from ttg.errors import UsageError
from ttg.limits import MAX_PARAMS, MAX_WORK_MS
from ttg.sweep import Sweep, make_space
from ttg.verify import StatusReport, VerifyReport

if TYPE_CHECKING:
    # Imported by the command when it runs: every ``ttg`` process imports this module.
    from ttg import scenario
    from ttg.embedded import Local


def add_parser(command: Command) -> None:
    p = command(
        "demo",
        cmd_demo,
        "run a verified sweep on this machine: embedded broker, local workers",
        "log-format",
        "log-level",
        "lease-seconds",
        "compute",
        "compute-allow",
    )
    p.add_argument(
        "--params", type=int_at_least(1, MAX_PARAMS), default=None, help="range 0..N-1 (20000)"
    )
    p.add_argument("--space", help="as ttg seed --space")
    p.add_argument("--chunk-size", type=int_at_least(1, MAX_PARAMS), default=100)
    p.add_argument("--workers", type=int_at_least(1, 64), default=2)
    p.add_argument(
        "--work-ms", type=int_at_least(0, MAX_WORK_MS), default=40, help="simulated cost per chunk"
    )
    p.add_argument(
        "--kill-at",
        type=_fraction,
        default=None,
        help="SIGKILL a worker holding a chunk at this fraction",
    )
    p.add_argument("--backend", choices=tuple(BACKENDS), default="redis")
    p.add_argument("--json", action="store_true")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1")
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    if args.kill_at is not None and args.workers < 2:
        raise UsageError("--kill-at needs --workers 2 or more (someone must finish the run)")
    space = make_space(args.space or args.params or 20_000, args.params)
    demo = _Demo(args)
    from ttg.embedded import Local  # noqa: PLC0415 - see the imports above

    demo.say(f"starting a local {args.backend} broker ...")
    host = Local(
        args.workers,
        backend=args.backend,
        compute_allow=tuple(args.compute_allow),
        lease_seconds=args.lease_seconds,
    )
    try:
        host.start()
        # Your own compute: refused here if not allowed, and imported here first, so a
        # typo is one line now rather than every chunk dead later.
        sweep = Sweep(
            f"demo-{uuid.uuid4().hex[:6]}",
            compute=args.compute,
            space=space,
            chunk_size=args.chunk_size,
            work_ms=args.work_ms,
            broker=host,
            compute_allow=tuple(args.compute_allow),
        )
        with sweep:
            report, extra = demo.run(sweep, host)
        if args.json:
            print(json.dumps({**report.to_dict(), **extra}, sort_keys=True, default=str))
        else:
            _summary(report, extra)
        return 0 if report.ok else 1
    finally:
        host.stop()


class _Demo:
    """One demo run: seed, start the workers, kill one if asked, watch, verify."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bar = bars.Bar("", enabled=False)
        self._last_line = 0.0

    def say(self, *parts: object) -> None:
        if not self.args.json:
            print(*parts, file=sys.stderr, flush=True)

    def run(self, sweep: Sweep, host: Local) -> tuple[VerifyReport, dict[str, Any]]:
        args = self.args
        self.say(f"seeding run {sweep.run_id}, starting {bars.plural(args.workers, 'worker')} ...")
        started = time.monotonic()
        seeded = sweep.seed()
        self.say(
            f"run {sweep.run_id}: {bars.plural(seeded.total_params, 'parameter')} in "
            f"{bars.plural(seeded.total_chunks, 'chunk')}, {bars.plural(args.workers, 'worker')}"
        )
        self.bar = bars.Bar(sweep.run_id, enabled=not args.json and sys.stderr.isatty())

        def status() -> dict[str, Any]:
            host.check()  # every worker gone (a bad setting, a crash): waiting shows nothing
            s = sweep.status()
            self._show(s)
            return s.to_dict()

        killed = self._kill(status, sweep, host) if args.kill_at is not None else None
        sweep.wait(interval=0.1, on_status=self._show)
        elapsed = time.monotonic() - started
        self.bar.close()
        report = sweep.verify()
        extra = {
            "backend": args.backend,
            "workers": args.workers,
            "elapsed_s": round(elapsed, 2),
            "params_per_s": round(seeded.total_params / elapsed, 1),
            "killed_worker": killed.worker if killed else None,
            "killed_chunk": killed.chunk if killed else None,
            "redelivery_delay_s": killed.redelivery_delay_s if killed else None,
            "worker_logs": str(host.log_dir),
            "report_html": self._report(sweep, host),
        }
        return report, extra

    def _report(self, sweep: Sweep, host: Local) -> str | None:
        """Draw the run's report beside the worker logs (when the report extra is there)."""
        try:
            return str(sweep.report(host.log_dir / "report.html").path)
        except UsageError as e:
            self.say(f"no report: {e}")
            return None

    def _show(self, s: StatusReport) -> None:
        if self.bar.enabled:
            self.bar.update(s.finished, s.total_chunks, bars.suffix(s))
        elif not self.args.json and time.monotonic() - self._last_line > 1:
            self._last_line = time.monotonic()
            self.say(bars.describe(s))

    def _kill(self, status: scenario.StatusFn, sweep: Sweep, host: Local) -> scenario.KillRecord:
        from ttg import scenario  # noqa: PLC0415 - see the imports above

        bar, at = self.bar, self.args.kill_at

        def kill(worker: str, sig: int) -> None:
            assert host.pool is not None  # noqa: S101 - seeded, so the workers run
            host.pool.kill(worker, sig)
            bar.close()
            self.say(f"SIGKILL -> worker {worker} at {at:.0%} progress, while it holds a chunk")

        killed = scenario.kill_worker_holding_chunk_at(
            status, kill, at, timeout=300, events=lambda: sweep.broker.events(sweep.run_id)
        )
        bar.close()
        self.say(
            f"chunk {killed.chunk} taken up again by a live worker "
            f"after {killed.redelivery_delay_s:.2f}s"
        )
        return killed


def _summary(r: VerifyReport, x: dict[str, Any]) -> None:
    lines = ["", "  " + bars.verdict(r).splitlines()[0]]
    lines += [
        f"  chunks     {r.finished:,}/{r.total_chunks:,} finished: {r.done:,} ok, "
        f"{r.errors:,} with errors, {r.dead:,} dead",
        f"  params     {r.done_params:,}/{r.total_params:,} ok, closed-form check: {r.closed_form}",
        f"  events     {r.redelivered:,} redelivered, {bars.plural(r.duplicates, 'duplicate')} "
        "(never counted)",
        f"  time       {x['elapsed_s']}s with {bars.plural(x['workers'], 'worker')} "
        f"({bars.plural(round(x['params_per_s']), 'parameter')}/s)",
    ]
    if x["killed_worker"]:
        lines.append(
            f"  fault      worker {x['killed_worker']} SIGKILLed holding chunk "
            f"{x['killed_chunk']}; redelivered after {x['redelivery_delay_s']}s"
        )
    lines += [f"  problem    {p}" for p in r.problems]
    lines.append(f"  worker logs in {x['worker_logs']}")
    if x.get("report_html"):
        lines.append(f"  report     {x['report_html']} (open it in a browser)")
    print("\n".join(lines))
