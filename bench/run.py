"""TTG benchmarks, per backend: end to end with seeding, recovery, seeding and scale figures.

    make bench                                        # everything, both backends
    make bench BENCH_ARGS="--quick --backend redis"   # small sizes, one repetition: a smoke run
    .venv/bin/python bench/run.py --help

TTG is driven only through its CLI and worker processes (see ttg_driver), so
the same bench measures the code before and after a rewrite of its
internals. Each backend runs against its own broker process started here on a
free port (redis-server with AOF everysec; a RabbitMQ node). Figures are
printed, never asserted; every timed run is verified and the table says so.
The beside-Dramatiq comparison is ``make bench-peers`` (bench/peers.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rabbitmq_raw
import redis_raw
import report as rp
from local_brokers import Brokers, rabbitmq_available
from report import count, mb, median, num, secs
from ttg_driver import TTG, check_run, timed_sweep

from ttg import scenario

#: The default compute, for runs whose figure is not about the workload (verified by closed form).
SQUARE = "ttg.compute:square"


@dataclass(frozen=True)
class Sizes:
    """Every size the bench uses; --quick swaps in small ones."""

    big: int = 1_000_000  # workload (a), in chunks of BIG_CHUNK
    small: int = 20_000  # workload (b), one-parameter chunks
    reps: int = 3
    kill_trials: int = 5
    kill_params: int = 6_000  # 60 chunks of 100 params x 100 ms
    seed_big: int = 10_000_000  # in chunks of 1,000
    seed_small: int = 20_000  # one-parameter chunks
    seed_many: int = 1_000_000  # one-parameter chunks, broker memory after
    scale: int = 10_000_000  # in chunks of 100, end to end
    status_every_s: float = 3.0  # ttg status calls during the scale run
    status_calls: int = 9
    raw_messages: int = 5_000


BIG_CHUNK = 100
FULL = Sizes()
QUICK = Sizes(
    big=100_000,
    small=2_000,
    reps=1,
    kill_trials=2,
    kill_params=4_000,
    seed_big=1_000_000,
    seed_small=2_000,
    seed_many=10_000,
    scale=1_000_000,
    status_every_s=0.5,
    status_calls=3,
    raw_messages=1_000,
)

#: The test suite's: the instrument works end to end, in seconds on a loaded machine.
SMOKE = Sizes(
    big=10_000,
    small=300,
    reps=1,
    kill_trials=1,
    kill_params=1_000,
    seed_big=50_000,
    seed_small=300,
    seed_many=2_000,
    scale=50_000,
    status_every_s=0.3,
    status_calls=2,
    raw_messages=200,
)


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class Bench:
    """Runs the figures of one backend after another and keeps every result."""

    def __init__(self, brokers: Brokers, sizes: Sizes) -> None:
        self.brokers, self.z = brokers, sizes
        self.results: dict[str, dict[str, Any]] = {}
        #: (backend, figure, verified) of every run that was verified.
        self.timed: list[tuple[str, str, bool]] = []

    def step(self, backend: str, key: str, what: str, fn: Callable[[], Any]) -> None:
        """Measure one figure; an error is recorded for that figure and the bench goes on."""
        say(f"[{backend}] {what} ...")
        t0 = time.perf_counter()
        try:
            self.results[backend][key] = fn()
        except Exception as e:
            say(f"[{backend}] {what}: FAILED: {e}")
            self.results[backend][key] = {"error": str(e)}
            self.timed.append((backend, key, False))
        say(f"[{backend}] {what}: {time.perf_counter() - t0:.1f} s")

    def verified(self, backend: str, figure: str, out: dict[str, Any]) -> dict[str, Any]:
        self.timed.append((backend, figure, bool(out.get("verified"))))
        if not out.get("verified"):
            say(f"[{backend}] {figure}: NOT VERIFIED: {out.get('problems')}")
        return out

    def measure(self, backend: str) -> None:
        z, url = self.z, self.brokers.url(backend)
        ttg = TTG(backend, url)
        self.results[backend] = {}
        self.step(backend, "cli_start_s", "ttg CLI start-up", lambda: self.cli_start(ttg))
        raw = redis_raw.raw_ceiling if backend == "redis" else rabbitmq_raw.raw_ceiling
        self.step(backend, "raw", "raw client ceiling", lambda: raw(url, z.raw_messages))
        for key, params, chunk in (("big", z.big, BIG_CHUNK), ("small", z.small, 1)):
            self.step(
                backend,
                key,
                f"{count(params)} params in chunks of {chunk}, end to end, x{z.reps}",
                lambda key=key, params=params, chunk=chunk: [
                    self.verified(backend, key, timed_sweep(ttg, rid(f"e2e-{key}"), params, chunk))
                    for _ in range(z.reps)
                ],
            )
        self.step(
            backend,
            "redelivery",
            f"redelivery after SIGKILL x{z.kill_trials}",
            lambda: [self.kill_trial(ttg, backend) for _ in range(z.kill_trials)],
        )
        for key, params, chunk, memory in (
            ("seed_big", z.seed_big, 1000, False),
            ("seed_small", z.seed_small, 1, False),
            ("seed_many", z.seed_many, 1, True),
        ):
            self.step(
                backend,
                key,
                f"seeding {count(params)} params in chunks of {chunk}",
                lambda params=params, chunk=chunk, memory=memory: self.seeding(
                    ttg, params, chunk, memory=memory
                ),
            )
        self.step(
            backend,
            "scale",
            f"scale: {count(z.scale)} params in chunks of {BIG_CHUNK}, end to end",
            lambda: self.scale(ttg),
        )

    def cli_start(self, ttg: TTG) -> float:
        """Wall of ``python -m ttg --version``: the start-up inside every process-level timing."""
        return min(ttg.check("--version").seconds for _ in range(3))

    def kill_trial(self, ttg: TTG, backend: str) -> dict[str, Any]:
        """SIGKILL a worker holding a chunk at 30%; seconds until the chunk is taken up again."""
        run = rid("kill")
        ttg.check(*ttg.seed_args(run, self.z.kill_params, 100, SQUARE, 100))
        watch = ttg.watch(run, interval=0.01)
        pool = ttg.workers(2)
        try:
            killed = scenario.kill_worker_holding_chunk_at(
                watch.status, pool.kill, 0.3, sig=signal.SIGKILL, poll=0.01
            )
            watch.wait(300)
        finally:
            watch.stop()
            pool.stop()
        try:
            out = {"delay_s": killed.redelivery_delay_s, **check_run(ttg, run, None)}
        finally:
            ttg.run("delete", "--run", run, "--json")
        return self.verified(backend, "redelivery", out)

    def seeding(self, ttg: TTG, params: int, chunk: int, *, memory: bool) -> dict[str, Any]:
        """Wall of one ``ttg seed`` process, no workers; broker memory after when asked."""
        run = rid("seed")
        backend = ttg.backend
        before = self.brokers.memory_bytes(backend) if memory else None
        try:
            p = ttg.check(*ttg.seed_args(run, params, chunk, SQUARE, 0))
            after = self.brokers.memory_bytes(backend) if memory else None
        finally:
            ttg.run("delete", "--run", run, "--json")
        seeded = json.loads(p.out)
        return {
            "seconds": p.seconds,
            "chunks": seeded["total_chunks"],
            "seeded_chunks": seeded["seeded_chunks"],
            "seed_rss_mb": p.max_rss_mb,
            "memory_mb": after / 2**20 if after is not None else None,
            "memory_idle_mb": before / 2**20 if before is not None else None,
        }

    def scale(self, ttg: TTG) -> dict[str, Any]:
        """10^5 chunks end to end, with status latency during it and broker memory after."""
        run = rid("scale")
        latencies: list[float] = []

        def probe(finished: Any) -> None:
            while len(latencies) < self.z.status_calls and not finished.wait(self.z.status_every_s):
                p = ttg.run("status", "--run", run, "--json", timeout=300)
                if p.code == 0:  # before seeding declares the run, status says "no run"
                    latencies.append(p.seconds)

        def memory() -> dict[str, Any]:
            used = self.brokers.memory_bytes(ttg.backend)
            return {"memory_mb": used / 2**20 if used is not None else None}

        out = timed_sweep(
            ttg, run, self.z.scale, BIG_CHUNK, check_sum=False, during=probe, after_complete=memory
        )
        out["status_latency_s"] = latencies
        return self.verified(ttg.backend, "scale", out)


class _Failed(Exception):
    """The figure's step failed (its error is in the JSON)."""


def e2e_rows(results: dict[str, dict[str, Any]], names: list[str], z: Sizes) -> list[rp.Row]:
    def cell(name: str, key: str, field: str, fmt: Callable[[float | None], str]) -> str:
        runs = results[name].get(key)
        if not isinstance(runs, list):
            return "error" if runs else "n/a"
        return fmt(median([r.get(field) for r in runs]))

    def row(
        label: str, key: str, field: str, fmt: Callable[[float | None], str], tgt: str = ""
    ) -> rp.Row:
        return (label, [cell(n, key, field, fmt) for n in names], tgt)

    rep = f"median of {z.reps}" if z.reps > 1 else "1 run"
    peer = ">= 3x Dramatiq default (make bench-peers)"
    return [
        (f"end to end: seed start -> every result recorded, 2 workers ({rep})", blank(names), ""),
        row(
            f"  {count(z.big)} params, chunks of {BIG_CHUNK}: params/s",
            "big",
            "params_s",
            num,
            peer,
        ),
        row("    wall, s", "big", "wall_s", secs),
        row("    of which seeding (ttg seed process), s", "big", "seed_s", secs),
        row("    steady-state params/s (10% -> 90% of chunks)", "big", "steady_params_s", num),
        row(f"  {count(z.small)} one-param chunks: chunks/s", "small", "chunks_s", num, peer),
        row("    wall, s", "small", "wall_s", secs),
        row("    of which seeding (ttg seed process), s", "small", "seed_s", secs),
        row("    steady-state chunks/s (10% -> 90% of chunks)", "small", "steady_chunks_s", num),
    ]


def blank(names: list[str]) -> list[str]:
    return ["" for _ in names]


def other_rows(results: dict[str, dict[str, Any]], names: list[str], z: Sizes) -> list[rp.Row]:
    def get(name: str, *path: str) -> Any:
        v: Any = results[name]
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
            if isinstance(v, dict) and "error" in v:
                raise _Failed
        return v

    def row(label: str, fn: Callable[[str], str], tgt: str = "") -> rp.Row:
        def safe(n: str) -> str:
            try:
                return fn(n)
            except _Failed:
                return "error"
            except (TypeError, KeyError, ValueError):
                return "n/a"

        return (label, [safe(n) for n in names], tgt)

    def pair(xs: list[float] | None) -> str:
        return "n/a" if not xs else f"{median(xs):.2f} / {max(xs):.2f}"

    def delays(n: str) -> list[float]:
        return [t["delay_s"] for t in get(n, "redelivery") or []]

    def seeded(key: str) -> Callable[[str], str]:
        return lambda n: secs(get(n, key, "seconds"))

    def scale_mem(n: str) -> str:
        return mb(get(n, "scale", "memory_mb"))

    def with_idle(n: str) -> str:
        after, idle = get(n, "seed_many", "memory_mb"), get(n, "seed_many", "memory_idle_mb")
        return mb(after) + (
            f" ({after - idle:+,.1f})" if after is not None and idle is not None else ""
        )

    def timed(n: str, field: str) -> str:
        return f"{secs(get(n, 'scale', field + '_s'))} / {mb(get(n, 'scale', field + '_rss_mb'))}"

    def scale_wall(n: str) -> str:
        return f"{secs(get(n, 'scale', 'wall_s'))} ({num(get(n, 'scale', 'params_s'))})"

    def status_latency(n: str) -> str:
        return pair(get(n, "scale", "status_latency_s"))

    chunks = count(z.scale // BIG_CHUNK)
    sc = f"scale: {count(z.scale)} params in chunks of {BIG_CHUNK} ({chunks} chunks), 2 workers"
    return [
        row(
            "raw client ceiling, msgs/s (1 client, round trips)",
            lambda n: num(get(n, "raw", "msgs_s")),
        ),
        row(
            f"redelivery after SIGKILL, s (median / max of {z.kill_trials})",
            lambda n: pair(delays(n)),
            "<= 2 s redis, <= 0.2 s rabbitmq",
        ),
        row(
            f"seeding {count(z.seed_big)} params in chunks of 1000, s", seeded("seed_big"), "<= 1 s"
        ),
        row(f"seeding {count(z.seed_small)} one-param chunks, s", seeded("seed_small"), "<= 2 s"),
        row(f"seeding {count(z.seed_many)} one-param chunks, s", seeded("seed_many")),
        row("  broker memory after, MB (change over idle)", with_idle),
        (sc, blank(names), ""),
        row("  wall, s (params/s)", scale_wall),
        row("  of which seeding, s", lambda n: secs(get(n, "scale", "seed_s"))),
        row("  broker memory at the end, MB", scale_mem),
        row("  ttg status during the run, s (median / max)", status_latency),
        row("  ttg verify, s / peak RSS MB", lambda n: timed(n, "verify"), "< 5 s"),
        row(
            "  ttg results (JSONL file), s / peak RSS MB", lambda n: timed(n, "results"), "< 100 MB"
        ),
        row("ttg CLI start-up (python -m ttg --version), s", lambda n: secs(get(n, "cli_start_s"))),
    ]


def verdicts(timed: list[tuple[str, str, bool]], backend: str) -> str:
    got = [v for b, _f, v in timed if b == backend]
    return f"{'yes' if all(got) else 'NO'} ({sum(got)}/{len(got)})"


METHOD = [
    "end to end: 2 `ttg worker` processes started and warmed up (a small run of another id",
    "  seeded and finished), clock on, `ttg seed` as a process, clock off at the first line of",
    "  ONE long-lived `ttg status --watch --json --interval 0.1` (started with the seed) saying",
    "  complete.",
    "workload: params 0..N-1, f(p) = (p * 2654435761) % 1000003 (bench/bench_workload.py),",
    "  results in TTG's ledger. Verified = `ttg verify --json` exits 0 with ok, and the results",
    "  of `ttg results` add up to the workload's total (the scale run: verify only).",
    "steady state: chunks finished between the 10% and 90% marks over the time between them,",
    "  interpolated from the poller's lines (seeding may overlap it).",
    "redelivery: ttg.scenario at 30% of a run of 100-ms chunks of 100 params, poller interval",
    "  0.01 s; every such run is then finished and verified.",
    "seeding: wall of one `ttg seed` process (interpreter start included), no workers. Memory:",
    "  Redis INFO used_memory; RabbitMQ `rabbitmqctl status` total (rss strategy).",
    "scale: `ttg status --json` processes every few seconds during the run; verify and results",
    "  wall and peak RSS of that process alone (wait4 ru_maxrss).",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks the bench runs (the tests')"
    )
    parser.add_argument("--backend", choices=("redis", "rabbitmq", "all"), default="all")
    parser.add_argument("--json", help="figures file (default bench/out/bench-<time>.json)")
    args = parser.parse_args()
    z = SMOKE if args.smoke else QUICK if args.quick else FULL
    info, load_start = rp.machine(), rp.note_load("start")
    started = time.perf_counter()
    brokers = Brokers()
    bench = Bench(brokers, z)
    versions: dict[str, str] = {}
    try:
        for name in ("redis", "rabbitmq"):
            if args.backend not in ("all", name):
                continue
            if name == "rabbitmq" and not rabbitmq_available():
                say("[rabbitmq] skipped: rabbitmq-server is not installed")
                continue
            bench.measure(name)
        versions = brokers.versions()
    finally:
        brokers.stop()
    load_end = rp.note_load("end")
    names = list(bench.results)
    ok = sum(v for _b, _f, v in bench.timed)
    small = "--smoke" if args.smoke else "--quick" if args.quick else ""
    title = "TTG bench" + (f" ({small}: small sizes, not the figures)" if small else "")
    lines = rp.header(
        title,
        info=info,
        versions=versions,
        load_start=load_start,
        load_end=load_end,
        method=METHOD,
    )
    rows = e2e_rows(bench.results, names, z) + other_rows(bench.results, names, z)
    rows.append(("every timed run verified", [verdicts(bench.timed, n) for n in names], ""))
    print("\n" + "\n".join(lines) + "\n\n" + rp.table(names, rows, last="target") + "\n")
    path = rp.write_json(
        "bench",
        {
            "machine": info,
            "versions": versions,
            "load_start": load_start,
            "load_end": load_end,
            "ttg_settings": rp.ttg_overrides(),
            "sizes": asdict(z),
            "quick": args.quick or args.smoke,
            "seconds": time.perf_counter() - started,
            "results": bench.results,
            "timed_runs": bench.timed,
        },
        args.json,
    )
    print(f"figures written to {path}; bench took {time.perf_counter() - started:.0f} s")
    return 0 if ok == len(bench.timed) else 1


if __name__ == "__main__":
    sys.exit(main())
