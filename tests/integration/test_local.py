"""``ttg.local()``: an embedded broker and local workers, for a script's own functions too.

Each test runs a real script in a real interpreter, as a person would: the
script's functions live in its ``__main__``, which the local workers import
through the generated module (see ``ttg.embedded``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import child_env

pytestmark = pytest.mark.integration

#: A script with its own compute, a helper and a constant it uses, and the sweep at top
#: level (no ``if __name__ == "__main__"``): the workers' import must stop at ttg.local().
SCRIPT = """
import json, sys
import ttg

OFFSET = 0.5


def shifted(x):
    return x + OFFSET


def simulate(p):
    if p["zeta"] == 0.25:
        raise ValueError(f"unstable at zeta={p['zeta']}")
    return {"y": shifted(p["omega"] * p["zeta"])}


space = ttg.grid(omega=[0.5, 1, 2], zeta=ttg.linspace(0, 1, 5))
with ttg.local(workers=2, backend=sys.argv[1]) as broker:
    sweep = ttg.Sweep("local-1", compute=simulate, space=space, chunk_size=4, broker=broker)
    sweep.run()
    df = sweep.results()
    report = sweep.verify(allow_failed=True)
    print(json.dumps({
        "compute": sweep.spec.compute,
        "ok": report.ok,
        "verified": report.verified,
        "statuses": df["status"].value_counts().to_dict(),
        "y": df.loc[df["index"] == 14, "result.y"].item(),
        "error": df.loc[df["status"] == "error", "error"].iloc[0],
        "groups": [(g.type, g.params) for g in report.error_groups],
    }))
"""

#: The issue's snippet, as a notebook cell would run it.
SNIPPET = """
import ttg
space = ttg.grid(omega=[0.5, 1, 2], zeta=ttg.linspace(0, 1, 5))
with ttg.local(workers=2) as broker:
    sweep = ttg.Sweep("osc-1", compute="sweep_sim.oscillator:simulate", space=space,
                      chunk_size=4, broker=broker)
    sweep.run(progress=True)
    df = sweep.results()
    assert sweep.verify().ok
print(len(df), sorted(df.columns)[:4])
"""


def run(script: str, tmp_path: Path, *args: str, timeout: float = 240) -> str:
    path = tmp_path / "explore.py"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        env=child_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
def test_local_runs_a_scripts_own_function(tmp_path: Path, backend: str) -> None:
    out = json.loads(run(SCRIPT, tmp_path, backend).splitlines()[-1])
    assert out["compute"].startswith("ttg_script_") and out["compute"].endswith(":simulate")
    assert out["verified"] and out["ok"]
    assert out["statuses"] == {"ok": 12, "error": 3}
    assert out["y"] == 2 * 1 + 0.5  # the script's helper and constant, in the workers
    assert out["error"] == "ValueError: unstable at zeta=0.25"
    assert out["groups"] == [["ValueError", 3]]


def test_local_runs_the_issue_snippet(tmp_path: Path) -> None:
    out = run(SNIPPET, tmp_path)
    assert out.strip().splitlines()[-1] == "15 ['attempt', 'chunk', 'error', 'finished_at']"


def test_a_scripts_own_function_is_refused_for_remote_workers(tmp_path: Path) -> None:
    path = tmp_path / "remote.py"
    path.write_text(
        "import ttg\n"
        "def f(x):\n    return x\n"
        "ttg.Sweep('r1', compute=f, space=10, broker='redis://127.0.0.1:1/0')\n"
    )
    proc = subprocess.run(
        [sys.executable, str(path)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert (
        "ttg.errors.UsageError: compute f is defined in __main__ (this script or notebook): "
        "workers elsewhere cannot import it" in proc.stderr
    )
