"""The CLI's promise on bad input: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import re
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
        ["seed", "--run", "ok", "--params", str(2**63), "--chunk-size", "1"],
        ["seed", "--run", "ok", "--params", "9" * 5000, "--chunk-size", "1"],
        ["seed", "--run", "ok", "--params", "10", "--chunk-size", "1", "--work-ms", str(10**12)],
        ["seed", "--run", "ok", "--space", "range:0:99999999999999999999999", "--chunk-size", "1"],
        ["seed", "--run", "ok", "--params", "10**9", "--chunk-size", "1"],
        ["seed", "--run", "ok", "--params", str(10**9), "--chunk-size", "1"],
        # A grid (or table) with the default compute, which is for integer ranges.
        ["seed", "--run", "ok", "--space", "grid:a=1,2", "--chunk-size", "1"],
        ["seed", "--run", "ok", "--space", "linspace:0:1:5", "--chunk-size", "1"],
        [
            "seed",
            "--run",
            "ok",
            "--space",
            "grid:a=" + "[" * 5000 + "]" * 5000,
            "--chunk-size",
            "1",
        ],
        ["seed", "--run", "ok", "--space", "grid:a=" + "[" * 40 + "]" * 40, "--chunk-size", "1"],
        ["seed", "--run", "ok", "--space", "grid:a=1,NaN", "--chunk-size", "1"],
        ["seed", "--run", "ok", "--params", "10", "--chunk-size", "1", "--max-deliveries", "nan"],
        ["seed", "--run", "ok", "--params", "10", "--chunk-size", "1", "--max-deliveries", "10001"],
        ["worker", "--lease-seconds", "nan"],
        ["worker", "--lease-seconds", "inf"],
        ["worker", "--lease-seconds", "1e9"],
        ["worker", "--grace-seconds", "nan"],
        ["worker", "--retry-delay-seconds", "-inf"],
        ["worker", "--connect-timeout-seconds", "nan"],
        ["worker", "--prefetch", "1e3"],
        ["worker", "--compute-allow", "exec:"],
        ["status", "--run", "ok", "--watch", "--interval", "nan"],
        ["status", "--run", "ok", "--watch", "--interval", "inf"],
        ["demo", "--work-ms", str(10**12)],
        ["demo", "--workers", "100000"],
        ["results", "--run", "ok", "--output", "/dev/null"],
        ["report", "--run", "ok", "--output", "/dev/null"],
        ["runs", "--broker-url", "redis+cluster://u:p#w@h:1"],
        ["runs", "--backend", "rabbitmq", "--broker-url", "amqp://u:p#w@h:1/%2F"],
        ["runs", "--broker-url", "redis://u:p#w@h:1", "--broker-password", "x"],
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


@pytest.mark.parametrize(
    ("backend", "url", "secret"),
    [
        ("redis", "redis://user:Q7#Zx9@127.0.0.1:1/0", "Q7#Zx9"),
        ("redis", "redis://:Q7@Zx:W9/Vk@127.0.0.1:1/0", "Q7@Zx:W9/Vk"),
        ("redis", "redis+cluster://u:Q7/Zx#W9@127.0.0.1:1", "Q7/Zx#W9"),
        ("rabbitmq", "amqp://guest:Q7#Zx/W9:Vk@127.0.0.1:1/%2F", "Q7#Zx/W9:Vk"),
        ("rabbitmq", "amqp://guest:Q7:Zx@W9@127.0.0.1:x/%2F", "Q7:Zx@W9"),
    ],
)
def test_a_password_that_breaks_its_url_is_never_shown(backend: str, url: str, secret: str) -> None:
    proc = ttg("runs", env={"TTG_BACKEND": backend, "TTG_BROKER_URL": url}, timeout=30)
    assert proc.returncode in (2, 3), proc
    assert proc.stderr.startswith("ttg: error: ") and proc.stderr.count("\n") == 1
    pieces = {p for p in re.split(r"[@:/#]", secret) if len(p) >= 2}
    assert not any(p in proc.stderr for p in pieces), proc.stderr


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
