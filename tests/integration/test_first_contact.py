"""What a first session on a laptop meets: ``ttg local``, and a second worker's metrics port."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from tests.helpers import child_env, eventually, ttg

pytestmark = pytest.mark.integration


def test_ttg_local_prints_a_url_the_other_commands_use() -> None:
    env = child_env({"TTG_COMPUTE_ALLOW": "tests"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttg", "local", "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("ttg local: a redis broker at unix://"), first
        proc.stdout.readline()
        export = proc.stdout.readline().split()
        assert export[:2] == ["export", "TTG_BACKEND=redis"]
        url = dict(v.split("=", 1) for v in export[1:])["TTG_BROKER_URL"]
        there = {"TTG_BACKEND": "redis", "TTG_BROKER_URL": url}
        ttg(
            "seed", "--run", "first", "--params", "100", "--chunk-size", "10", env=there, check=True
        )
        eventually(
            lambda: json.loads(ttg("status", "--run", "first", "--json", env=there).stdout)[
                "complete"
            ],
            timeout=60,
            what="the local worker finished the run",
        )
        assert ttg("verify", "--run", "first", env=there).returncode == 0
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


@contextlib.contextmanager
def holding(port: int) -> Iterator[None]:
    """Listen on ``port`` (if nobody does already: then it is taken all the same)."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            s.bind(("0.0.0.0", port))  # noqa: S104 - the worker binds all interfaces too
            s.listen()
        yield
    finally:
        s.close()


def test_a_worker_whose_default_metrics_port_is_taken_picks_another(redis_server) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in child_env().items() if k != "TTG_METRICS_PORT"}
    env.update(TTG_BROKER_URL=redis_server.url, TTG_LOG_FORMAT="text")
    with holding(9100):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ttg", "worker"], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stderr is not None
            line = ""
            while "metrics port" not in line:
                line = proc.stderr.readline()
                assert line, "the worker said nothing about its metrics port"
            port = int(re.search(r"serving /metrics on :(\d+) instead", line).group(1))  # type: ignore[union-attr]
            assert "set TTG_METRICS_PORT to choose one, 0 to turn it off" in line
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                assert r.status == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
