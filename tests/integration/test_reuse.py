"""Sweeps that grow (issue 22): a run reuses an earlier run's verified results, on both backends.

Real brokers, real ``ttg`` commands and worker processes. The compute appends every
parameter it is called with to a file, so the test sees exactly what was computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BackendEnv
from tests.helpers import ttg
from ttg import space as spaces
from ttg.processes import LocalWorkers

pytestmark = pytest.mark.integration

COMPUTE = "tests.computes:counted"
NARROW = "grid:a=1,2,3;b=0.1,0.2,0.3"
#: The grid widened by one value of its fastest axis: new points between the old ones.
WIDE = "grid:a=1,2,3;b=0.1,0.2,0.3,0.4"


def seed(env: dict[str, str], run: str, space: str, *extra: str, chunk: int = 2) -> dict:  # type: ignore[type-arg]
    args = ["seed", "--run", run, "--space", space, "--chunk-size", str(chunk)]
    proc = ttg(*args, "--compute", COMPUTE, "--json", *extra, env=env, check=True)
    out: dict = json.loads(proc.stdout)  # type: ignore[type-arg]
    return out


def wait(env: dict[str, str], run: str) -> None:
    proc = ttg("status", "--run", run, "--watch", "--interval", "0.1", env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr


def calls(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_reuse_widened_grid_computes_only_the_new_points(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    env = backend.env
    log = tmp_path / "calls.jsonl"
    # A run nobody has computed yet is neither complete nor verified: refused, one line.
    unfinished = f"{run_id}-p"
    seed(env, unfinished, NARROW)
    refused = ttg("seed", "--run", f"{run_id}-x", "--space", WIDE, "--chunk-size", "3",
                  "--compute", COMPUTE, "--reuse", unfinished, env=env)  # fmt: skip
    assert refused.returncode == 2 and "not complete and verified" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    workers.start(1, TTG_TEST_CALLS=str(log))
    first = f"{run_id}-1"
    seed(env, first, NARROW)
    wait(env, unfinished)
    wait(env, first)
    assert len(calls(log)) == 18  # both runs of 9
    log.unlink()

    # Another chunk size than the reused run's: the match is by value.
    wide = f"{run_id}-2"
    seeded = seed(env, wide, WIDE, "--reuse", first, chunk=3)
    assert (seeded["total_params"], seeded["reused"], seeded["to_compute"]) == (12, 9, 3)
    wait(env, wide)
    assert sorted(c["b"] for c in calls(log)) == [0.4, 0.4, 0.4]  # type: ignore[type-var]
    verified = ttg("verify", "--run", wide, "--json", env=env)
    assert verified.returncode == 0 and json.loads(verified.stdout)["reused_params"] == 9

    rows = [json.loads(line) for line in
            ttg("results", "--run", wide, env=env, check=True).stdout.splitlines()]  # fmt: skip
    space = spaces.parse(WIDE)
    assert [r["index"] for r in rows] == list(range(12))  # index order, as for any run
    for r in rows:
        assert r["status"] == "ok" and r["value"] == space.value(r["index"])
        assert r["result"] == f"a={r['value']['a']},b={r['value']['b']}"
        assert r["source"] == ("computed" if r["value"]["b"] == 0.4 else f"reused:{first}")
    reused = [r for r in rows if r["source"] != "computed"]
    assert {r["worker"] for r in reused} == {r["worker"] for r in rows} - {"reused"}

    # Seeding again is a no-op; partial reuse takes what an unverified run has.
    assert seed(env, wide, WIDE, "--reuse", first, chunk=3)["already_seeded"]
    partial = seed(env, f"{run_id}-3", WIDE, "--reuse", unfinished, "--reuse-partial")
    assert partial["reused"] == 9

    # A bumped --compute-version is another compute: nothing reused, said once.
    bumped = ttg("seed", "--run", f"{run_id}-4", "--space", WIDE, "--chunk-size", "3",
                 "--compute", COMPUTE, "--compute-version", "2", "--reuse", first, "--json",
                 env=env)  # fmt: skip
    assert bumped.returncode == 0, bumped.stderr
    assert json.loads(bumped.stdout)["reused"] == 0 and "version=2" in bumped.stderr
    assert len(bumped.stderr.strip().splitlines()) == 1
    wait(env, f"{run_id}-3")
    wait(env, f"{run_id}-4")
    assert len(calls(log)) == 3 + 3 + 12
    assert seed(env, f"{run_id}-5", WIDE, "--reuse", first, "--reuse-any-version")["reused"] == 9

    # Before seeding: what would be reused, computed, and how long it should take.
    dry = ttg("seed", "--run", f"{run_id}-6", "--space", WIDE, "--chunk-size", "2",
              "--compute", COMPUTE, "--reuse", first, "--dry-run", "--workers", "2", "--json",
              env=env)  # fmt: skip
    plan = json.loads(dry.stdout)
    assert (plan["reused"], plan["to_compute"], plan["compute_chunks"]) == (9, 3, 2)
    assert plan["total_chunks"] == 2 + 5 and plan["param_seconds_p95"] is not None
    assert plan["estimate_s"] == pytest.approx(plan["param_seconds_median"] * 3 / 2, abs=1e-3)
    assert ttg("status", "--run", f"{run_id}-6", env=env).returncode == 2  # nothing seeded

    # Nothing new: the run is complete once seeded, no worker involved.
    same = seed(env, f"{run_id}-7", NARROW, "--reuse", first, chunk=4)
    assert (same["reused"], same["to_compute"], same["total_chunks"]) == (9, 0, 3)
    assert ttg("verify", "--run", f"{run_id}-7", env=env).returncode == 0

    # The source of reused results is not deleted by accident; --force says who loses what.
    kept = ttg("delete", "--run", first, env=env)
    assert kept.returncode == 2 and f"reused by {wide}, {run_id}-5, {run_id}-7" in kept.stderr
    gone = ttg("delete", "--run", first, "--force", "--json", env=env, check=True)
    assert json.loads(gone.stdout)["lost_provenance"] == [wide, f"{run_id}-5", f"{run_id}-7"]
    after = ttg("verify", "--run", wide, "--json", env=env)
    assert after.returncode == 0, after.stdout
    assert any(f"run {first}" in w and "is gone" in w for w in json.loads(after.stdout)["warnings"])
