"""Program computes (``ttg seed --exec``): results, failures, the allowlist, hostile values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BackendEnv
from tests.helpers import eventually, ttg, ttg_json
from ttg.processes import LocalWorkers

pytestmark = pytest.mark.integration

#: The program: prints how many arguments it got, the first, and its index (from the
#: environment); ``fail`` exits 3 after a line on stderr; ``json`` prints JSON.
SCRIPT = (
    'if [ "$1" = fail ]; then echo "first line" >&2; echo "bad input" >&2; exit 3; fi; '
    'if [ "$1" = json ]; then echo "{\\"x\\": 1}"; exit 0; fi; '
    'printf "%s|%s|%s|%s" "$#" "$1" "$TTG_INDEX" "$TTG_PARAM"'
)
COMMAND = f"sh -c '{SCRIPT}' sh {{s}} {{index}}"


def test_a_program_sweep_takes_each_value_as_one_argument(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    hostile = [
        "a b",
        'it\'s "quoted"',
        f"; touch {tmp_path}/semicolon",
        f"$(touch {tmp_path}/subshell)",
        f"`touch {tmp_path}/backtick`",
        "--help",
        "{index}",
        "fail",
        "json",
    ]
    table = tmp_path / "values.jsonl"
    table.write_text("".join(json.dumps({"s": s}) + "\n" for s in hostile))
    env = backend.env

    # Not allowed where it is seeded: exit 2, nothing seeded.
    refused = ttg("seed", "--run", run_id, "--space-file", str(table), "--chunk-size", "4",
                  "--exec", COMMAND, env=env)  # fmt: skip
    assert refused.returncode == 2 and "exec:sh" in refused.stderr, refused
    bad = ttg("seed", "--run", run_id, "--space-file", str(table), "--chunk-size", "4",
              "--exec", "sh {nope}", "--compute-allow", "exec:sh", env=env)  # fmt: skip
    assert bad.returncode == 2 and "unknown placeholder {nope}" in bad.stderr, bad

    seeded = ttg_json("seed", "--run", run_id, "--space-file", str(table), "--chunk-size", "4",
                      "--exec", COMMAND, "--compute-allow", "exec:sh", env=env)  # fmt: skip
    assert seeded["_exit"] == 0, seeded
    # A run whose program the workers do not allow (a tampered spec): dead, never started.
    other = f"{run_id}-x"
    ttg("seed", "--run", other, "--params", "3", "--chunk-size", "3",
        "--exec", f"touch {tmp_path}/tampered", "--compute-allow", "exec:touch",
        env=env, check=True)  # fmt: skip
    workers.start(1, TTG_COMPUTE_ALLOW="exec:sh")

    eventually(lambda: ttg_json("status", "--run", run_id, env=env)["complete"],
               timeout=60, what=f"{run_id} complete")  # fmt: skip

    out = ttg("results", "--run", run_id, env=env, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    for i, (row, s) in enumerate(zip(rows, hostile, strict=True)):
        if s == "fail":
            assert row["result"] is None and row["error"] == "exit 3: bad input", row
        elif s == "json":
            assert row["result"] == {"x": 1}, row
        else:
            # One argument, exactly the value; the index and the parameter in the environment.
            assert row["result"] == f"2|{s}|{i}|{json.dumps({'s': s})}", row
    assert not list(tmp_path.glob("semicolon*")) and not (tmp_path / "subshell").exists()
    assert not (tmp_path / "backtick").exists()
    assert ttg("verify", "--run", run_id, env=env).returncode == 1

    # The tampered run: declined by the only worker, never run, never dead-lettered.
    def declined() -> list[str]:
        report = ttg_json("status", "--run", other, env=env)
        assert report["dead"] == 0 and report["finished"] == 0, report
        return [w for w in report["warnings"] if "cannot run compute exec:touch" in w]

    (warning,) = eventually(declined, timeout=60, what="the tampered run declined")
    assert "not allowed" in warning and "wait for a worker that can" in warning, warning
    assert not (tmp_path / "tampered").exists()
