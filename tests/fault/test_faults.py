"""Fault suite: real `ttg worker` processes, real signals, every run checked by `ttg verify`.

Each test is one failure the system TTG replaces got wrong.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests import scenarios
from tests.conftest import BackendEnv
from tests.fault.conftest import LocalHarness, seed, status, two_runs_at_once
from tests.helpers import ALONE, child_env, eventually, ttg, ttg_json
from ttg.brokers.rabbitmq.seeder import CURSOR_EVERY, WINDOW
from ttg.errors import TTGError
from ttg.processes import LocalWorkers

pytestmark = pytest.mark.fault

#: The default lease, which the redelivery bound is stated against.
LEASE = 2.0
#: Chunks a killed RabbitMQ seeder may have published beyond its durable cursor.
RABBITMQ_UNCONFIRMED = WINDOW + CURSOR_EVERY


def chunk_rows(backend: BackendEnv, run: str) -> list[dict[str, Any]]:
    """``ttg results --chunks``: one row per chunk."""
    out = ttg("results", "--run", run, "--chunks", env=backend.env, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def parameter_rows(backend: BackendEnv, run: str) -> list[dict[str, Any]]:
    """``ttg results``: one row per parameter."""
    out = ttg("results", "--run", run, env=backend.env, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def one_worker_holding_one_chunk(
    backend: BackendEnv, workers: LocalWorkers, run: str, *, params: int, work_ms: int, **env: str
) -> str:
    """Seed a one-chunk run, start one worker, return its name once it holds the chunk."""
    seed(
        backend,
        run,
        "--params",
        str(params),
        "--chunk-size",
        str(params),
        "--work-ms",
        str(work_ms),
    )
    (name,) = workers.start(1, **env)
    eventually(lambda: status(backend, run)["in_flight"], timeout=60, what="chunk in flight")
    return name


def test_sigkill_worker_holding_chunk_is_redelivered_within_lease(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str
) -> None:
    # 120 chunks of 150 ms (6 s of work for 3 workers): on a loaded machine a status
    # read takes a second, and the victim must still have work in hand when it lands.
    seed(backend, run_id, "--params", "12000", "--chunk-size", "100", "--work-ms", "150")
    workers.start(3, TTG_LEASE_SECONDS=str(LEASE))

    killed = scenarios.kill_worker_holding_chunk_at(harness, run_id, 0.3)

    # The broker's record of the redelivery: a status read slowed by load cannot lengthen it.
    assert killed.measured_by == "event", killed
    assert killed.redelivery_delay_s is not None
    assert killed.redelivery_delay_s <= LEASE + 1, killed
    assert workers.wait(killed.worker, timeout=5) == -signal.SIGKILL
    scenarios.wait_complete(harness, run_id, timeout=120)
    report = scenarios.assert_verified(harness, run_id)
    assert report["redelivered"] >= 1
    assert report["duplicates"] == 0
    assert report["closed_form"] == "match"


def test_sigterm_mid_chunk_gives_the_whole_chunk_back(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    # One chunk far longer than the grace period: the worker must give it back
    # whole and exit 0, never acknowledge what it computed so far.
    first = one_worker_holding_one_chunk(
        backend,
        workers,
        run_id,
        params=50,
        work_ms=4000,
        TTG_GRACE_SECONDS="0.5",
        TTG_LEASE_SECONDS="1",
    )

    workers.kill(first, signal.SIGTERM)

    assert workers.wait(first, timeout=10) == 0
    s = status(backend, run_id)
    assert s["done"] == 0 and s["done_params"] == 0, s
    assert s["queue_depth"] >= 1, s
    (second,) = workers.start(1)
    eventually(lambda: status(backend, run_id)["complete"], timeout=30, what="run complete")
    report = ttg_json("verify", "--run", run_id, env=backend.env)
    assert report["ok"], report
    (chunk,) = chunk_rows(backend, run_id)
    # Given back, not lost: the redo is the chunk's first counted delivery again. A
    # chunk dropped and redelivered after the worker's lease would show attempt 2.
    assert chunk["worker"] == second and chunk["attempt"] == 1, chunk


def test_sigterm_within_grace_finishes_and_records_the_chunk(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    # A chunk of 6 s: on a loaded machine a status read can take a second or two, and
    # the chunk must still be in hand when the SIGTERM lands.
    only = one_worker_holding_one_chunk(
        backend, workers, run_id, params=50, work_ms=6000, TTG_GRACE_SECONDS="40"
    )

    workers.kill(only, signal.SIGTERM)

    assert workers.wait(only, timeout=40) == 0
    report = ttg_json("verify", "--run", run_id, env=backend.env)
    assert report["ok"] and report["done_params"] == 50, report
    assert report["redelivered"] == 0, report


def test_second_signal_exits_at_once(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    only = one_worker_holding_one_chunk(
        backend, workers, run_id, params=10, work_ms=30000, TTG_GRACE_SECONDS="60"
    )

    workers.kill(only, signal.SIGTERM)
    # The second signal only once the first is being handled: the shutdown has begun.
    log = workers.log_dir / f"{only}.log"  # type: ignore[operator]
    eventually(lambda: "finishing the chunk in hand" in log.read_text(), what="shutdown begun")
    workers.kill(only, signal.SIGTERM)

    assert workers.wait(only, timeout=5) == 1
    assert status(backend, run_id)["done"] == 0


def test_permanent_parameter_error_keeps_the_chunk_s_other_results_without_retry(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str
) -> None:
    seed(
        backend, run_id, "--params", "100", "--chunk-size", "10",
        "--compute", "tests.computes:explode_on_13",
    )  # fmt: skip
    workers.start(2, TTG_RETRY_DELAY_SECONDS="0.05")

    scenarios.wait_complete(harness, run_id, timeout=60)

    report = scenarios.assert_verified(harness, run_id, allow_failed=True)
    assert report["state"] == "complete-with-failures"
    assert (report["done"], report["errors"], report["dead"]) == (9, 1, 0), report
    assert report["param_errors"] == 1 and report["done_params"] == 99, report
    # A ValueError is permanent: recorded at once, never retried.
    assert report["failed"] == 1 and report["redelivered"] == 0, report
    strict = ttg_json("verify", "--run", run_id, env=backend.env)
    assert strict["_exit"] == 1 and not strict["ok"] and strict["verified"], strict
    rows = parameter_rows(backend, run_id)
    assert len(rows) == 100
    (bad,) = [r for r in rows if r["status"] != "ok"]
    assert bad["index"] == 13 and bad["status"] == "error" and bad["result"] is None
    assert bad["error"] == "ValueError: cannot compute parameter 13" and bad["attempt"] == 1
    assert rows[14]["result"] == 14 * 14 and rows[14]["status"] == "ok"


def test_transient_error_is_retried_then_kept_with_its_error(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str
) -> None:
    seed(
        backend, run_id, "--params", "100", "--chunk-size", "10",
        "--compute", "tests.computes:flaky_on_13", "--max-deliveries", "3",
    )  # fmt: skip
    workers.start(2, TTG_RETRY_DELAY_SECONDS="0.05")

    scenarios.wait_complete(harness, run_id, timeout=60)

    report = scenarios.assert_verified(harness, run_id, allow_failed=True)
    assert (report["done"], report["errors"], report["dead"]) == (9, 1, 0), report
    assert report["failed"] == 3, report
    (bad,) = [r for r in parameter_rows(backend, run_id) if r["status"] != "ok"]
    assert bad["index"] == 13 and bad["attempt"] == 3 and "ConnectionError" in bad["error"]


def test_max_deliveries_belong_to_the_run_not_to_the_workers(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str
) -> None:
    # One owner per setting: a run seeded with 2 deliveries keeps 2, whatever a
    # worker's environment says (a chart once set it on every worker).
    seed(
        backend, run_id, "--params", "20", "--chunk-size", "10",
        "--compute", "tests.computes:flaky_on_13", "--max-deliveries", "2",
    )  # fmt: skip
    workers.start(1, TTG_MAX_DELIVERIES="5", TTG_RETRY_DELAY_SECONDS="0.05")

    scenarios.wait_complete(harness, run_id, timeout=60)

    report = scenarios.assert_verified(harness, run_id, allow_failed=True)
    assert report["failed"] == 2 and report["errors"] == 1, report
    (bad,) = [r for r in chunk_rows(backend, run_id) if r["status"] != "ok"]
    assert bad["attempt"] == 2, bad


def test_a_parameter_that_misbehaves_costs_only_itself(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str
) -> None:
    """Raise, time out, segfault, exit, exceed memory: each fails its parameter, nothing else.

    One run, five chunks of 10, one failure class per chunk (tests.computes.MISBEHAVIOUR).
    """
    seed(
        backend, run_id, "--params", "50", "--chunk-size", "10",
        "--compute", "tests.computes:misbehave", "--max-deliveries", "2",
        "--param-timeout", "2", "--param-memory", "256Mi",
    )  # fmt: skip
    names = workers.start(2, TTG_LEASE_SECONDS="1")
    pids = {n: workers.procs[n].pid for n in names}

    scenarios.wait_complete(harness, run_id, timeout=120)

    # No worker died: the same processes served the whole run.
    assert workers.alive() == names and {n: workers.procs[n].pid for n in names} == pids
    report = scenarios.assert_verified(harness, run_id, allow_failed=True)
    assert report["dead"] == 0 and report["errors"] == 5 and report["duplicates"] == 0, report
    strict = ttg("verify", "--run", run_id, env=backend.env)
    assert strict.returncode == 1, strict
    causes = {
        3: "ValueError: cannot compute parameter 3",
        13: "timed out after 2 s",
        23: "killed by signal 11 (SIGSEGV)",
        33: "exited with code 3",
        43: "exceeded its memory limit 256Mi",
    }
    rows = {r["index"]: r for r in parameter_rows(backend, run_id)}
    assert sorted(rows) == list(range(50))
    for i, row in rows.items():
        if i in causes:
            assert row["result"] is None and causes[i] in (row["error"] or ""), row
        elif i == 44:
            # The compute's process sees no broker variable (its worker had TTG_BROKER_URL).
            assert row["result"] == 0 and not row["error"], row
        else:
            assert row["result"] == i * i and not row["error"], row
    # Each chunk was computed once, on its first delivery: no crash cost a delivery.
    assert {r["attempt"] for r in chunk_rows(backend, run_id)} == {1}
    assert "TTG_BROKER_URL" in backend.env


def test_a_hang_without_a_time_limit_is_named_by_status(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    """No ``--param-timeout``: parameter 13 runs forever; ``ttg status`` names it, its
    chunk and its worker as a likely hang (its worker finished 0-12 in no time)."""
    seed(backend, run_id, "--params", "20", "--chunk-size", "10", "--compute",
         "tests.computes:hang_on_13")  # fmt: skip
    (name,) = workers.start(1, TTG_GRACE_SECONDS="1")
    hang = f"parameter 13 (chunk 1, worker {name}) has run"

    def named() -> dict[str, Any] | None:
        s = status(backend, run_id)
        return s if any(hang in w and "likely hang" in w for w in s["warnings"]) else None

    s = eventually(named, timeout=90, interval=0.5, what="status naming the hang")
    (f,) = s["in_flight"]
    assert (f["chunk"], f["worker"], f["param"]) == (1, name, 13), f
    assert f["param_s"] > 10 * f["median_s"], f
    assert s["done"] == 1 and not s["complete"], s
    text = ttg("status", "--run", run_id, env=backend.env, check=True).stdout
    assert "on parameter 13 for" in text and hang in text, text


def test_seeding_twice_adds_nothing(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str
) -> None:
    first = seed(backend, run_id, "--params", "2000", "--chunk-size", "100")
    again = seed(backend, run_id, "--params", "2000", "--chunk-size", "100")
    assert first["added"] == 20 and not first["already_seeded"]
    assert again["added"] == 0 and again["already_seeded"]
    conflict = ttg(
        "seed", "--run", run_id, "--params", "3000", "--chunk-size", "100", env=backend.env
    )
    assert conflict.returncode == 2 and "different parameters" in conflict.stderr
    assert status(backend, run_id)["queue_depth"] == 20

    workers.start(2)
    scenarios.wait_complete(harness, run_id, timeout=60)
    report = scenarios.assert_verified(harness, run_id)
    assert report["duplicates"] == 0


#: Chunks to seed so that seeding lasts long enough to be killed halfway.
SEED_KILL_TOTAL = {"redis": 300_000, "rabbitmq": 150_000}


def test_seeding_killed_halfway_then_rerun_publishes_every_chunk_once(
    request: pytest.FixtureRequest, backend: BackendEnv, run_id: str
) -> None:
    total = SEED_KILL_TOTAL[backend.name]
    # These chunks travel one per message (small chunks would be grouped): every task
    # message is one chunk, so counting messages counts chunks.
    args = ["--run", run_id, "--params", str(total * ALONE), "--chunk-size", str(ALONE)]
    seeder = subprocess.Popen(
        [sys.executable, "-m", "ttg", "seed", *args],
        env=child_env(backend.env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    b = backend.broker()

    def partly_seeded() -> bool:
        try:
            return b.progress(run_id).seeded_chunks > 0
        except TTGError:  # the run may not exist yet
            return False

    eventually(partly_seeded, timeout=30, interval=0.01, what="seeding under way")
    seeder.kill()
    seeder.wait()
    # The broker may still be running the dead seeder's last batch (a command it had
    # received whole): the cursor stands once two readings a second apart agree.
    readings = [b.progress(run_id).seeded_chunks]

    def cursor_stands() -> bool:
        time.sleep(1)
        readings.append(b.progress(run_id).seeded_chunks)
        return readings[-1] == readings[-2]

    eventually(cursor_stands, timeout=60, what="the cursor standing after the kill")
    halfway = readings[-1]
    assert 0 < halfway < total, "seeding finished before it could be killed; raise total"

    rerun = ttg_json("seed", *args, env=backend.env)

    assert rerun["_exit"] == 0 and rerun["seeded_chunks"] == total
    assert rerun["added"] == total - halfway
    if backend.name == "redis":
        # The cursor moves in the same Lua step as its batch: exactly once.
        assert b.progress(run_id).queue_depth == total, "a chunk was lost or published twice"
    else:
        # The cursor is published after its batch is confirmed: nothing lost, and at
        # most what was unconfirmed at the kill published twice (the ledger counts a
        # second result as a duplicate).
        node = request.getfixturevalue("rabbitmq_node")

        def messages() -> int:
            out = node.ctl_run("list_queues", "name", "messages", "--quiet", "--no-table-headers")
            (count,) = [
                int(line.split("\t")[1])
                for line in out.splitlines()
                if line.startswith(f"ttg.{run_id}.tasks\t")
            ]
            return count

        # The queue's figures catch up within seconds; a lost chunk never would.
        eventually(lambda: messages() >= total, timeout=60, interval=1, what="every chunk queued")
        assert messages() <= total + RABBITMQ_UNCONFIRMED


def test_broker_restart_mid_run_loses_nothing_acknowledged(
    backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers, run_id: str
) -> None:
    seed(backend, run_id, "--params", "8000", "--chunk-size", "100", "--work-ms", "60")
    workers.start(3, TTG_LEASE_SECONDS="1")

    before = scenarios.restart_broker_at(harness, run_id, 0.4)

    after = eventually(lambda: status(backend, run_id), timeout=30, what="broker back")
    assert after["done"] >= before["done"], (before, after)
    scenarios.wait_complete(harness, run_id, timeout=120)
    scenarios.assert_verified(harness, run_id)
    assert sorted(workers.alive()) == sorted(workers.procs), "a worker died with the broker"


def test_chunk_lasting_five_leases_stays_with_its_live_worker(
    backend: BackendEnv, workers: LocalWorkers, run_id: str
) -> None:
    lease = 1.0
    holder = one_worker_holding_one_chunk(
        backend,
        workers,
        run_id,
        params=10,
        work_ms=int(5 * lease * 1000),
        TTG_LEASE_SECONDS=str(lease),
    )
    # Idle workers, looking for dead workers' chunks every 1/8 lease the whole time.
    workers.start(2, TTG_LEASE_SECONDS=str(lease))

    eventually(lambda: status(backend, run_id)["complete"], timeout=30, what="run complete")

    report = ttg_json("verify", "--run", run_id, env=backend.env)
    assert report["ok"], report
    assert report["redelivered"] == 0 and report["duplicates"] == 0, report
    (chunk,) = chunk_rows(backend, run_id)
    assert chunk["worker"] == holder and chunk["attempt"] == 1, chunk


def test_two_runs_at_once_stay_isolated(harness: LocalHarness, run_id: str) -> None:
    two_runs_at_once(harness, run_id, f"{run_id}-b")
