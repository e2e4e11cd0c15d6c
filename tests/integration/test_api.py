"""The Python API end to end: ttg.Sweep against real brokers and real worker processes.

Both backends: a grid with a linspace axis, a table from a CSV file, results as a
DataFrame, verify, retry after a fix, and attach from a second process.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import ttg
from tests.conftest import BackendEnv
from tests.helpers import child_env
from ttg.endpoint import Endpoint
from ttg.errors import UsageError
from ttg.processes import LocalWorkers

pytestmark = pytest.mark.integration


def endpoint(backend: BackendEnv) -> Endpoint:
    return Endpoint(backend.name, backend.url, tls=backend.tls)


def test_api_grid_with_linspace_results_verify_and_retry(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    workers.start(2, TTG_TEST_BROKEN=str(broken))
    space = ttg.grid(omega=[0.5, 1, 2], zeta=ttg.linspace(0, 1, 5))
    sweep = ttg.Sweep(
        run_id, compute="tests.computes:damped", space=space, chunk_size=4,
        broker=endpoint(backend),
    )  # fmt: skip
    assert sweep.spec.total_params == 15 and sweep.spec.total_chunks == 4

    status = sweep.run(timeout=120)
    assert status.complete and status.param_errors == 3 and status.done_params == 12

    df = sweep.results()
    assert list(df["index"]) == list(range(15))
    assert list(df.columns[:3]) == ["index", "omega", "zeta"]
    assert list(df["zeta"][:5]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (df["status"] == "error").sum() == 3
    failing = df[df["status"] == "error"]
    assert set(failing["zeta"]) == {0.0} and failing["error"].str.contains("ZeroDivision").all()
    assert math.isclose(df.loc[df["index"] == 1, "result.amplitude"].item(), 0.5 / 0.25)

    report = sweep.verify()
    assert report.verified and not report.ok and report.failed_params == 3
    (group,) = report.error_groups
    assert group.type == "ZeroDivisionError" and group.params == 3 and group.chunks == 3
    assert group.example is not None and group.example.param == {"omega": 0.5, "zeta": 0.0}
    assert sweep.verify(allow_failed=True).ok

    broken.unlink()  # the fix
    retried = sweep.retry()
    assert retried.errors == 3 and retried.dead == 0
    assert sweep.wait(timeout=120).complete
    assert sweep.verify().ok
    assert (sweep.results()["status"] == "ok").all()


def test_api_table_from_csv_keeps_types(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    csv = tmp_path / "configs.csv"
    csv.write_text('name,layers,lr\nsmall,2,0.1\nwide,8,0.01\n"deep, narrow",32,0.001\n')
    workers.start(1)
    with ttg.Sweep(
        run_id, compute="tests.computes:config_cost", space=ttg.table(csv), chunk_size=2,
        broker=endpoint(backend),
    ) as sweep:  # fmt: skip
        assert sweep.run(timeout=120).complete
        df = sweep.results()
        assert sweep.verify().ok
    assert list(df["name"]) == ["small", "wide", "deep, narrow"]
    assert list(df["layers"]) == [2, 8, 32]
    assert list(df["result"]) == pytest.approx([0.2, 0.08, 0.032])


def test_api_attach_from_a_second_process(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    sweep = ttg.Sweep(run_id, space=ttg.arange(1000), chunk_size=100, broker=endpoint(backend))
    sweep.seed()
    script = (
        "import json, sys, ttg\n"
        f"s = ttg.Sweep.attach({run_id!r}, broker={backend.url!r})\n"
        "s.wait(timeout=120)\n"
        "print(json.dumps({'params': s.spec.total_params, 'ok': s.verify().ok,"
        " 'rows': sum(1 for _ in s.rows())}))\n"
    )
    workers.start(2)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env({k: v for k, v in backend.env.items() if k != "TTG_BROKER_URL"}),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"params": 1000, "ok": True, "rows": 1000}
    assert sweep.status().complete


def test_api_attach_to_an_unknown_run_is_a_usage_error(backend: BackendEnv) -> None:
    with pytest.raises(UsageError, match="no run"):
        ttg.Sweep.attach("no-such-run", broker=endpoint(backend))


def test_cli_space_file_aggregate_field_and_verify_by_value(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    """The CLI is a door over the same Sweep: a table from --space-file, the same answers."""
    from tests.helpers import ttg as cli  # noqa: PLC0415

    table = tmp_path / "t.jsonl"
    table.write_text("".join(f'{{"omega": {o}, "zeta": {z}}}\n' for o in (1, 2) for z in (0, 1)))
    env = backend.env
    seeded = cli(
        "seed", "--run", run_id, "--space-file", str(table), "--chunk-size", "1",
        "--compute", "tests.computes:damped", "--json", env=env, check=True,
    )  # fmt: skip
    assert json.loads(seeded.stdout)["total_params"] == 4
    workers.start(1, TTG_TEST_BROKEN=str(table))  # the file exists: zeta 0 raises
    sweep = ttg.Sweep.attach(run_id, broker=endpoint(backend))
    sweep.wait(timeout=120)
    agg = cli("results", "--run", run_id, "--aggregate", "sum", "--field", "omega2", env=env)
    assert json.loads(agg.stdout) == {
        "aggregate": "sum", "field": "omega2", "value": 5, "count": 2, "run": run_id,
    }  # fmt: skip
    text = cli("verify", "--run", run_id, env=env)
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert lines[0] == (
        "NOT VERIFIED: exactly once: holds; 2 parameters failed (2 raised, 0 in dead chunks) "
        "(--allow-failed accepts them)"
    )
    assert (
        "  2 parameters failed in 2 chunks: ZeroDivisionError: division by zero  "
        "e.g. parameter 0 (omega=1, zeta=0)"
    ) in lines
    csv_out = cli("results", "--run", run_id, "--format", "csv", "--traceback", env=env)
    assert csv_out.stdout.splitlines()[0].split(",")[:8] == [
        "index", "omega", "zeta", "result.amplitude", "result.omega2", "status", "error",
        "traceback",
    ]  # fmt: skip
    # The worker kept each failing parameter's innermost frames, the user's own line included.
    failed = [r for r in csv.DictReader(io.StringIO(csv_out.stdout)) if r["status"] == "error"]
    assert len(failed) == 2
    for row in failed:
        assert "tests/computes.py:" in row["traceback"], row["traceback"]
        assert "in damped" in row["traceback"]
        assert row["traceback"].endswith("ZeroDivisionError: division by zero")
    # The same report through both doors (the time and the live worker count aside).
    same = {"ts": 0, "workers": 0}
    assert (
        sweep.verify().to_dict() | same
        == json.loads(cli("verify", "--run", run_id, "--json", env=env).stdout) | same
    )
