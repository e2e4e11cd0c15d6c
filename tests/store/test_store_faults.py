"""Faults of a results store, with real brokers, real worker processes and a real S3 server.

A store refusing writes longer than the lease, an S3 server stopped mid-run, a result
over the cap (in every store, the broker included), a duplicate whose object must not
stay, and a seeder facing a store it cannot use.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import scenarios
from tests.computes import HUGE_BYTES, POISON
from tests.conftest import BackendEnv
from tests.helpers import eventually, ttg
from tests.store.conftest import StoreEnv
from tests.store.s3server import BUCKET, SeaweedS3
from tests.store.test_store_runs import LEASE, StoreHarness
from ttg.processes import LocalWorkers, free_port


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def test_store_refusing_writes_longer_than_the_lease_loses_nothing(
    backend: BackendEnv, file_store: StoreEnv, workers: LocalWorkers, run_id: str
) -> None:
    h = StoreHarness(backend, file_store, workers)
    h.seed(run_id, "--params", "2000", "--chunk-size", "100", "--work-ms", "50")
    # The run's folder cannot be made (a file stands in its place): every write fails,
    # for root as for anyone, until the test removes it.
    assert file_store.root is not None
    (file_store.root / "runs").mkdir()
    blocker = file_store.root / "runs" / run_id
    blocker.write_text("not a folder")
    port = free_port()
    (watched,) = workers.start(1, TTG_LEASE_SECONDS=str(LEASE), TTG_METRICS_PORT=str(port))
    workers.start(1, TTG_LEASE_SECONDS=str(LEASE))

    # Not ready, and saying why (at start it is 503 "broker unreachable" for a moment).
    _, why = eventually(
        lambda: (r := readyz(port))[0] == 503 and "results store" in r[1] and r,
        timeout=60,
        what="/readyz 503 naming the store",
    )
    assert "results store failing for" in why and "cannot write" in why, why
    held = h.ttg_json("status", "--run", run_id)
    assert held["done"] == 0 and len(held["in_flight"]) >= 1, held
    time.sleep(2 * LEASE)  # longer than the lease: nobody may take the chunks in hand
    s = h.ttg_json("status", "--run", run_id)
    assert s["redelivered"] == 0 and s["dead"] == 0 and s["done"] == 0, s

    blocker.unlink()
    scenarios.wait_complete(h, run_id, timeout=120)
    report = scenarios.assert_verified(h, run_id)
    assert report["redelivered"] == 0 and report["duplicates"] == 0, report
    assert report["objects_checked"] == 20 and report["closed_form"] == "match", report
    assert all(workers.procs[w].poll() is None for w in workers.procs), "a worker died"
    eventually(lambda: readyz(port)[0] == 200, timeout=30, what="/readyz 200 again")
    assert watched in workers.procs


def test_s3_server_stopped_mid_run_loses_nothing(
    backend: BackendEnv, s3_server: SeaweedS3, workers: LocalWorkers, run_id: str
) -> None:
    store = StoreEnv("s3", f"s3://{BUCKET}/outage-{run_id}", dict(s3_server.env), server=s3_server)
    h = StoreHarness(backend, store, workers)
    h.seed(run_id, "--params", "4000", "--chunk-size", "100", "--work-ms", "100")
    workers.start(2, TTG_LEASE_SECONDS=str(LEASE), **store.env)
    eventually(lambda: h.ttg_json("status", "--run", run_id)["done"] >= 5, timeout=60)
    s3_server.stop()
    try:
        time.sleep(3 * LEASE)  # the workers hold what they computed, retrying the store
        s = h.ttg_json("status", "--run", run_id)
        assert s["redelivered"] == 0 and s["dead"] == 0, s
    finally:
        s3_server.start()
    scenarios.wait_complete(h, run_id, timeout=180)
    report = scenarios.assert_verified(h, run_id)
    assert report["redelivered"] == 0 and report["objects_checked"] == 40, report
    assert report["closed_form"] == "match", report
    assert all(p.poll() is None for p in workers.procs.values()), "a worker died"


@pytest.mark.parametrize("where", ["broker", "file"])
def test_a_result_over_the_cap_is_its_parameter_s_error_naming_its_size(
    backend: BackendEnv, file_store: StoreEnv, workers: LocalWorkers, run_id: str, where: str
) -> None:
    store = file_store if where == "file" else StoreEnv("broker", "broker")
    h = StoreHarness(backend, store, workers)
    h.seed(run_id, "--params", "40", "--chunk-size", "20", "--compute", "tests.computes:huge_on_13")
    workers.start(1)
    scenarios.wait_complete(h, run_id, timeout=60)
    if where == "broker":
        # 2 MiB is over the broker's cap of 1 MiB a result: that parameter's error.
        report = scenarios.assert_verified(h, run_id, allow_failed=True)
        assert (report["errors"], report["param_errors"], report["dead"]) == (1, 1, 0), report
        (error,) = [e for e in report["recent_errors"] if f"parameter {POISON}" in e]
        assert f"result is {HUGE_BYTES + 2:,} bytes of JSON" in error and "1 MiB" in error
        rows = [json.loads(line) for line in h.ttg("results", "--run", run_id).stdout.splitlines()]
        assert rows[POISON]["status"] == "error" and rows[POISON]["result"] is None
        assert rows[12]["result"] == 144
    else:
        # A results store keeps it (its cap is 64 MiB).
        report = scenarios.assert_verified(h, run_id)
        rows = [json.loads(line) for line in h.ttg("results", "--run", run_id).stdout.splitlines()]
        assert len(rows[POISON]["result"]) == HUGE_BYTES and rows[POISON]["status"] == "ok"


def test_a_duplicate_s_object_is_never_counted_and_never_stays(
    backend: BackendEnv, file_store: StoreEnv, workers: LocalWorkers, run_id: str
) -> None:
    """A worker frozen past its lease records its late result as a duplicate: its object goes.

    Redis says "duplicate" when it is recorded, so the worker deletes its object at
    once; RabbitMQ's ledger decides on read, so ``ttg verify`` removes it (a stray).
    """
    h = StoreHarness(backend, file_store, workers)
    h.seed(run_id, "--params", "10", "--chunk-size", "10", "--work-ms", "3000")
    (first,) = workers.start(1, TTG_LEASE_SECONDS="1")
    eventually(lambda: h.ttg_json("status", "--run", run_id)["in_flight"], timeout=30)
    workers.kill(first, signal.SIGSTOP)
    workers.start(1, TTG_LEASE_SECONDS="1")
    scenarios.wait_complete(h, run_id, timeout=60)
    workers.kill(first, signal.SIGCONT)
    eventually(lambda: h.ttg_json("status", "--run", run_id)["duplicates"] == 1, timeout=60)
    if backend.name == "redis":
        # Written, refused by the ledger, deleted by the worker that wrote it.
        eventually(lambda: len(h.objects(run_id)) == 1, timeout=10, what="one object left")
    report = scenarios.assert_verified(h, run_id)
    assert report["objects_checked"] == 1, report
    assert report["strays_removed"] == (0 if backend.name == "redis" else 1), report
    assert len(h.objects(run_id)) == 1


def test_seed_refuses_a_store_it_cannot_use(
    backend: BackendEnv, s3_server: SeaweedS3, run_id: str, tmp_path: Path
) -> None:
    def seed(url: str, **env: str) -> tuple[int, str]:
        p = ttg("seed", "--run", run_id, "--params", "10", "--chunk-size", "5",
                env={**backend.env, "TTG_RESULTS_URL": url, **env})  # fmt: skip
        return p.returncode, p.stderr.strip()

    code, err = seed("ftp://x/y")
    assert code == 2 and "TTG_RESULTS_URL" in err and len(err.splitlines()) == 1, err
    code, err = seed(f"file://{tmp_path}/not-mounted")
    assert code == 3 and "not a directory" in err and len(err.splitlines()) == 1, err
    code, err = seed(f"s3://{BUCKET}/p", **{**s3_server.env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert code == 4 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    dead_port = free_port()
    code, err = seed(
        f"s3://{BUCKET}/p", **{**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead_port}"}
    )
    assert code == 3 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    # Nothing was seeded by any of them.
    assert run_id not in backend.broker().runs()


def test_delete_keeps_the_run_while_its_store_is_unreachable(
    backend: BackendEnv,
    s3_server: SeaweedS3,
    workers: LocalWorkers,
    run_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = StoreEnv("s3", f"s3://{BUCKET}/del-{run_id}", dict(s3_server.env), server=s3_server)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    h = StoreHarness(backend, store, workers)
    h.seed(run_id, "--params", "100", "--chunk-size", "10")
    workers.start(1, **store.env)
    scenarios.wait_complete(h, run_id, timeout=60)
    dead = {**h.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    p = ttg("delete", "--run", run_id, env=dead)
    assert p.returncode == 3 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert h.ttg_json("status", "--run", run_id)["_exit"] == 0  # the run is still there
    assert len(h.objects(run_id)) == 10
    # A certificate is for a results store's dataset: a broker run has none to prove.
    broker_run = f"{run_id}-b"
    assert ttg("seed", "--run", broker_run, "--params", "10", "--chunk-size", "5",
               env=backend.env).returncode == 0  # fmt: skip
    cert = str(tmp_path / "c.json")
    p = ttg("verify", "--run", broker_run, "--certificate", cert, env=backend.env)
    assert p.returncode == 2 and "keeps its results in the broker" in p.stderr, p.stderr
    deleted = h.ttg_json("delete", "--run", run_id)
    assert deleted["results_deleted"] and h.objects(run_id) == []
