"""The example compute in real `ttg worker` processes on both brokers: the guide, end to end.

From "I have a function" to "I have a CSV of results by parameter", and the
`ttg retry` after a bug fix, as examples/README.md tells a newcomer to do it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests import scenarios
from tests.conftest import BackendEnv
from tests.examples.sweep import ALLOW, COMPUTE, EXAMPLE, GRID
from tests.fault.conftest import LocalHarness, status
from tests.helpers import ROOT, ttg, ttg_json
from ttg.compute import PermanentError
from ttg.processes import LocalWorkers
from ttg.space import parse

pytestmark = pytest.mark.integration

#: The bug the retry test ships first: exact_position without its critical-damping case,
#: so zeta = 1 divides by the zero gap between the characteristic roots.
CRITICAL_CASE = """\
    if abs(zeta - 1.0) <= CRITICAL_BAND:
        # Critical damping: the two characteristic roots coincide.
        return (1.0 + omega * t) * math.exp(-omega * t)
"""
#: A grid with critical damping (zeta = 1) in every other chunk of two, nothing invalid.
RETRY_GRID = "grid:omega=0.5,1,2,4;zeta=0,0.2,1,2"


def expected(space_text: str) -> list[dict[str, Any] | str]:
    """What the example computes for each grid point, in index order: a result, or the error."""
    from sweep_sim.oscillator import simulate  # noqa: PLC0415 - the package under test

    space = parse(space_text)
    out: list[dict[str, Any] | str] = []
    for point in space.values(0, space.size):
        try:
            out.append(simulate(point))
        except PermanentError as e:
            out.append(str(e))
    return out


def csv_rows(backend: BackendEnv, run: str) -> tuple[list[str], list[dict[str, str]]]:
    """``ttg results --format csv``: its header and rows."""
    text = ttg("results", "--run", run, "--format", "csv", env=backend.env, check=True).stdout
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def jsonl_rows(backend: BackendEnv, run: str) -> list[dict[str, Any]]:
    out = ttg("results", "--run", run, env=backend.env, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def cell(value: Any) -> str:
    """A result value as the CSV shows it."""
    return "" if value is None else str(value)


def test_guide_grid_sweep_exports_one_csv_row_per_parameter_with_invalid_points_as_errors(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    env = {**backend.env, "TTG_COMPUTE_ALLOW": ALLOW}
    seeded = ttg_json(
        "seed", "--run", run_id, "--space", GRID, "--chunk-size", "4", "--compute", COMPUTE,
        env=env,
    )  # fmt: skip
    assert seeded["_exit"] == 0 and seeded["total_params"] == 32, seeded
    workers.start(2, TTG_COMPUTE_ALLOW=ALLOW)

    scenarios.wait_complete(LocalHarness(backend, workers), run_id, timeout=120)

    want = expected(GRID)
    invalid = [i for i, w in enumerate(want) if isinstance(w, str)]
    assert len(invalid) == 2, "the guide promises two invalid combinations"
    report = status(backend, run_id)
    assert report["state"] == "complete-with-failures", report
    assert report["param_errors"] == 2 and report["dead"] == 0, report
    assert any("too coarse" in e for e in report["recent_errors"]), report
    strict = ttg_json("verify", "--run", run_id, env=backend.env)
    assert strict["_exit"] == 1 and not strict["ok"] and strict["verified"], strict
    allowed = ttg_json("verify", "--run", run_id, "--allow-failed", env=backend.env)
    assert allowed["_exit"] == 0 and allowed["ok"] and allowed["problems"] == [], allowed

    header, rows = csv_rows(backend, run_id)
    keys = ["regime", "x_end", "energy_ratio", "settle_time", "max_error", "steps"]
    assert header == [
        "index", "omega", "zeta", "dt", *(f"result.{k}" for k in keys),
        "status", "error", "chunk", "worker", "attempt", "finished_at",
    ]  # fmt: skip
    assert [int(r["index"]) for r in rows] == list(range(32))
    space = parse(GRID)
    for row, point, want_row in zip(rows, space.values(0, 32), want, strict=True):
        assert {a: float(row[a]) for a in point} == point, row
        if isinstance(want_row, str):
            assert row["status"] == "error", row
            assert "PermanentError" in row["error"] and want_row in row["error"], row
            assert all(row[f"result.{k}"] == "" for k in keys), row
            assert row["attempt"] == "1", "a PermanentError is never retried"
        else:
            assert row["status"] == "ok" and row["error"] == "", row
            # Floats go through JSON and CSV as their shortest repr: exact.
            got = {k: row[f"result.{k}"] for k in keys}
            assert got == {k: cell(want_row[k]) for k in keys}, row


def test_retry_after_a_bug_fix_reruns_only_the_failed_chunks_and_keeps_the_good_results(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    # Version 1 of the package, with the bug, first on the path of the seeder and its workers.
    buggy = tmp_path / "buggy"
    shutil.copytree(
        EXAMPLE / "src" / "sweep_sim",
        buggy / "sweep_sim",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    module = buggy / "sweep_sim" / "oscillator.py"
    source = module.read_text()
    assert source.count(CRITICAL_CASE) == 1, "the example's critical-damping case moved"
    module.write_text(source.replace(CRITICAL_CASE, ""))
    v1 = {"PYTHONPATH": f"{buggy}{os.pathsep}{ROOT}", "TTG_COMPUTE_ALLOW": ALLOW}
    seeded = ttg_json(
        "seed", "--run", run_id, "--space", RETRY_GRID, "--chunk-size", "2", "--compute", COMPUTE,
        env={**backend.env, **v1},
    )  # fmt: skip
    assert seeded["_exit"] == 0, seeded
    first = workers.start(2, **v1)
    harness = LocalHarness(backend, workers)
    scenarios.wait_complete(harness, run_id, timeout=120)

    report = status(backend, run_id)
    assert report["state"] == "complete-with-failures", report
    # zeta = 1 at indices 2, 6, 10, 14: chunks 1, 3, 5, 7 of the eight.
    assert (report["done"], report["errors"], report["param_errors"]) == (4, 4, 4), report
    assert ttg_json("verify", "--run", run_id, env=backend.env)["_exit"] == 1
    before = jsonl_rows(backend, run_id)
    failed = {r["index"] for r in before if r["status"] != "ok"}
    assert failed == {2, 6, 10, 14}, before
    assert all("ZeroDivisionError" in r["error"] for r in before if r["status"] != "ok")
    kept = [r for r in before if r["chunk"] % 2 == 0]

    # The fix is deployed: version 1's workers finish and leave, the fixed package serves.
    for name in first:
        workers.kill(name, signal.SIGTERM)
    assert [workers.wait(name, timeout=30) for name in first] == [0, 0]
    retried = ttg_json("retry", "--run", run_id, "--errors", env=backend.env)
    assert (retried["_exit"], retried["errors"], retried["dead"]) == (0, 4, 0), retried
    workers.start(2, TTG_COMPUTE_ALLOW=ALLOW)
    scenarios.wait_complete(harness, run_id, timeout=120)

    report = scenarios.assert_verified(harness, run_id)
    assert report["duplicates"] == 0, report
    after = jsonl_rows(backend, run_id)
    assert [r for r in after if r["chunk"] % 2 == 0] == kept, "good results are kept as they were"
    for r in after:
        if r["chunk"] % 2:
            assert (r["status"], r["attempt"]) == ("ok", 2), r
            assert r["worker"] not in first, r
    assert [r["result"] for r in after] == expected(RETRY_GRID)
