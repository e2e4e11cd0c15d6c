"""TTG beside Dramatiq on the same brokers, interleaved, with medians and TTG / Dramatiq ratios.

    make bench-peers                          # builds .bench-venv (Dramatiq), then runs this
    make bench-peers BENCH_ARGS="--quick"     # small sizes, 1 repetition

The same workload (bench_workload) on the same broker processes (one
redis-server with AOF everysec, one RabbitMQ node), the same number of worker
processes, one system after the other (TTG, Dramatiq 1x1, Dramatiq default,
TTG, ...) so that load drifts hit all alike. Both clocks run from the start of
the submitting process (``ttg seed`` / the Dramatiq producer) to the first
line of that system's poller saying every result is stored.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_workload
import report as rp
from local_brokers import Brokers, rabbitmq_available
from report import count, median, num, secs
from ttg_driver import BENCH_DIR, POLL_INTERVAL, TTG, StatusWatch, steady_rate, timed_sweep

#: (column key, Dramatiq --processes, --threads); the default is Dramatiq's own (2 CPUs here).
DRAMATIQ = (("dramatiq-1x1", 1, 1), ("dramatiq-default", os.cpu_count() or 2, 8))
SYSTEMS = ("ttg", *(k for k, _p, _t in DRAMATIQ))


def say(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


class Dramatiq:
    """Dramatiq workers, producer and poller (bench/peer_dramatiq.py) in the peer venv."""

    def __init__(
        self,
        python: str,
        backend: str,
        url: str,
        *,
        results_url: str,
        processes: int,
        threads: int,
        log: Path,
    ) -> None:
        self.python, self.processes, self.threads = python, processes, threads
        self.results_url = results_url
        path = os.environ.get("PYTHONPATH")
        self.env = {
            **os.environ,
            "PEER_BROKER": backend,
            "PEER_BROKER_URL": url,
            "PEER_RESULTS_URL": results_url,
            "PYTHONPATH": str(BENCH_DIR) + (os.pathsep + path if path else ""),
        }
        self._workers: subprocess.Popen[bytes] | None = None
        # Open for the whole bench: every run of this configuration appends to it.
        self._log = log.open("ab")

    def module(self, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen([self.python, "-m", *args], env=self.env, **kwargs)

    def start(self) -> None:
        self._workers = self.module(
            "dramatiq",
            "peer_dramatiq",
            "--processes",
            str(self.processes),
            "--threads",
            str(self.threads),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its worker processes are in its group, ended with it
        )

    def stop(self) -> None:
        """SIGTERM the master (it stops its workers); the whole group if it lingers."""
        p = self._workers
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def produce(self, run: str, params: int, chunk: int) -> subprocess.Popen[bytes]:
        return self.module(
            "peer_dramatiq",
            "produce",
            run,
            str(params),
            str(chunk),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def watch(self, run: str, chunks: int) -> StatusWatch:
        def launch(err: IO[bytes]) -> subprocess.Popen[str]:
            argv = ("peer_dramatiq", "watch", run, str(chunks), str(POLL_INTERVAL))
            return self.module(*argv, stdout=subprocess.PIPE, stderr=err, text=True)

        return StatusWatch(launch, run).start()

    def key(self, run: str) -> str:
        return f"bench:{{{run}}}:results"

    def warm_up(self) -> None:
        run = f"warm-{uuid.uuid4().hex[:8]}"
        if self.produce(run, 200, 10).wait(120) != 0:
            raise RuntimeError(f"dramatiq producer failed; see {self._log.name}")
        self.watch(run, 20).wait(120)
        self._redis().delete(self.key(run))

    def _redis(self) -> Any:
        import redis  # noqa: PLC0415 - TTG's own dependency, in the driver's venv

        return redis.Redis.from_url(self.results_url)

    def sweep(self, run: str, params: int, chunk: int, timeout: float = 3600) -> dict[str, Any]:
        """One end-to-end Dramatiq run, clocked like TTG's, then its results checked."""
        chunks = -(-params // chunk)
        load = os.getloadavg()[0]
        self.start()
        try:
            self.warm_up()
            t0 = time.perf_counter()
            producer = self.produce(run, params, chunk)
            watch = self.watch(run, chunks)
            code = producer.wait(timeout)
            t_seed = time.perf_counter()
            if code != 0:
                watch.stop()
                raise RuntimeError(f"dramatiq producer exited {code}; see {self._log.name}")
            t_end = max(watch.wait(timeout), t_seed)
        finally:
            self.stop()
        wall = t_end - t0
        rate = steady_rate(watch.samples, chunks)
        out: dict[str, Any] = {
            "params": params,
            "chunk": chunk,
            "chunks": chunks,
            "load_1min_at_start": load,
            "wall_s": wall,
            "seed_s": t_seed - t0,
            "params_s": params / wall,
            "chunks_s": chunks / wall,
            "steady_chunks_s": rate,
            "steady_params_s": rate * chunk if rate else None,
            "status_lines": len(watch.samples),
        }
        out.update(self.check(run, params, chunks))
        return out

    def check(self, run: str, params: int, chunks: int) -> dict[str, Any]:
        """Every chunk has its results once, and they add up to the workload's total."""
        client = self._redis()
        stored = client.hgetall(self.key(run))
        client.delete(self.key(run))
        problems = []
        if set(stored) != {str(c).encode() for c in range(chunks)}:
            problems.append(f"{len(stored)} chunks hold results, the run has {chunks}")
        got = sum(sum(json.loads(v)) for v in stored.values())
        if got != bench_workload.total(params):
            problems.append(f"results add up to {got}, not {bench_workload.total(params)}")
        return {"verified": not problems, "problems": problems}


def run_all(
    args: argparse.Namespace, brokers: Brokers, backends: list[str], log_dir: Path
) -> dict[str, Any]:
    """Every backend x workload x repetition, the systems interleaved within each repetition."""
    big, small = (100_000, 2_000) if args.quick else (1_000_000, 20_000)
    reps = 1 if args.quick else args.reps
    workloads = (("big", big, 100), ("small", small, 1))
    results: dict[str, Any] = {}
    for backend in backends:
        url = brokers.url(backend)
        ttg = TTG(backend, url)
        peers = {
            key: Dramatiq(
                args.peer_python,
                backend,
                url,
                results_url=brokers.redis.url,
                processes=p,
                threads=t,
                log=log_dir / f"{backend}-{key}.log",
            )
            for key, p, t in DRAMATIQ
        }
        results[backend] = {}
        for wkey, params, chunk in workloads:
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
            results[backend][wkey] = runs
            for rep in range(reps):
                for system in SYSTEMS:
                    run = f"peer-{wkey}-{uuid.uuid4().hex[:6]}"
                    say(f"[{backend}] {count(params)}/{chunk} rep {rep + 1}/{reps}: {system} ...")
                    try:
                        if system == "ttg":
                            out = timed_sweep(ttg, run, params, chunk)
                        else:
                            out = peers[system].sweep(run, params, chunk)
                    except Exception as e:
                        say(f"[{backend}] {system}: FAILED: {e}")
                        out = {"error": str(e), "verified": False}
                    runs[system].append(out)
                    say(
                        f"[{backend}] {system}: wall {secs(out.get('wall_s'))} s, "
                        f"verified {out.get('verified')}"
                    )
    return results


def rows(results: dict[str, Any], reps: int, big: int, small: int) -> list[rp.Row]:
    out: list[rp.Row] = []
    blank = ["" for _ in SYSTEMS] + [""]

    def med(runs: list[dict[str, Any]], field: str) -> float | None:
        return median([r.get(field) for r in runs])

    def row(
        label: str, runs: dict[str, list[dict[str, Any]]], field: str, fmt: Callable[..., str]
    ) -> rp.Row:
        values = [med(runs[s], field) for s in SYSTEMS]
        ttg, default = values[0], values[-1]
        ratio = f"{ttg / default:.2f}x" if ttg and default else "n/a"
        return (label, [fmt(v) for v in values] + [ratio], "")

    for backend, workloads in results.items():
        for wkey, runs in workloads.items():
            size = (
                f"{count(big)} params in chunks of 100"
                if wkey == "big"
                else (f"{count(small)} one-param chunks")
            )
            unit = "params" if wkey == "big" else "chunks"
            out.append((f"{backend}: {size} (median of {reps})", blank, ""))
            out.append(row(f"  end-to-end {unit}/s (higher is better)", runs, f"{unit}_s", num))
            out.append(row("  wall, seed start -> all results, s", runs, "wall_s", secs))
            out.append(row("  seeding / enqueueing alone, s", runs, "seed_s", secs))
            out.append(row(f"  steady-state {unit}/s (10% -> 90%)", runs, f"steady_{unit}_s", num))
    verified = []
    for s in SYSTEMS:
        got = [
            bool(r.get("verified")) for w in results.values() for rs in w.values() for r in rs[s]
        ]
        verified.append(f"{'yes' if all(got) else 'NO'} ({sum(got)}/{len(got)})")
    out.append(("every timed run verified", [*verified, ""], ""))
    return out


METHOD = [
    "each timed run: fresh workers (TTG: 2 `ttg worker`; Dramatiq: `dramatiq peer_dramatiq",
    "  --processes P --threads T`), warmed up by a small run of another id, then clock on at",
    "  the start of the submitting process (`ttg seed` / `python -m peer_dramatiq produce`,",
    "  `actor.send` per chunk), clock off at the first line of that system's ONE long-lived",
    "  poller saying every result is stored (`ttg status --watch --json --interval 0.1` /",
    "  `python -m peer_dramatiq watch`, HLEN every 0.1 s). Seeding/enqueueing is included.",
    "workload: params 0..N-1, f(p) = (p * 2654435761) % 1000003; TTG stores results in its",
    "  ledger; Dramatiq's actor HSETs the chunk's JSON result list into a hash on the same",
    "  AOF Redis (everysec) before its message is acked. Verified: TTG `ttg verify` exit 0",
    "  and `ttg results` add up to the workload's total; Dramatiq every chunk stored once,",
    "  adding up to the same total.",
    "Dramatiq brokers with their defaults (RabbitMQ: publisher confirms off, prefetch 2 per",
    "  thread); TTG with its defaults unless TTG_* variables are shown below.",
    "ratio: TTG / Dramatiq default of the row's figure (rates: > 1 means TTG is faster;",
    "  seconds: < 1 means TTG is faster).",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peer-python", default=".bench-venv/bin/python", help="venv with Dramatiq"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--backend", choices=("redis", "rabbitmq", "all"), default="all")
    parser.add_argument("--json", help="figures file (default bench/out/peers-<time>.json)")
    args = parser.parse_args()
    if not Path(args.peer_python).exists():
        print(f"no {args.peer_python}: run `make bench-peers`", file=sys.stderr)
        return 2
    backends = [b for b in ("redis", "rabbitmq") if args.backend in ("all", b)]
    if "rabbitmq" in backends and not rabbitmq_available():
        say("[rabbitmq] skipped: rabbitmq-server is not installed")
        backends.remove("rabbitmq")
    info, load_start = rp.machine(), rp.note_load("start")
    started = time.perf_counter()
    log_dir = Path(tempfile.mkdtemp(prefix="ttg-peers-"))
    brokers = Brokers()
    try:
        results = run_all(args, brokers, backends, log_dir)
        versions = brokers.versions()
    finally:
        brokers.stop()
    load_end = rp.note_load("end")
    peer_version = subprocess.run(
        [args.peer_python, "-c", "import dramatiq; print(dramatiq.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    versions["dramatiq"] = peer_version
    reps = 1 if args.quick else args.reps
    big, small = (100_000, 2_000) if args.quick else (1_000_000, 20_000)
    title = "TTG beside Dramatiq" + (
        " (--quick: small sizes, not the figures)" if args.quick else ""
    )
    lines = rp.header(
        title,
        info=info,
        versions=versions,
        load_start=load_start,
        load_end=load_end,
        method=METHOD,
    )
    columns = ["TTG", "Dramatiq 1x1", f"Dramatiq {DRAMATIQ[1][1]}x{DRAMATIQ[1][2]}", "TTG/Dramatiq"]
    table = rp.table(columns, rows(results, reps, big, small))
    print("\n" + "\n".join(lines) + "\n\n" + table + "\n")
    path = rp.write_json(
        "peers",
        {
            "machine": info,
            "versions": versions,
            "load_start": load_start,
            "load_end": load_end,
            "ttg_settings": rp.ttg_overrides(),
            "quick": args.quick,
            "reps": reps,
            "dramatiq_configs": DRAMATIQ,
            "seconds": time.perf_counter() - started,
            "results": results,
        },
        args.json,
    )
    print(f"figures written to {path}; bench-peers took {time.perf_counter() - started:.0f} s")
    runs = [
        r
        for w in results.values()
        for by_system in w.values()
        for rs in by_system.values()
        for r in rs
    ]
    if all(r.get("verified") for r in runs):
        shutil.rmtree(log_dir, ignore_errors=True)
        return 0
    print(f"some runs failed or did not verify; Dramatiq logs in {log_dir}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
