"""The results store's figures: broker memory and wall time, results in the broker or on a volume.

    make bench-store                                        # both backends, 3 repetitions
    make bench-store BENCH_ARGS="--quick --backend redis"   # small sizes, once: a smoke run

Two workloads, each run with ``TTG_RESULTS_URL=broker`` and ``file://`` (a
directory here), interleaved, on the same broker process, 2 workers, TTG's
defaults, driven through the CLI like bench/run.py (every run verified):

- 2,000 parameters whose results are about 200 kB of JSON each (``bench_workload:blob``,
  chunks of 10): wall time, and the broker's memory once every result is recorded;
- 1M parameters of ``bench_workload:knuth`` in chunks of 100 (bench/run.py's workload):
  wall time, results summed against the workload's total.

Figures are printed as ratios file/broker measured in the same run, with the
load average at the start and the end (the machine may be shared).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_workload
import report as rp
from local_brokers import Brokers, rabbitmq_available
from report import count, mb, median, num, secs
from ttg_driver import TTG, timed_sweep

#: The stores compared: the ledger, and a directory on this machine's disk.
STORES = ("broker", "file")


def say(msg: str) -> None:
    print(f"[bench-store] {msg}", file=sys.stderr, flush=True)


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def sweep(
    ttg: TTG, brokers: Brokers, store: str, root: Path, *, params: int, chunk: int, compute: str
) -> dict[str, Any]:
    """One verified end-to-end run with results in ``store``; broker memory at its end."""
    folder = root / uuid.uuid4().hex[:8]
    folder.mkdir()
    ttg.env["TTG_RESULTS_URL"] = "broker" if store == "broker" else f"file://{folder}"
    idle = brokers.memory_bytes(ttg.backend)

    def at_end() -> dict[str, Any]:
        used = brokers.memory_bytes(ttg.backend)
        return {
            "memory_mb": used / 2**20 if used is not None else None,
            "memory_idle_mb": idle / 2**20 if idle is not None else None,
            "store_mb": folder_mb(folder),
        }

    try:
        run = f"store-{store}-{uuid.uuid4().hex[:6]}"
        return timed_sweep(
            ttg, run, params, chunk, compute=compute,
            check_sum=compute == bench_workload.COMPUTE, after_complete=at_end,
        )  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure(backend: str, brokers: Brokers, reps: int, blob: int, big: int) -> dict[str, Any]:
    ttg = TTG(backend, brokers.url(backend))
    out: dict[str, Any] = {f"{w}_{s}": [] for w in ("blob", "big") for s in STORES}
    with tempfile.TemporaryDirectory(prefix="ttg-bench-store-") as d:
        for rep in range(reps):
            for store in STORES:  # interleaved: load drifts hit both alike
                say(f"[{backend}] {count(blob)} results of 200 kB, {store}, rep {rep + 1}")
                out[f"blob_{store}"].append(
                    sweep(
                        ttg,
                        brokers,
                        store,
                        Path(d),
                        params=blob,
                        chunk=10,
                        compute=bench_workload.BLOB,
                    )
                )
                say(f"[{backend}] {count(big)} params in chunks of 100, {store}, rep {rep + 1}")
                out[f"big_{store}"].append(
                    sweep(
                        ttg,
                        brokers,
                        store,
                        Path(d),
                        params=big,
                        chunk=100,
                        compute=bench_workload.COMPUTE,
                    )
                )
    return out


def rows(results: dict[str, dict[str, Any]]) -> list[rp.Row]:
    """(figure, [broker, file], file / broker) per figure and backend."""

    def med(backend: str, key: str, field: str) -> float | None:
        return median([r.get(field) for r in results[backend][key]])

    def ratio(a: float | None, b: float | None) -> str:
        return f"**{a / b:.2f}x**" if a and b else "n/a"

    def verified(backend: str, key: str) -> bool:
        return all(r.get("verified") for r in results[backend][key])

    out: list[rp.Row] = []
    for backend in results:
        mem = {s: med(backend, f"blob_{s}", "memory_mb") for s in STORES}
        idle = {s: med(backend, f"blob_{s}", "memory_idle_mb") for s in STORES}
        wall = {s: med(backend, f"blob_{s}", "wall_s") for s in STORES}
        disk = med(backend, "blob_file", "store_mb")
        big = {s: med(backend, f"big_{s}", "wall_s") for s in STORES}
        rate = {s: med(backend, f"big_{s}", "params_s") for s in STORES}
        ok = all(verified(backend, f"{w}_{s}") for w in ("blob", "big") for s in STORES)
        name = f"{backend}{'' if ok else ' (NOT VERIFIED)'}"
        memory = [f"{mb(mem[s])} ({mb(idle[s])})" for s in STORES]
        speed = [f"{secs(big[s])} ({num(rate[s])})" for s in STORES]
        out += [
            (f"{name}: 200 kB results, broker MB at the end (idle)", memory,
             ratio(mem["file"], mem["broker"])),
            (f"{name}: 200 kB results, wall s (file: MB of Parquet)",
             [secs(wall["broker"]), f"{secs(wall['file'])} ({mb(disk)})"],
             ratio(wall["file"], wall["broker"])),
            (f"{name}: params in chunks of 100, wall s (params/s)", speed,
             ratio(big["file"], big["broker"])),
        ]  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    p.add_argument("--backend", choices=("redis", "rabbitmq"), action="append")
    p.add_argument("--json", help="also write the figures here (default bench/out/store-*.json)")
    args = p.parse_args()
    reps, blob, big = (1, 400, 100_000) if args.quick else (3, 2_000, 1_000_000)
    backends = args.backend or ["redis", *(["rabbitmq"] if rabbitmq_available() else [])]
    load_start = rp.note_load("start")
    brokers = Brokers()
    results: dict[str, dict[str, Any]] = {}
    try:
        for backend in backends:
            results[backend] = measure(backend, brokers, reps, blob, big)
        versions = brokers.versions()
    finally:
        brokers.stop()
    load_end = rp.note_load("end")
    method = [f"{count(blob)} results of 200 kB (chunks of 10) and {count(big)} params of "
              "bench_workload:knuth (chunks of 100),",
              f"results in the broker and in a file:// store, interleaved, median of {reps}, "
              "2 workers, seeding included, every run verified"]  # fmt: skip
    lines = rp.header("TTG results store", info=rp.machine(), versions=versions,
                      load_start=load_start, load_end=load_end, method=method)  # fmt: skip
    print("\n".join(lines))
    print(rp.table(("broker", "file://"), rows(results), last="file / broker"))
    path = rp.write_json(
        "store", {"results": results, "load": [load_start, load_end], "reps": reps}, args.json
    )
    say(f"figures in {path}")
    ok = all(r.get("verified") for b in results.values() for runs in b.values() for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
