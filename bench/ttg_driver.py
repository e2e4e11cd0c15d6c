"""Drive TTG the way a user does: its CLI and its worker processes, nothing internal.

Every TTG action here is a real ``python -m ttg ...`` process (seed, status,
verify, results, delete, worker), so the benchmark keeps measuring the same
thing while the internals behind the CLI are rewritten (docs/contract.md is
the interface).

Completion is observed by ONE long-lived ``ttg status --run R --watch --json
--interval 0.1`` per timed run, read line by line: it is what a user watches,
it costs one interpreter start per run (not one per poll), and its cost,
whatever the backend makes ``status`` cost, is charged to TTG's figures.
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import bench_workload

import ttg
from ttg.processes import LocalWorkers

BENCH_DIR = Path(__file__).resolve().parent
#: Seconds between status lines of the poller of a timed run (the Dramatiq poller uses the same).
POLL_INTERVAL = 0.1
#: How long the poller may find no run (seeding has not declared it yet) before giving up.
RUN_APPEAR_TIMEOUT = 30.0


#: Starts a poller process whose stdout is a text pipe, its stderr to the given file.
Launch = Callable[[IO[bytes]], "subprocess.Popen[str]"]


@dataclass
class Proc:
    """A finished child process: exit code, wall seconds, peak RSS and its output."""

    code: int
    seconds: float
    max_rss_mb: float
    out: str
    err: str


def wait_rusage(proc: subprocess.Popen[Any], timeout: float | None = None) -> tuple[int, float]:
    """Wait for ``proc``; return (exit code, its own peak RSS in MB) from wait4.

    ``wait4`` gives the resource usage of exactly that child, unlike
    ``RUSAGE_CHILDREN``, whose ru_maxrss is the largest of all children so far.
    """
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer:
        timer.start()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
    finally:
        if timer:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # Linux reports KiB


class TTG:
    """One backend's TTG, as seen from the command line."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        # Bytecode for our sources, fresh, as a pip install leaves it (peers are pip
        # installed): where PYTHONDONTWRITEBYTECODE is set, each process would compile them.
        for d in (BENCH_DIR, Path(ttg.__file__).parent):
            compileall.compile_dir(d, quiet=2)
        path = os.environ.get("PYTHONPATH")
        self.env = {
            **os.environ,
            "TTG_BACKEND": backend,
            "TTG_BROKER_URL": url,
            "TTG_METRICS_PORT": "0",
            # The workload module must be allowed, or seed refuses it (exit 2).
            "TTG_COMPUTE_ALLOW": f"ttg.compute,{bench_workload.MODULE}",
            # So workers (and seed's check) import bench_workload.
            "PYTHONPATH": str(BENCH_DIR) + (os.pathsep + path if path else ""),
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ttg", *args]

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(*args), env=self.env, **kwargs)

    def run(self, *args: str, timeout: float = 1800) -> Proc:
        """Run ``ttg ARGS`` to the end; its exit code, wall time and peak RSS."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            proc = self.popen(*args, stdout=out, stderr=err)
            code, rss = wait_rusage(proc, timeout)
            seconds = time.perf_counter() - t0
            out.seek(0)
            err.seek(0)
            return Proc(code, seconds, rss, out.read().decode(), err.read().decode())

    def check(self, *args: str, timeout: float = 1800) -> Proc:
        p = self.run(*args, timeout=timeout)
        if p.code != 0:
            raise RuntimeError(f"ttg {' '.join(args)} exited {p.code}: {p.err.strip()[-500:]}")
        return p

    def workers(self, count: int, log_dir: Path | None = None) -> LocalWorkers:
        """``count`` real ``ttg worker`` processes (named, so one can be signalled)."""
        pool = LocalWorkers(self.env, log_dir=log_dir, prefix="bench")
        pool.start(count)
        return pool

    def watch(self, run: str, interval: float = POLL_INTERVAL) -> StatusWatch:
        """Start ``ttg status --run RUN --watch --json --interval I``, read in a thread."""
        argv = ["status", "--run", run, "--watch", "--json", "--interval", str(interval)]

        def launch(err: IO[bytes]) -> subprocess.Popen[str]:
            return self.popen(*argv, stdout=subprocess.PIPE, stderr=err, text=True)

        return StatusWatch(launch, run).start()

    def seed_args(self, run: str, params: int, chunk: int, compute: str, work_ms: int) -> list[str]:
        args = ["seed", "--run", run, "--params", str(params), "--chunk-size", str(chunk)]
        args += ["--compute", compute, "--json"]
        return args + (["--work-ms", str(work_ms)] if work_ms else [])


class StatusWatch:
    """One long-lived poller process printing a JSON line per poll, read line by line in a thread.

    For TTG it is ``ttg status --watch --json``; a peer's poller prints lines
    with the same fields (``done``, ``complete``). Started right after the
    seed process, it may find no run yet (seeding has not declared it): then,
    and only then, it is started again. Each line is timestamped when read; the
    line saying ``complete`` ends the watch.
    """

    def __init__(self, launch: Launch, run: str) -> None:
        self.launch, self.run = launch, run
        #: (time read, chunks finished) per status line.
        self.samples: list[tuple[float, int]] = []
        self.latest: dict[str, Any] | None = None
        self.complete_at: float | None = None
        self.launches = 0
        self.error: str | None = None
        self._done = threading.Event()
        self._stopping = False
        self._proc: subprocess.Popen[Any] | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> StatusWatch:
        self._thread.start()
        return self

    def _loop(self) -> None:
        deadline = time.monotonic() + RUN_APPEAR_TIMEOUT
        try:
            while not self._stopping:
                got = self._follow_one()
                if self.complete_at is not None or self._stopping or self.error:
                    return
                if got or time.monotonic() > deadline:
                    self.error = self.error or f"poller of {self.run} ended before complete"
                    return
                time.sleep(0.02)
        finally:
            self._done.set()

    def _follow_one(self) -> bool:
        """Run one status process to its end; True if it printed a line."""
        with tempfile.TemporaryFile() as err:
            self._proc = self.launch(err)
            self.launches += 1
            got = False
            stdout: IO[str] = self._proc.stdout  # type: ignore[assignment]
            for line in stdout:
                t = time.perf_counter()
                try:
                    s = json.loads(line)
                except ValueError:
                    continue
                got = True
                self.latest = s
                self.samples.append((t, int(s["done"]) + int(s.get("dead") or 0)))
                if s["complete"]:
                    self.complete_at = t
            code = self._proc.wait()
            if got and self.complete_at is None and not self._stopping:
                err.seek(0)
                self.error = f"poller exited {code}: {err.read().decode().strip()[-300:]}"
            return got

    def status(self) -> dict[str, Any]:
        """The latest status line (waits for the first)."""
        while self.latest is None:
            if self._done.is_set():
                raise RuntimeError(self.error or "status watch ended with no line")
            time.sleep(0.005)
        return self.latest

    def wait(self, timeout: float) -> float:
        """perf_counter time of the first line saying the run is complete."""
        if not self._done.wait(timeout):
            self.stop()
            raise TimeoutError(f"run {self.run} not complete after {timeout:.0f} s")
        if self.complete_at is None:
            raise RuntimeError(self.error or f"run {self.run}: status watch ended early")
        return self.complete_at

    def stop(self) -> None:
        self._stopping = True
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
        self._thread.join(timeout=10)


def steady_rate(samples: list[tuple[float, int]], total: int) -> float | None:
    """Chunks/s between the moments 10% and 90% of the run's chunks were finished.

    Crossing times are interpolated between the two status lines around each;
    None when the run was too short for two distinct crossings.
    """

    def crossing(target: float) -> float | None:
        prev: tuple[float, int] | None = None
        for t, n in samples:
            if n >= target:
                if prev is None or n == prev[1]:
                    return t
                return prev[0] + (t - prev[0]) * (target - prev[1]) / (n - prev[1])
            prev = (t, n)
        return None

    lo, hi = crossing(0.1 * total), crossing(0.9 * total)
    if lo is None or hi is None or hi <= lo:
        return None
    return 0.8 * total / (hi - lo)


def results_sum(path: Path) -> tuple[int, int]:
    """(rows, sum of every result) of a ``ttg results --format jsonl`` file.

    Rows carry either a chunk's result list or one parameter's result.
    """
    rows = total = 0
    with path.open() as f:
        for line in f:
            rows += 1
            r = json.loads(line).get("result")
            total += sum(r) if isinstance(r, list) else int(r or 0)
    return rows, total


def warm_up(ttg: TTG, compute: str) -> None:
    """Seed and finish a small run of another id: workers connected, compute imported, idle."""
    run = f"warm-{uuid.uuid4().hex[:8]}"
    ttg.check(*ttg.seed_args(run, 200, 10, compute, 0))
    ttg.watch(run).wait(120)
    ttg.check("delete", "--run", run, "--json")


def timed_sweep(
    ttg: TTG,
    run: str,
    params: int,
    chunk: int,
    *,
    workers: int = 2,
    compute: str = bench_workload.COMPUTE,
    check_sum: bool = True,
    during: Callable[[threading.Event], None] | None = None,
    after_complete: Callable[[], dict[str, Any]] | None = None,
    timeout: float = 3600,
) -> dict[str, Any]:
    """One end-to-end run: idle workers, clock, ``ttg seed``, every result recorded.

    ``during(finished)`` runs in a thread from the seed's start until the run
    is complete (``finished`` is set then). Then, off the clock:
    ``after_complete`` (e.g. broker memory), ``ttg verify`` (must exit 0),
    ``ttg results`` (timed, and summed against the workload's total when
    ``check_sum``), ``ttg delete``.

    Returns:
        wall_s (seed start to every result recorded, seeding included), seed_s,
        steady chunks/s and params/s, verification and the off-clock timings.
    """
    total_chunks = -(-params // chunk)
    out: dict[str, Any] = {"params": params, "chunk": chunk, "chunks": total_chunks}
    out["load_1min_at_start"] = os.getloadavg()[0]
    try:
        out.update(
            _clocked(
                ttg,
                run,
                params=params,
                chunk=chunk,
                workers=workers,
                compute=compute,
                during=during,
                timeout=timeout,
            )
        )
        if after_complete:
            out.update(after_complete())
        out.update(check_run(ttg, run, params if check_sum else None))
    finally:
        # Nothing of a timed run may stay live: the next run's workers would serve it.
        ttg.run("delete", "--run", run, "--json")
    return out


def _clocked(
    ttg: TTG,
    run: str,
    *,
    params: int,
    chunk: int,
    workers: int,
    compute: str,
    during: Callable[[threading.Event], None] | None,
    timeout: float,
) -> dict[str, Any]:
    total_chunks = -(-params // chunk)
    pool = ttg.workers(workers)
    finished = threading.Event()
    prober = threading.Thread(target=during, args=(finished,), daemon=True) if during else None
    watch: StatusWatch | None = None
    try:
        warm_up(ttg, compute)
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            seed = ttg.popen(
                *ttg.seed_args(run, params, chunk, compute, 0),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            watch = ttg.watch(run)
            if prober:
                prober.start()
            code, seed_rss = wait_rusage(seed, timeout)
            t_seed = time.perf_counter()
            if code != 0:
                err.seek(0)
                raise RuntimeError(f"ttg seed exited {code}: {err.read().decode().strip()[-500:]}")
        t_end = max(watch.wait(timeout), t_seed)
    finally:
        finished.set()
        if watch:
            watch.stop()
        if prober and prober.is_alive():
            prober.join()
        codes = pool.stop()
    wall = t_end - t0
    rate = steady_rate(watch.samples, total_chunks)
    return {
        "wall_s": wall,
        "seed_s": t_seed - t0,
        "seed_rss_mb": seed_rss,
        "params_s": params / wall,
        "chunks_s": total_chunks / wall,
        "steady_chunks_s": rate,
        "steady_params_s": rate * chunk if rate else None,
        "status_lines": len(watch.samples),
        "status_launches": watch.launches,
        "worker_exit_codes": sorted(codes.values()),
    }


def check_run(ttg: TTG, run: str, params_for_sum: int | None) -> dict[str, Any]:
    """``ttg verify`` and ``ttg results``, timed, with peak RSS; ``verified`` says if all held."""
    v = ttg.run("verify", "--run", run, "--json")
    try:
        report = json.loads(v.out)
    except ValueError:
        report = {}
    problems = list(report.get("problems") or [])
    if v.code != 0:
        problems.append(f"ttg verify exited {v.code}: {v.err.strip()[-300:]}")
    with tempfile.TemporaryDirectory(prefix="ttg-bench-") as d:
        path = Path(d) / "results.jsonl"
        r = ttg.run("results", "--run", run, "--format", "jsonl", "--output", str(path))
        if r.code != 0:
            problems.append(f"ttg results exited {r.code}: {r.err.strip()[-300:]}")
            rows = got = 0
        else:
            rows, got = results_sum(path) if params_for_sum else (_count_lines(path), 0)
    if params_for_sum is not None and r.code == 0:
        want = bench_workload.total(params_for_sum)
        if got != want:
            problems.append(f"results add up to {got}, the workload's total is {want}")
    return {
        "verified": v.code == 0 and report.get("ok") is True and not problems,
        "problems": problems,
        "verify_s": v.seconds,
        "verify_rss_mb": v.max_rss_mb,
        "results_s": r.seconds,
        "results_rss_mb": r.max_rss_mb,
        "results_rows": rows,
    }


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)
