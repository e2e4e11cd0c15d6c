"""The program example (examples/program-sweep): a shell/awk simulator swept with ``--exec``.

As examples/README.md section "A program instead of a function" tells it.
"""

from __future__ import annotations

import csv
import io

import pytest

from tests.conftest import BackendEnv
from tests.helpers import ROOT, eventually, ttg, ttg_json
from ttg.processes import LocalWorkers

pytestmark = pytest.mark.integration

PROGRAM = ROOT / "examples" / "program-sweep" / "logistic.sh"


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_the_guide_s_program_sweep_gives_a_csv_by_parameter(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    allow = f"exec:{PROGRAM}"
    env = {**backend.env, "TTG_COMPUTE_ALLOW": allow}
    seeded = ttg_json(
        "seed", "--run", run_id, "--space", "grid:r=2.5,3.2,3.9,5;x0=0.5", "--chunk-size", "2",
        "--exec", f"{PROGRAM} {{r}} {{x0}}", "--param-timeout", "30", env=env,
    )  # fmt: skip
    assert seeded["_exit"] == 0, seeded
    workers.start(1, TTG_COMPUTE_ALLOW=allow)
    eventually(lambda: ttg_json("status", "--run", run_id, env=env)["complete"], timeout=60)

    out = ttg("results", "--run", run_id, "--format", "csv", env=env, check=True).stdout
    rows = {r["r"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows["2.5"]["result.cycle"] == "1" and rows["3.2"]["result.cycle"] == "2", rows
    assert float(rows["3.9"]["result.lyapunov"]) > 0, rows["3.9"]
    assert rows["5"]["status"] == "error", rows["5"]
    assert rows["5"]["error"].endswith("exit 2: r must be a number from 0 to 4, got 5")
