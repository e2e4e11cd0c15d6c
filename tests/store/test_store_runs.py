"""Runs with a results store, end to end: real brokers, real worker processes, real signals.

Every backend with every store (a directory, and SeaweedFS over S3): seed, workers,
a worker SIGKILLed mid-run, verify, results, the dataset read directly, retry after
a fix, the certificate checked offline, delete.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from tests import scenarios
from tests.computes import FIXED_ENV, POISON
from tests.conftest import BackendEnv
from tests.helpers import ROOT, ttg, ttg_json
from tests.store.conftest import StoreEnv
from tests.store.s3server import BUCKET
from ttg.processes import LocalWorkers
from ttg.store import open_store
from ttg.store.chunks import run_prefix

#: The lease of these runs' workers, seconds.
LEASE = 2.0


@dataclass
class StoreHarness:
    """``tests.scenarios.Harness`` for a run whose results are in ``store``."""

    backend: BackendEnv
    store: StoreEnv
    workers: LocalWorkers

    @property
    def env(self) -> dict[str, str]:
        return {**self.backend.env, **self.store.env, "TTG_RESULTS_URL": self.store.url}

    def ttg_json(self, *args: str) -> dict[str, Any]:
        return ttg_json(*args, env=self.env)

    def ttg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ttg(*args, env=self.env)

    def kill_worker(self, worker: str, sig: int) -> None:
        self.workers.kill(worker, sig)

    def restart_broker(self) -> None:
        self.backend.restart()

    def seed(self, run: str, *args: str) -> dict[str, Any]:
        out = self.ttg_json("seed", "--run", run, *args)
        assert out["_exit"] == 0, out
        return out

    def objects(self, run: str) -> list[str]:
        return sorted(n for n, _ in open_store(self.store.url).list(run_prefix(run)))

    def dataset(self, run: str) -> Any:
        """The run's folder read directly as a Parquet dataset (what pandas does)."""
        if self.store.root is not None:
            return ds.dataset(self.store.root / "runs" / run).to_table()
        path = f"{BUCKET}/{self.store.url.split('/', 3)[3]}/runs/{run}/"
        return ds.dataset(path, filesystem=open_store(self.store.url).fs).to_table()  # type: ignore[attr-defined]

    def dataset_url(self, run: str) -> str:
        return f"{self.store.url}/runs/{run}"


def test_a_run_with_a_results_store_end_to_end(
    backend: BackendEnv, store: StoreEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    h = StoreHarness(backend, store, workers)
    fixed = tmp_path / "fixed"
    # 60 chunks of 300 ms (6 s of work for 3 workers): on a loaded machine a status read
    # takes a second or more, and the victim must still have work in hand when it lands.
    params, chunk = 6000, 100
    h.seed(run_id, "--params", str(params), "--chunk-size", str(chunk), "--work-ms", "300",
           "--compute", "tests.computes:explode_on_13_until_fixed")  # fmt: skip
    workers.start(3, TTG_LEASE_SECONDS=str(LEASE), **{FIXED_ENV: str(fixed)}, **store.env)

    killed = scenarios.kill_worker_holding_chunk_at(h, run_id, 0.3)
    assert workers.wait(killed.worker, timeout=10) == -signal.SIGKILL
    scenarios.wait_complete(h, run_id, timeout=180)

    report = scenarios.assert_verified(h, run_id, allow_failed=True)
    assert (report["errors"], report["param_errors"], report["dead"]) == (1, 1, 0), report
    assert report["results"] == store.url and report["objects_checked"] == params // chunk
    assert report["redelivered"] >= 1
    # The ledger holds references, never results.
    ledger = list(backend.broker().ledger(run_id))
    assert len(ledger) == params // chunk
    assert all(o.result is None and o.ref is not None and o.ref.rows == chunk for o in ledger)

    # The folder reads directly as one dataset, each parameter once (verify swept strays).
    table = h.dataset(run_id)
    assert table.num_rows == params
    assert sorted(table.column("index").to_pylist()) == list(range(params))
    rows = {r["index"]: r for r in table.to_pylist()}
    assert rows[POISON]["status"] == "error" and "cannot compute" in rows[POISON]["error"]
    assert rows[POISON]["result"] is None and json.loads(rows[7]["result"]) == 49

    # `ttg results` reads the store: the same rows as for a broker run.
    out = h.ttg("results", "--run", run_id)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["index"] for r in lines] == list(range(params))
    assert lines[POISON]["status"] == "error" and lines[12]["result"] == 144

    # The bug fixed, `ttg retry` re-runs chunk 0; its old object becomes a stray.
    fixed.touch()
    retry = h.ttg_json("retry", "--run", run_id)
    assert (retry["_exit"], retry["errors"]) == (0, 1), retry
    scenarios.wait_complete(h, run_id, timeout=120)
    cert = tmp_path / "cert.json"
    report = h.ttg_json("verify", "--run", run_id, "--certificate", str(cert))
    assert report["ok"] and report["closed_form"] == "not-applicable", report
    assert report["strays_removed"] >= 1 and report["pending_objects"] == 0, report
    assert len(h.objects(run_id)) == params // chunk
    assert sum(json.loads(r) for r in h.dataset(run_id).column("result").to_pylist()) == sum(
        i * i for i in range(params)
    )

    # The certificate, checked against the dataset alone (no broker in the environment).
    offline = ttg_json("verify", "--offline", "--certificate", str(cert), h.dataset_url(run_id),
                       env=store.env)  # fmt: skip
    assert offline["_exit"] == 0 and offline["ok"] and offline["root_match"], offline
    assert (offline["objects"], offline["rows"]) == (params // chunk, params)
    if store.root is not None:
        script = subprocess.run(
            [sys.executable, str(ROOT / "docs" / "check_certificate.py"), str(cert),
             str(store.root / "runs" / run_id)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert script.returncode == 0, script.stderr
        assert "matches the certificate; verified: True" in script.stdout

    deleted = h.ttg_json("delete", "--run", run_id)
    assert deleted["_exit"] == 0 and deleted["results_deleted"], deleted
    assert h.objects(run_id) == []
    assert h.ttg("status", "--run", run_id).returncode == 2


def test_verify_fails_naming_the_chunk_of_a_deleted_or_altered_object(
    backend: BackendEnv, store: StoreEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    h = StoreHarness(backend, store, workers)
    h.seed(run_id, "--params", "500", "--chunk-size", "50")
    workers.start(1, **store.env)
    scenarios.wait_complete(h, run_id, timeout=60)
    cert = tmp_path / "cert.json"
    assert h.ttg_json("verify", "--run", run_id, "--certificate", str(cert))["ok"]
    s = open_store(store.url)
    by_chunk = {o.chunk: o.ref for o in backend.broker().ledger(run_id)}
    assert by_chunk[3] is not None and by_chunk[7] is not None
    s.delete(by_chunk[3].name)
    data = bytearray(s.get(by_chunk[7].name))
    data[len(data) // 2] ^= 0x01
    s.put(by_chunk[7].name, bytes(data))

    report = h.ttg_json("verify", "--run", run_id)
    assert report["_exit"] == 1 and not report["ok"] and not report["verified"], report
    problems = report["problems"]
    assert any(p.startswith("chunk 3: ") and p.endswith("is missing") for p in problems), problems
    assert any(p.startswith("chunk 7: ") and "altered" in p for p in problems), problems
    text = h.ttg("verify", "--run", run_id)
    assert text.returncode == 1 and "NOT VERIFIED" in text.stdout and "chunk 3" in text.stdout
    # An export refuses the damaged run in one line, naming the chunk.
    export = h.ttg("results", "--run", run_id)
    # (Objects are read in the ledger's order, before the export sorts: either one first.)
    assert export.returncode == 1 and re.search(r"chunk [37]: ", export.stderr), export.stderr
    assert len(export.stderr.strip().splitlines()) == 1 and "Traceback" not in export.stderr
    # Offline, the dataset no longer matches the certificate.
    offline = ttg_json("verify", "--offline", "--certificate", str(cert), h.dataset_url(run_id),
                       env=store.env)  # fmt: skip
    assert offline["_exit"] == 1 and not offline["ok"], offline
    assert offline["missing_sample"][0] == 3 and not offline["root_match"], offline
    # The altered object is unreadable (chunk 7 missing too) or holds other bytes: either
    # way the root hash differs (the certificate is small: it names no chunk's digest).
    assert any("root hash" in p for p in offline["problems"]), offline
