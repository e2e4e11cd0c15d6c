"""``ttg results`` and ``ttg report`` on a real broker: lossless, exact, atomic, to files only."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BackendEnv
from tests.helpers import child_env, eventually, ttg, ttg_json
from ttg.processes import LocalWorkers

pytestmark = pytest.mark.integration

#: Parameters of the big run: the float sum of their squares is off by 372,448.
BIG = 1_000_000


def finished(backend: BackendEnv, run: str) -> bool:
    return bool(ttg_json("verify", "--run", run, env=backend.env)["ok"])


def test_big_exports_are_exact_and_atomic(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    ttg("seed", "--run", run_id, "--params", str(BIG), "--chunk-size", "1000",
        env=backend.env, check=True)  # fmt: skip
    workers.start(2)
    eventually(lambda: finished(backend, run_id), timeout=300, what="the big run verified")

    summed = ttg("results", "--run", run_id, "--aggregate", "sum", env=backend.env, check=True)
    total = json.loads(summed.stdout)
    assert total["value"] == (BIG - 1) * BIG * (2 * BIG - 1) // 6, "exact, to the unit"
    assert total["count"] == BIG

    # SIGINT while the export is written: the file it would replace stays as it was.
    out = tmp_path / "out"  # tmp_path itself holds the workers' logs
    out.mkdir()
    target = out / "results.jsonl"
    target.write_text("yesterday's results\n")

    def writing() -> bool:
        tmp = [p for p in out.iterdir() if p.name.startswith(".results.jsonl.")]
        return bool(tmp) and tmp[0].stat().st_size > 0

    def interrupted_mid_write() -> subprocess.Popen[str] | None:
        """SIGINT while the export is being written, or None if it finished first.

        The export is stopped (SIGSTOP) once its temporary file has data; only if that
        file is still there, so the rename has not happened, does it get the SIGINT.
        A loaded machine may let the export finish between the look and the stop.
        """
        # A suite started in the background (``make test &``) runs with SIGINT ignored, and
        # children inherit that. A handled signal is reset to the default at exec: the
        # export gets Ctrl-C back, as from a terminal.
        before = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ttg", "results", "--run", run_id, "--output", str(target)],
                env=child_env(backend.env),
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            signal.signal(signal.SIGINT, before)
        eventually(lambda: writing() or proc.poll() is not None, timeout=120, interval=0.01,
                   what="the export under way")  # fmt: skip
        proc.send_signal(signal.SIGSTOP)
        if proc.poll() is None and writing():
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGCONT)
            return proc
        proc.send_signal(signal.SIGCONT)
        proc.communicate(timeout=60)
        target.write_text("yesterday's results\n")
        return None

    for _ in range(5):
        if (proc := interrupted_mid_write()) is not None:
            break
    else:
        pytest.fail("the export finished before a SIGINT could land 5 times")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == f"ttg: interrupted: {target} left as it was"
    assert target.read_text() == "yesterday's results\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl"]

    # Uninterrupted, it replaces the file whole.
    ttg("results", "--run", run_id, "--output", str(target), env=backend.env, check=True)
    with target.open() as f:
        assert sum(1 for _ in f) == BIG


def test_exports_refuse_what_is_not_a_regular_file(backend: BackendEnv, run_id: str,
                                                   tmp_path: Path) -> None:  # fmt: skip
    ttg("seed", "--run", run_id, "--params", "10", "--chunk-size", "5", env=backend.env,
        check=True)  # fmt: skip
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real = tmp_path / "real.html"
    real.write_text("keep")
    link = tmp_path / "link.html"
    link.symlink_to(real)
    for command in ("results", "report"):
        for target, kind in ((fifo, "a FIFO"), (link, "a symbolic link")):
            proc = ttg(command, "--run", run_id, "--output", str(target), env=backend.env,
                       timeout=60)  # fmt: skip
            assert proc.returncode == 2, (command, target, proc.stderr)
            assert f"is {kind}" in proc.stderr and proc.stderr.count("\n") == 1
    assert real.read_text() == "keep" and link.is_symlink() and fifo.exists()


def test_csv_of_results_that_change_shape_loses_nothing(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    ttg("seed", "--run", run_id, "--params", "3000", "--chunk-size", "100", "--compute",
        "tests.computes:dict_then_plain", env=backend.env, check=True)  # fmt: skip
    workers.start(1)
    eventually(lambda: finished(backend, run_id), timeout=120, what="the run verified")
    proc = ttg("results", "--run", run_id, "--format", "csv", env=backend.env, check=True)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 3000 and list(rows[0])[:3] == ["index", "value", "result"]
    for row in rows:
        assert row["status"] == "ok" and row["result"], row
        i = int(row["index"])
        if i < 1500:
            assert json.loads(row["result"]) == {"x": i, "tag": "=HYPERLINK(1)"}
    raw = ttg("results", "--run", run_id, "--format", "csv", "--chunks", env=backend.env)
    assert raw.returncode == 0 and "Traceback" not in raw.stderr
    started = time.monotonic()
    assert ttg("results", "--run", run_id, "--aggregate", "tests.computes_agg:boom",
               env=backend.env).returncode == 2  # fmt: skip
    assert time.monotonic() - started < 120
