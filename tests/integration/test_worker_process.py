"""A real `ttg worker` process seen from outside: HTTP endpoints, logs, reporting commands."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BackendEnv
from tests.helpers import child_env, eventually, ttg, ttg_json
from ttg.processes import LocalWorkers, RedisServer, free_port

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:
        return 0, str(e.reason)  # nothing listens (yet)


def seed(backend: BackendEnv, run: str, *args: str) -> None:
    ttg("seed", "--run", run, *args, env=backend.env, check=True)


def test_metrics_health_and_readiness_endpoints(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    seed(backend, run_id, "--params", "500", "--chunk-size", "50", "--work-ms", "10")
    port = free_port()
    workers.start(1, TTG_METRICS_PORT=str(port))
    eventually(lambda: get(port, "/readyz")[0] == 200, timeout=30, what="/readyz 200")
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/nope")[0] == 404

    def all_recorded() -> str:
        body = get(port, "/metrics")[1]
        assert f'ttg_chunks_completed_total{{run="{run_id}"}} 10.0' in body
        return body

    body = eventually(all_recorded, timeout=30, what="every chunk counted")
    for name in (
        f'ttg_parameters_completed_total{{run="{run_id}"}} 500.0',
        f'ttg_chunks_redelivered_total{{run="{run_id}"}} 0.0',
        f'ttg_chunks_dead_lettered_total{{run="{run_id}"}} 0.0',
        "ttg_chunks_in_flight 0.0",
        "ttg_broker_up 1.0",
        "# TYPE ttg_chunk_duration_seconds histogram",
        "# TYPE ttg_chunks_duplicate_total counter",
        "# TYPE ttg_chunks_failed_total counter",
    ):
        assert name in body, name
    # Per-run figures are the exporter's, once per install: a worker exports none.
    assert "ttg_run_" not in body


def test_exporter_serves_every_run_with_or_without_workers(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    seed(backend, run_id, "--params", "300", "--chunk-size", "10")
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "ttg", "exporter"],
        env=child_env({**backend.env, "TTG_METRICS_PORT": str(port)}),
        stderr=subprocess.DEVNULL,
    )
    try:

        def queued() -> dict:
            code, text = get(port, "/api/queue")
            assert code == 200, text
            report = json.loads(text)
            assert report["runs"].get(run_id, {}).get("queued") == 30, report
            return report

        # No worker at all: the work waiting is there for KEDA to scale from zero.
        report = eventually(queued, timeout=30, what="queue depth with no worker")
        assert report["queued"] >= 30 and report["runs"][run_id]["workers"] == 0
        body = get(port, "/metrics")[1]
        assert f'ttg_run_queue_depth{{run="{run_id}"}} 30.0' in body
        assert f'ttg_run_chunks_finished_total{{run="{run_id}"}} 0.0' in body
        assert get(port, "/readyz")[0] == 200

        workers.start(1)

        def finished() -> str:
            body = get(port, "/metrics")[1]
            assert f'ttg_run_chunks_finished_total{{run="{run_id}"}} 30.0' in body
            return body

        body = eventually(finished, timeout=60, what="exporter sees the run finish")
        assert (
            f'ttg_run_info{{backend="{backend.name}",run="{run_id}",state="complete"}} 1.0' in body
        )
        assert f'ttg_run_queue_depth{{run="{run_id}"}} 0.0' in body
        assert f'ttg_run_eta_seconds{{run="{run_id}"}} 0.0' in body
    finally:
        exporter.terminate()
        assert exporter.wait(timeout=15) == 0


def test_worker_is_alive_but_not_ready_while_its_broker_is_away(tmp_path: Path) -> None:
    port = free_port()
    env = child_env(
        {"TTG_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "TTG_METRICS_PORT": str(port)}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttg", "worker"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        # Served from the start, so a liveness probe does not kill a worker waiting for
        # a slow broker; not ready until the broker answers.
        eventually(lambda: get(port, "/healthz") == (200, "ok\n"), timeout=30, what="/healthz")
        assert get(port, "/readyz") == (503, "broker unreachable\n")
        lines = [proc.stderr.readline() for _ in range(2)]
        assert any("cannot reach the broker yet" in line for line in lines), lines
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_json_logs_are_one_object_per_line(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    seed(
        backend, run_id, "--params", "100", "--chunk-size", "50",
        "--compute", "tests.computes:explode_on_13",
    )  # fmt: skip
    (name,) = workers.start(1)
    eventually(
        lambda: ttg_json("status", "--run", run_id, env=backend.env)["complete"], what="done"
    )
    workers.stop()
    lines = (tmp_path / f"{name}.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any(r["msg"] == f"worker {name} started" for r in records)
    # A line about a chunk carries which one as fields, for log search, not only in text.
    (about,) = [r for r in records if "parameter errors" in r["msg"]]
    assert (about["run"], about["chunk"], about["worker"], about["attempt"]) == (
        run_id, 0, name, 1
    ), about  # fmt: skip


def test_status_watch_follows_the_run_to_completion(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    seed(backend, run_id, "--params", "2000", "--chunk-size", "100", "--work-ms", "50")
    workers.start(2)
    proc = ttg(
        "status",
        "--run",
        run_id,
        "--watch",
        "--interval",
        "0.2",
        "--json",
        env=backend.env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(reports) >= 2
    assert reports[-1]["complete"] and reports[-1]["state"] == "complete"
    progress = [r["progress"] for r in reports]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert any(r["rate_chunks_s"] for r in reports)

    text = ttg("status", "--run", run_id, "--watch", env=backend.env, timeout=30)
    assert text.returncode == 0 and f"run {run_id}: complete" in text.stdout


def test_results_export_one_row_per_parameter_with_its_grid_values(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    seed(
        backend, run_id, "--space", "grid:a=1,2,3;b=x,y", "--chunk-size", "4",
        "--compute", "tests.computes:label",
    )  # fmt: skip
    workers.start(1)
    eventually(
        lambda: ttg_json("status", "--run", run_id, env=backend.env)["complete"], what="done"
    )

    out = ttg("results", "--run", run_id, "--format", "csv", env=backend.env, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == [
        "index", "a", "b", "result", "status", "error", "chunk", "worker", "attempt", "finished_at",
    ]  # fmt: skip
    assert [(r["index"], r["a"], r["b"], r["chunk"]) for r in rows] == [
        ("0", "1", "x", "0"), ("1", "1", "y", "0"), ("2", "2", "x", "0"), ("3", "2", "y", "0"),
        ("4", "3", "x", "1"), ("5", "3", "y", "1"),
    ]  # fmt: skip
    assert all(r["status"] == "ok" and r["attempt"] == "1" and r["result"] for r in rows)

    jsonl = ttg("results", "--run", run_id, env=backend.env, check=True).stdout
    first = json.loads(jsonl.splitlines()[0])
    assert first["value"] == {"a": 1, "b": "x"} and first["index"] == 0

    chunks = ttg("results", "--run", run_id, "--chunks", env=backend.env, check=True).stdout
    assert [json.loads(line)["chunk"] for line in chunks.splitlines()] == [0, 1]
    missing = ttg("results", "--run", "no-such-run", env=backend.env)
    assert missing.returncode == 2 and "no run" in missing.stderr


def test_demo_runs_your_own_compute_over_your_space() -> None:
    proc = ttg(
        "demo", "--space", "range:10:20", "--chunk-size", "2", "--work-ms", "0",
        "--compute", "tests.computes:explode_on_13", "--compute-allow", "tests", "--json",
        env={}, timeout=180,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    # Parameter 13 raises: the run completes with that one error, and the demo says so.
    assert proc.returncode == 1, proc.stderr
    assert (report["total_params"], report["done_params"], report["param_errors"]) == (10, 9, 1)
    assert report["state"] == "complete-with-failures" and report["verified"], report


def test_demo_refuses_a_compute_it_may_not_import() -> None:
    proc = ttg("demo", "--compute", "os:system", env={}, timeout=60)
    assert proc.returncode == 2 and "not allowed" in proc.stderr, proc


def test_demo_stops_with_one_line_when_every_worker_exited() -> None:
    # Workers that cannot start (a bad setting they read, the demo does not): waiting
    # for the run would never end; the demo says so and where the logs are.
    proc = ttg("demo", "--params", "200", env={"TTG_PREFETCH": "lots"}, timeout=120)
    assert proc.returncode == 1, proc
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ttg: error: all 2 workers exited before the run completed"), last
    assert "Traceback" not in proc.stderr


def test_wrong_credentials_are_exit_4_in_one_line(
    request: pytest.FixtureRequest, backend: BackendEnv
) -> None:
    if backend.name == "redis":
        server = RedisServer(password="right").start()  # noqa: S106 - a test server
        request.addfinalizer(server.stop)
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
    else:
        url = backend.url.replace("guest:guest@", "guest:wrong@")
    proc = ttg("status", "--run", "r1", env={"TTG_BACKEND": backend.name, "TTG_BROKER_URL": url})
    assert proc.returncode == 4, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused our credentials" in lines[0], proc.stderr


def test_demo_kills_a_worker_and_verifies_the_run() -> None:
    proc = ttg(
        "demo",
        "--params",
        "3000",
        "--chunk-size",
        "100",
        "--workers",
        "2",
        "--work-ms",
        "60",
        "--kill-at",
        "0.3",
        "--json",
        env={},
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["complete"] and report["closed_form"] == "match", report
    assert report["killed_worker"] and report["redelivered"] >= 1
    assert 0 < report["redelivery_delay_s"] <= 3.0
    assert report["duplicates"] == 0


def test_pause_resume_cancel_and_runs_through_the_cli(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    # About 60 s of work for one worker, and sleep, not CPU: load does not shorten it, while
    # the test pauses, resumes and cancels within seconds (status calls included).
    seed(backend, run_id, "--params", "60000", "--chunk-size", "100", "--work-ms", "100")
    workers.start(1)
    _pause_resume_cancel(backend, run_id)


def _pause_resume_cancel(backend: BackendEnv, run_id: str) -> None:
    eventually(lambda: ttg_json("status", "--run", run_id, env=backend.env)["done"] >= 2)

    paused = ttg_json("pause", "--run", run_id, env=backend.env)
    assert paused["_exit"] == 0 and paused["control"] == "paused", paused

    # Within a lease the worker finishes what it holds and takes nothing more.
    def settled() -> dict[str, Any]:
        s = ttg_json("status", "--run", run_id, env=backend.env)
        assert s["state"] == "paused" and not s["in_flight"], s
        return s

    done = eventually(settled, timeout=60, what="paused, nothing in flight")["done"]
    runs = ttg_json("runs", env=backend.env)
    (row,) = [r for r in runs["runs"] if r["run"] == run_id]
    assert row["state"] == "paused" and row["backend"] == backend.name, row
    assert ttg_json("status", "--run", run_id, env=backend.env)["done"] == done

    assert ttg_json("resume", "--run", run_id, env=backend.env)["_exit"] == 0
    eventually(lambda: ttg_json("status", "--run", run_id, env=backend.env)["done"] > done)
    cancelled = ttg_json("cancel", "--run", run_id, env=backend.env)
    assert cancelled["_exit"] == 0
    report = eventually(
        lambda: (
            (r := ttg_json("status", "--run", run_id, env=backend.env))["state"] == "cancelled"
            and r
        ),
        what="state cancelled",
    )
    assert report["done"] < report["total_chunks"]


def test_status_warns_when_no_worker_serves_a_run(backend: BackendEnv, run_id: str) -> None:
    seed(backend, run_id, "--params", "100", "--chunk-size", "10")
    report = ttg_json("status", "--run", run_id, env=backend.env)
    assert report["workers"] == 0 and report["state"] == "running", report
    assert any("no live worker" in w for w in report["warnings"]), report
    text = ttg("status", "--run", run_id, env=backend.env, check=True).stdout
    assert "warning: no live worker: 10 chunks wait" in text, text


def test_results_of_an_unfinished_run_warn_how_many_rows_are_missing(
    backend: BackendEnv, run_id: str
) -> None:
    seed(backend, run_id, "--params", "100", "--chunk-size", "10")
    proc = ttg("results", "--run", run_id, env=backend.env, check=True)
    assert proc.stdout == ""
    assert "10 of 10 chunks have no outcome yet, their rows are missing" in proc.stderr


def test_results_as_parquet_aggregated_and_cut_short_by_head(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq  # noqa: PLC0415 - the parquet extra, installed by make venv

    seed(backend, run_id, "--params", "3000", "--chunk-size", "100")
    workers.start(1)
    eventually(lambda: ttg_json("status", "--run", run_id, env=backend.env)["complete"])

    out = tmp_path / "results.parquet"
    ttg("results", "--run", run_id, "--format", "parquet", "--output", str(out),
        env=backend.env, check=True)  # fmt: skip
    table = pq.read_table(out)
    assert table.num_rows == 3000
    assert table.column_names[:3] == ["index", "value", "result"]
    assert table.column("result").to_pylist()[:4] == [0, 1, 4, 9]

    total = ttg("results", "--run", run_id, "--aggregate", "sum", env=backend.env, check=True)
    assert json.loads(total.stdout)["value"] == sum(x * x for x in range(3000))

    # A reader that leaves early (`| head`) is not an error.
    results = subprocess.Popen(
        [sys.executable, "-m", "ttg", "results", "--run", run_id],
        env=child_env(backend.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert results.stdout is not None
    head = subprocess.run(
        ["head", "-n", "2"], stdin=results.stdout, capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    results.stdout.close()  # only head reads it: when head leaves, the pipe breaks
    _, err = results.communicate(timeout=120)
    assert len(head.stdout.splitlines()) == 2, head.stdout
    assert results.returncode == 0 and err == b"", err


def test_a_stale_worker_declines_what_it_cannot_run_and_the_run_completes(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    """A worker whose allowlist lacks the run's compute never dead-letters it (issue 18)."""
    env = backend.env
    ttg("seed", "--run", run_id, "--params", "60", "--chunk-size", "1", "--work-ms", "50",
        "--compute", "tests.computes:explode_on_13", env=env, check=True)  # fmt: skip
    (stale,) = workers.start(1, TTG_COMPUTE_ALLOW="ttg.compute:square")

    def declined() -> dict[str, Any]:
        report = ttg_json("status", "--run", run_id, env=env)
        assert any(f"worker {stale} cannot run compute" in w for w in report["warnings"])
        return report

    report = eventually(declined, timeout=60, what="the stale worker declining, said by status")
    assert report["dead"] == 0 and report["finished"] == 0, report
    workers.start(1)  # one that can
    eventually(lambda: ttg_json("status", "--run", run_id, env=env)["complete"],
               timeout=120, what="the run complete")  # fmt: skip
    final = ttg_json("verify", "--run", run_id, "--allow-failed", env=env)
    assert final["ok"] and final["dead"] == 0 and final["params_dead"] == 0, final
    assert final["failed_params"] == 1, "parameter 13 raised; nothing else failed"
    assert stale in workers.alive(), "declining is not dying"
