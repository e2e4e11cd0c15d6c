"""The benchmark still runs: ``bench/run.py --smoke --backend redis`` against a real redis-server.

A smoke test of the measuring instrument, not of speed: it asserts that the
table is printed and that every timed run was verified, never a figure.
``make bench-peers`` (Dramatiq) is not part of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_bench_quick_prints_the_table_with_every_run_verified(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--backend", "redis"]
    proc = subprocess.run(
        [*argv, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    for needle in ("TTG bench", "load average", "redis-server", "params/s", "redelivery"):
        assert needle in table, table
    verified = next(line for line in table.splitlines() if "every timed run verified" in line)
    assert " yes (" in verified, table
    figures = json.loads(out.read_text())
    runs = figures["timed_runs"]
    assert runs, figures
    assert all(ok for _backend, _figure, ok in runs), runs
    e2e = figures["results"]["redis"]["big"][0]
    assert e2e["verified"] and e2e["wall_s"] > 0 and e2e["seed_s"] > 0, e2e
