"""One worker at TTG_CONCURRENCY 1, then 2, on a CPU-bound compute: the wall time of each.

    .venv/bin/python bench/concurrency.py [--params 400] [--chunk-size 10] [--repeat 3]

One Redis, one ``ttg worker``, a run of ``bench_workload:spin`` (a few ms of pure
CPU per parameter) seeded first; the clock runs from the worker's start to one
long-lived ``ttg status --watch`` saying the run is complete. Runs alternate
(1, 2, 1, 2, ...) so that load drifts hit both alike; the 1-minute load average is
printed beside each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_workload
from local_brokers import Brokers
from ttg_driver import TTG


def one(ttg: TTG, concurrency: int, params: int, chunk: int) -> float:
    run = f"conc-{concurrency}-{uuid.uuid4().hex[:6]}"
    ttg.check("seed", "--run", run, "--params", str(params), "--chunk-size", str(chunk),
              "--compute", bench_workload.SPIN)  # fmt: skip
    ttg.env["TTG_CONCURRENCY"] = str(concurrency)
    # One long-lived watcher: a status process per poll would take a core from the worker.
    watch = ttg.watch(run)
    watch.status()
    t0 = time.perf_counter()
    pool = ttg.workers(1)
    try:
        return watch.wait(600) - t0
    finally:
        pool.stop()
        ttg.check("delete", "--run", run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=400)
    ap.add_argument("--chunk-size", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    brokers = Brokers()
    try:
        ttg = TTG("redis", brokers.url("redis"))
        walls: dict[int, list[float]] = {1: [], 2: []}
        for rep in range(args.repeat):
            for c in (1, 2):
                wall = one(ttg, c, args.params, args.chunk_size)
                walls[c].append(wall)
                print(f"rep {rep + 1}: concurrency {c}: {wall:.2f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
        m1, m2 = statistics.median(walls[1]), statistics.median(walls[2])
        print(f"median wall: concurrency 1 {m1:.2f} s, concurrency 2 {m2:.2f} s: "
              f"{m1 / m2:.2f}x faster ({os.cpu_count()} CPUs)")  # fmt: skip
    finally:
        brokers.stop()


if __name__ == "__main__":
    main()
