"""TTG benchmarks: print throughput, recovery and seeding figures, per backend, side by side.

    make bench                      # everything (a few minutes on 2 cores)
    .venv/bin/python bench/run.py --quick   # small sizes, a smoke run

Each backend runs against its own broker process started here on a free port
(redis-server with AOF on, as the chart deploys it; a RabbitMQ node when
``rabbitmq-server`` is installed). Figures are measured, never asserted; the
raw-client ceiling is measured in the same run so the ratio is meaningful on
whatever machine this runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis_raw

from ttg import scenario
from ttg.broker import open_broker
from ttg.local import LocalWorkers, RedisServer
from ttg.run import RunSpec
from ttg.space import RangeSpace
from ttg.verify import status_report, verify


@dataclass
class Target:
    """A running broker to measure."""

    name: str
    url: str
    stop: Callable[[], None]
    raw_ceiling: Callable[[str], dict[str, float]]
    memory: Callable[[], int | None]
    #: TTG_PREFETCH of the throughput runs: a push-based broker needs a window
    #: of deliveries in flight to keep a worker busy on tiny chunks.
    prefetch: int = 1


def spec(run: str, params: int, chunk: int, work_ms: int = 0) -> RunSpec:
    return RunSpec(run, RangeSpace(0, params).to_spec(), chunk, "ttg.compute:square", work_ms)


def sweep(
    t: Target, run: str, params: int, chunk: int, *, workers: int = 2, prefetch: int = 1
) -> dict[str, float]:
    """Seed, start workers, time from the first finished chunk to the last."""
    broker = open_broker(t.name, t.url)
    s = spec(run, params, chunk)
    broker.seed(s)
    pool = LocalWorkers(
        {
            "TTG_BACKEND": t.name,
            "TTG_BROKER_URL": t.url,
            "TTG_METRICS_PORT": "0",
            "TTG_PREFETCH": str(prefetch),
        }
    )
    pool.start(workers)
    try:
        # Start the clock at the first result, so process start-up is not counted.
        while broker.progress(run).finished == 0:
            time.sleep(0.005)
        t0, d0 = time.perf_counter(), broker.progress(run).finished
        while not broker.progress(run).complete:
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
    finally:
        pool.stop()
    chunks = s.total_chunks - d0
    done_params = chunks * chunk
    ok = verify(broker, run)["ok"]
    broker.delete(run)
    broker.close()
    return {"chunks_s": chunks / elapsed, "params_s": done_params / elapsed, "verified": float(ok)}


def redelivery(t: Target, trials: int) -> list[float]:
    """Seconds from a SIGKILL of a worker holding a chunk until a live worker takes the chunk."""
    delays = []
    broker = open_broker(t.name, t.url)
    for i in range(trials):
        run = f"bench-kill-{i}"
        broker.seed(spec(run, 20000, 100, work_ms=100))
        pool = LocalWorkers(
            {"TTG_BACKEND": t.name, "TTG_BROKER_URL": t.url, "TTG_METRICS_PORT": "0"}
        )
        pool.start(2)
        try:
            killed = scenario.kill_worker_holding_chunk_at(
                lambda run=run: status_report(broker.progress(run)),
                pool.kill,
                0.3,
                sig=signal.SIGKILL,
                poll=0.01,
            )
        finally:
            pool.stop()
        assert killed.redelivery_delay_s is not None
        delays.append(killed.redelivery_delay_s)
        broker.delete(run)
    broker.close()
    return delays


def seeding(t: Target, params: int, chunk: int) -> dict[str, float | None]:
    broker = open_broker(t.name, t.url)
    run = "bench-seed"
    before = t.memory()
    t0 = time.perf_counter()
    report = broker.seed(spec(run, params, chunk))
    elapsed = time.perf_counter() - t0
    after = t.memory()
    out: dict[str, float | None] = {
        "seconds": elapsed,
        "chunks": report.total_chunks,
        "memory_mb": (after - before) / 2**20 if after is not None and before is not None else None,
    }
    broker.delete(run)
    broker.close()
    return out


def redis_target() -> Target:
    server = RedisServer(appendonly=True).start()
    client = open_broker("redis", server.url)

    def memory() -> int:
        return int(client.client.info("memory")["used_memory"])  # type: ignore[attr-defined]

    return Target("redis", server.url, server.stop, redis_raw.raw_ceiling, memory)


def rabbitmq_target() -> Target | None:
    if not (shutil.which("rabbitmq-server") or os.path.exists("/usr/sbin/rabbitmq-server")):
        return None
    try:
        import rabbitmq_raw  # noqa: PLC0415 - present once the RabbitMQ backend is

        from ttg.local import RabbitMQNode  # type: ignore[attr-defined]  # noqa: PLC0415
    except ImportError:
        return None
    node = RabbitMQNode()
    node.start()
    return Target(
        "rabbitmq", node.url, node.stop, rabbitmq_raw.raw_ceiling, lambda: None, prefetch=50
    )


def measure(t: Target, quick: bool) -> dict[str, Any]:
    big = 100_000 if quick else 1_000_000
    small = 2_000 if quick else 20_000
    out: dict[str, Any] = {}
    print(f"[{t.name}] raw client ceiling ...", file=sys.stderr, flush=True)
    out["raw"] = t.raw_ceiling(t.url)
    print(f"[{t.name}] {big:,} params in chunks of 100, 2 workers ...", file=sys.stderr, flush=True)
    out["prefetch"] = t.prefetch
    out["big"] = sweep(t, "bench-big", big, 100, prefetch=t.prefetch)
    print(f"[{t.name}] {small:,} one-parameter chunks, 2 workers ...", file=sys.stderr, flush=True)
    out["small"] = sweep(t, "bench-small", small, 1, prefetch=t.prefetch)
    print(f"[{t.name}] redelivery after SIGKILL ...", file=sys.stderr, flush=True)
    out["redelivery"] = redelivery(t, 2 if quick else 5)
    print(f"[{t.name}] seeding ...", file=sys.stderr, flush=True)
    out["seed"] = seeding(t, 1_000_000 if quick else 10_000_000, 1000)
    return out


def table(results: dict[str, dict[str, Any]], quick: bool) -> str:
    names = list(results)
    rows: list[tuple[str, list[str], str]] = []

    def row(label: str, fn: Callable[[dict[str, Any]], str], target: str = "") -> None:
        rows.append((label, [fn(results[n]) for n in names], target))

    big = "100k" if quick else "1M"
    small = "2k" if quick else "20k"
    row(
        f"params/s, {big} params, chunks of 100, 2 workers",
        lambda r: f"{r['big']['params_s']:,.0f}",
        ">= 300,000",
    )
    row("chunks/s, same run", lambda r: f"{r['big']['chunks_s']:,.0f}")
    row("  (TTG_PREFETCH of those runs)", lambda r: str(r["prefetch"]))
    row(
        f"chunks/s, {small} one-param chunks, 2 workers", lambda r: f"{r['small']['chunks_s']:,.0f}"
    )
    row(
        "raw client ceiling, msgs/s (1 client, round trips)", lambda r: f"{r['raw']['msgs_s']:,.0f}"
    )
    row(
        "TTG per-chunk cost / raw per-message cost",
        lambda r: f"{r['raw']['msgs_s'] / r['small']['chunks_s']:.2f}x",
        "<= 3x",
    )
    row(
        "redelivery after SIGKILL, s (median / max)",
        lambda r: f"{statistics.median(r['redelivery']):.2f} / {max(r['redelivery']):.2f}",
        "<= 2 s (redis), <= 1 s (rabbitmq)",
    )
    seed_label = "1M" if quick else "10M"
    row(
        f"seeding {seed_label} params in chunks of 1000, s",
        lambda r: f"{r['seed']['seconds']:.2f}",
        "<= 5 s",
    )
    row(
        "broker memory after seeding, MB",
        lambda r: "n/a" if r["seed"]["memory_mb"] is None else f"{r['seed']['memory_mb']:.2f}",
        "< 100 MB",
    )
    row(
        "every timed run verified",
        lambda r: "yes" if r["big"]["verified"] and r["small"]["verified"] else "NO",
    )
    width = max(len(r[0]) for r in rows)
    head = f"{'figure':<{width}}  " + "  ".join(f"{n:>14}" for n in names) + "  target"
    lines = [head, "-" * len(head)]
    lines += [
        f"{label:<{width}}  " + "  ".join(f"{v:>14}" for v in vals) + f"  {tgt}"
        for label, vals, tgt in rows
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run, not the figures"
    )
    parser.add_argument("--backend", choices=("redis", "rabbitmq", "all"), default="all")
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args()
    makers = {"redis": redis_target, "rabbitmq": rabbitmq_target}
    results: dict[str, dict[str, Any]] = {}
    for name, make in makers.items():
        if args.backend not in ("all", name):
            continue
        target = make()
        if target is None:
            print(f"[{name}] skipped: not available on this machine", file=sys.stderr)
            continue
        try:
            results[name] = measure(target, args.quick)
        finally:
            target.stop()
    cpu = f"{os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    when = time.strftime("%Y-%m-%d") + (" (--quick)" if args.quick else "")
    print(f"\nTTG bench on {platform.node()}: {cpu}, Python {platform.python_version()}, {when}\n")
    print(table(results, args.quick))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
