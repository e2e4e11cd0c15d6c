"""Odd input at the CLI and the workers with real brokers: one line, a documented exit code."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import BackendEnv
from tests.helpers import child_env, eventually, ttg, ttg_json
from ttg.processes import LocalWorkers, RabbitMQNode, RedisServer

pytestmark = pytest.mark.integration


def redis_only(backend: BackendEnv) -> redis.Redis:
    if backend.name != "redis":
        pytest.skip("a Redis detail")
    return redis.Redis.from_url(backend.url, decode_responses=True)


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_wrong_types_in_redis_are_the_runs_data_not_an_outage(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    r = redis_only(backend)
    ttg("seed", "--run", run_id, "--params", "100", "--chunk-size", "10", env=backend.env,
        check=True)  # fmt: skip
    bad = f"{run_id}-wrongtype"
    ttg("seed", "--run", bad, "--params", "100", "--chunk-size", "10", env=backend.env,
        check=True)  # fmt: skip
    for name in ("tasks", "events"):
        r.delete(f"ttg:{{{bad}}}:{name}")
        r.set(f"ttg:{{{bad}}}:{name}", "not a stream")
    err = one_line(ttg("status", "--run", bad, env=backend.env), 5)
    assert "WRONGTYPE" in err
    # Workers leave that run alone and serve the other.
    names = workers.start(2)
    eventually(
        lambda: ttg_json("verify", "--run", run_id, env=backend.env)["ok"],
        timeout=90,
        what="the healthy run verified",
    )
    assert workers.alive() == names
    assert ttg("delete", "--run", bad, env=backend.env).returncode == 0


def test_a_ledger_that_refuses_outcomes_holds_no_worker_hostage(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    """Outcome writes refused for good (WRONGTYPE) are not retried forever: the chunk goes back."""
    r = redis_only(backend)
    bad = f"{run_id}-ledger"
    ttg("seed", "--run", bad, "--params", "40", "--chunk-size", "10", env=backend.env,
        check=True)  # fmt: skip
    r.delete(f"ttg:{{{bad}}}:ledger")
    r.set(f"ttg:{{{bad}}}:ledger", "not a hash")
    names = workers.start(1)
    eventually(
        lambda: r.xinfo_groups(f"ttg:{{{bad}}}:tasks")[0]["last-delivered-id"] != "0-0",
        timeout=60,
        what="the worker fetching chunks of the run whose ledger refuses outcomes",
    )
    # The only worker was in that run when this one arrived: it must come back to serve it.
    ttg("seed", "--run", run_id, "--params", "100", "--chunk-size", "10", env=backend.env,
        check=True)  # fmt: skip
    eventually(
        lambda: ttg_json("verify", "--run", run_id, env=backend.env)["ok"],
        timeout=90,
        what="the healthy run verified by the one worker",
    )
    assert workers.alive() == names
    logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert "refused the outcome because of what the run's keys hold" in logs
    assert ttg("delete", "--run", bad, env=backend.env).returncode == 0


def test_a_huge_malformed_task_field_is_described_not_logged(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    r = redis_only(backend)
    ttg("seed", "--run", run_id, "--params", "100", "--chunk-size", "10", env=backend.env,
        check=True)  # fmt: skip
    r.xadd(f"ttg:{{{run_id}}}:tasks", {"c": "x" * 20_000_000, "a": "0"})
    workers.start(2)

    def counted() -> bool:
        report = ttg_json("status", "--run", run_id, env=backend.env)
        return report["malformed"] == 1 and report["complete"]

    eventually(counted, timeout=90, what="the malformed task counted, the run complete")
    logs = sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    assert logs < 200_000, f"{logs} bytes of worker logs"
    report = ttg_json("status", "--run", run_id, env=backend.env)
    assert all(len(e) < 1000 for e in report["recent_errors"])
    assert "20000000 characters" in report["recent_errors"][0]


def test_redis_urls_that_name_the_wrong_thing_are_bad_input(redis_server: RedisServer) -> None:
    port = redis_server.url.rsplit(":", 1)[1].split("/")[0]
    err = one_line(ttg("runs", env={"TTG_BROKER_URL": f"redis://127.0.0.1:{port}/99"}), 2)
    assert "database number is out of range" in err
    err = one_line(ttg("runs", env={"TTG_BROKER_URL": f"redis+cluster://127.0.0.1:{port}"}), 2)
    assert "not a cluster" in err
    worker = ttg("worker", env={"TTG_BROKER_URL": f"redis+cluster://127.0.0.1:{port}",
                                "TTG_METRICS_PORT": "0"}, timeout=60)  # fmt: skip
    assert worker.returncode == 2 and "not a cluster" in worker.stderr


def test_a_missing_vhost_is_bad_input_for_commands_and_workers(rabbitmq_node: RabbitMQNode) -> None:
    url = rabbitmq_node.url.rsplit("/", 1)[0] + "/no-such-vhost"
    env = {"TTG_BACKEND": "rabbitmq", "TTG_BROKER_URL": url, "TTG_METRICS_PORT": "0"}
    err = one_line(ttg("runs", env=env), 2)
    assert "no such virtual host" in err
    started = time.monotonic()
    worker = ttg("worker", env=env, timeout=60)
    assert worker.returncode == 2 and "no such virtual host" in worker.stderr
    assert time.monotonic() - started < 30, "said at once, not after retrying"


def test_output_on_a_full_disk_is_one_line_and_exit_2(backend: BackendEnv, run_id: str) -> None:
    ttg("seed", "--run", run_id, "--params", "10", "--chunk-size", "5", env=backend.env,
        check=True)  # fmt: skip
    for args in (
        ("runs",),
        ("status", "--run", run_id),
        ("results", "--run", run_id, "--aggregate", "sum"),
    ):
        with open("/dev/full", "w") as full:
            proc = subprocess.run(
                [sys.executable, "-m", "ttg", *args],
                env=child_env(backend.env),
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                check=False,
            )
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.splitlines()[-1] == (
            "ttg: error: cannot write the output: No space left on device"
        ), proc.stderr
        assert "Traceback" not in proc.stderr
