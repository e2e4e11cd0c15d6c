"""The CLI's promise on bad input: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import socket

import pytest

from tests.helpers import ttg
from ttg.processes import free_port


@pytest.mark.parametrize(
    "args",
    [
        ["seed", "--run", "Bad_Id", "--params", "10", "--chunk-size", "1"],
        ["seed", "--run", "ok", "--params", "-5", "--chunk-size", "1"],
        ["seed", "--run", "ok", "--params", "10", "--chunk-size", "0"],
        ["seed", "--run", "ok", "--chunk-size", "10"],
        ["seed", "--run", "ok", "--space", "range:1:1", "--chunk-size", "10"],
        ["seed", "--run", "ok", "--space", "range:0:10", "--params", "11", "--chunk-size", "10"],
        ["seed", "--run", "ok", "--params", "10", "--chunk-size", "1", "--backend", "kafka"],
        ["seed", "--run", "ok", "--params", "10", "--chunk-size", "1", "--compute", "nocolon"],
        ["results", "--run", "ok", "--format", "xml"],
        ["status"],
        ["frobnicate"],
        ["demo", "--kill-at", "1.5"],
        ["demo", "--workers", "1", "--kill-at", "0.3"],
        ["worker", "--lease-seconds", "-1"],
        ["worker", "--metrics-port", "70000"],
        ["worker", "--compute-allow", "not a module"],
        ["demo", "--lease-seconds", "-1"],
        ["status", "--run", "ok", "--watch", "--interval", "0"],
        ["status", "--run", "ok", "--watch", "--interval", "-1"],
        ["results", "--run", "ok", "--output", "/no/such/dir/results.csv"],
        ["results", "--run", "ok", "--output", "/"],
        ["report", "--run", "ok", "--output", "/no/such/dir/report.html"],
        ["verify", "--run", "ok", "--strict"],
        # A grid (or table) with the default compute, which is for integer ranges.
        ["seed", "--run", "ok", "--space", "grid:a=1,2", "--chunk-size", "1"],
        ["seed", "--run", "ok", "--space", "linspace:0:1:5", "--chunk-size", "1"],
        # A value that looks like a space keyword but does not parse.
        [
            "seed",
            "--run",
            "ok",
            "--space",
            "grid:r=range:2.5:4.0:x",
            "--chunk-size",
            "1",
            "--compute",
            "tests.computes:label",
        ],
        [
            "seed",
            "--run",
            "ok",
            "--space",
            "grid:z=linspace:0:1",
            "--chunk-size",
            "1",
            "--compute",
            "tests.computes:label",
        ],
        [
            "seed",
            "--run",
            "ok",
            "--space-file",
            "/no/such/file.csv",
            "--chunk-size",
            "1",
            "--compute",
            "tests.computes:label",
        ],
        [
            "seed",
            "--run",
            "ok",
            "--space",
            "range:0:4",
            "--space-file",
            "x.csv",
            "--chunk-size",
            "1",
        ],
        ["results", "--run", "ok", "--field", "y"],
        ["seed", "--run", "ok", "--params", "10", "--chunk-size", "1", "--compute", "os:system"],
        [
            "seed",
            "--run",
            "ok",
            "--params",
            "10",
            "--chunk-size",
            "1",
            "--compute",
            "ttg.compute:nope",
        ],
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str]) -> None:
    proc = ttg(*args, env={"TTG_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}, timeout=30)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ttg: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_broker_is_exit_3_without_traceback() -> None:
    proc = ttg(
        "status",
        "--run",
        "r1",
        env={"TTG_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"},
        timeout=30,
    )
    assert proc.returncode == 3, proc
    assert proc.stderr.startswith("ttg: error: ") and "Traceback" not in proc.stderr


def test_metrics_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - the worker listens on all interfaces too
        taken.listen()
        port = taken.getsockname()[1]
        proc = ttg(
            "worker",
            env={
                "TTG_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
                "TTG_METRICS_PORT": str(port),
            },
            timeout=30,
        )
    assert proc.returncode == 2, proc
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ttg: error: metrics port {port} is in use (TTG_METRICS_PORT)"
    ), proc.stderr


def test_version() -> None:
    proc = ttg("--version", env={})
    assert proc.returncode == 0 and proc.stdout.startswith("ttg ")


def test_refusals_name_what_is_wrong() -> None:
    env = {"TTG_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    grid = ttg("seed", "--run", "ok", "--space", "grid:a=1,2", "--chunk-size", "1", env=env)
    assert "a grid space needs a compute (--compute module:function)" in grid.stderr
    axis = ttg(
        "seed", "--run", "ok", "--space", "grid:r=range:2.5:4.0:x", "--chunk-size", "1",
        "--compute", "tests.computes:label", env=env,
    )  # fmt: skip
    assert axis.stderr.startswith("ttg: error: --space grid axis 'r': ")
    assert "'x' is not a number" in axis.stderr
