"""Sweeps that grow, at scale: seeding a run of 10^6 parameters that reuses a run of 10^6.

    make bench-reuse                          # 10^6 against 10^6, on Redis
    make bench-reuse BENCH_ARGS=--quick       # 10^5: a smoke run

A run R1 of N parameters (``range:0:N``, the default compute, chunks of 1,000) gets
its N results recorded through a consumer, as workers would (no compute: the
figure is the seeding's). Then ``ttg seed --run R2 --space range:N/10:N+N/10 --reuse R1``
runs as its own process: R2 has N parameters, 90 % of them R1's. Printed: the
seeding's wall time, split into matching (read R1's ledger, hash both spaces, join)
and recording the reused chunks, and the seeding process's peak RSS beside that of
a plain ``ttg seed`` of R2 without ``--reuse`` (the interpreter's own floor). Then
``ttg verify --run R2``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_brokers import Brokers

from ttg.endpoint import Endpoint
from ttg.run import Outcome, RunSpec, Status

CHUNK = 1000


def say(msg: str) -> None:
    print(f"[bench-reuse] {msg}", file=sys.stderr, flush=True)


def fill(url: str, run: str, params: int | None) -> None:
    """Seed ``run`` (unless ``params`` is None: seeded already) and record the results
    (squares) of every chunk it has to compute through a consumer, as a worker would."""
    broker = Endpoint("redis", url).open_broker()
    try:
        if params is not None:
            space = {"kind": "range", "start": 0, "stop": params, "step": 1}
            broker.seed(RunSpec(run, space, CHUNK, "ttg.compute:square", identity=_identity()))
        total = broker.spec(run).task_chunks
        consumer = broker.consumer("bench-filler", lease_seconds=30, prefetch=256)
        consumer.start()
        done = 0
        while done < total:
            now = time.time()
            items = []
            for d in consumer.fetch(1.0, 256):
                results = [x * x for x in d.spec.parameter_space.values(d.lo, d.hi)]
                o = Outcome(d.chunk, Status.OK, d.hi - d.lo, "bench", d.attempt, now,
                            result=results, started_at=now - 0.001 * len(results))  # fmt: skip
                items.append((d, o))
            consumer.complete(items)
            done += sum(d.run == run for d, _ in items)
        consumer.close()
    finally:
        broker.close()


def _identity() -> str:
    from ttg.identity import identity  # noqa: PLC0415

    return identity("ttg.compute:square")


def ttg(env: dict[str, str], *args: str) -> tuple[float, int, str]:
    """Run ``ttg ARGS``: its wall seconds, its peak RSS (KiB) and its stdout (its CPU
    seconds, user + system, are appended to ``CPU``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = usage.ru_maxrss
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ttg", *args], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"ttg {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout[-2000:]}"
        )
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(usage.ru_utime + usage.ru_stime - cpu0)
    # RUSAGE_CHILDREN's maxrss is the largest child so far: run the big one last.
    return wall, max(before, usage.ru_maxrss), proc.stdout


#: CPU seconds of each command run, in order.
CPU: list[float] = []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10^5 parameters")
    p.add_argument("--params", type=int, default=None)
    args = p.parse_args()
    n = args.params or (100_000 if args.quick else 1_000_000)
    brokers = Brokers()
    try:
        url = brokers.redis.url
        env = {**os.environ, "TTG_BACKEND": "redis", "TTG_BROKER_URL": url}
        tag = uuid.uuid4().hex[:6]
        r1, r2, plain = f"reuse-a-{tag}", f"reuse-b-{tag}", f"reuse-p-{tag}"
        say(f"recording {n:,} results of {r1} ...")
        t0 = time.perf_counter()
        fill(url, r1, n)
        say(f"... in {time.perf_counter() - t0:.1f} s")
        space = f"range:{n // 10}:{n + n // 10}"
        common = ["--space", space, "--chunk-size", str(CHUNK), "--json"]
        _, floor, _ = ttg(env, "seed", "--run", plain, *common)
        ttg(env, "delete", "--run", plain)  # the filler would take its chunks too
        dry, _, out = ttg(env, "seed", "--run", r2, *common, "--reuse", r1, "--dry-run")
        plan = json.loads(out)
        wall, rss, out = ttg(env, "seed", "--run", r2, *common, "--reuse", r1)
        seeded = json.loads(out)
        fill(url, r2, None)  # its new parameters, as workers would
        vwall, _, _ = ttg(env, "verify", "--run", r2)
        print(f"reuse: {n:,} parameters matched against {n:,} on Redis "
              f"(reused {seeded['reused']:,}, to compute {seeded['to_compute']:,})")  # fmt: skip
        cpu = CPU  # plain seed, delete, dry run, seed, verify
        print(f"  ttg seed --dry-run --reuse (verify R1, read it, hash, match): {dry:6.1f} s wall,"
              f" {cpu[2]:5.1f} s CPU")  # fmt: skip
        chunks = plan["total_chunks"] - plan["compute_chunks"]
        print(f"  ttg seed --reuse (that, and record {chunks} reused chunks)"
              f": {wall:6.1f} s wall, {cpu[3]:5.1f} s CPU, peak RSS "
              f"{rss / 1024:.0f} MiB (plain ttg seed: {floor / 1024:.0f} MiB)")  # fmt: skip
        print(f"  ttg verify (with provenance): {vwall:6.1f} s wall, {cpu[4]:5.1f} s CPU")
        print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        brokers.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
