"""Garbage in the broker, written with raw redis/pika calls, met by real workers and the real CLI.

DESIGN.md invariant 12: one run's garbage is that run's reported problem; it never
ends a process, loops a connection, or stops the other runs. And run specs are
forward compatible: a newer seeder's spec is read (unknown fields ignored) or
skipped (a required feature unknown), an older seeder's spec is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
import pytest
import redis

from tests.conftest import BackendEnv
from tests.helpers import eventually, ttg, ttg_json
from ttg import run as runs
from ttg.processes import LocalWorkers
from ttg.run import RunSpec
from ttg.space import RangeSpace

pytestmark = pytest.mark.integration

#: The fields of a spec as ttg 0.3 wrote it (format 1).
FORMAT_1 = {"run", "space", "chunk_size", "compute", "work_ms", "max_deliveries"}
#: A spec nested far deeper than any reader's recursion limit.
DEEP = "[" * 50_000 + "]" * 50_000


# -- writing garbage with the clients themselves -------------------------------------------------


def raw_redis(backend: BackendEnv) -> redis.Redis:
    return redis.Redis.from_url(backend.url, decode_responses=True)


@contextmanager
def raw_channel(backend: BackendEnv) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(backend.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        yield ch
    finally:
        conn.close()


def publish(ch: Any, queue: str, body: bytes | dict[str, Any], headers: Any = None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    ch.basic_publish("", queue, data, pika.BasicProperties(headers=headers), mandatory=True)


def stream(ch: Any, name: str) -> None:
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})


def plant_run(backend: BackendEnv, run: str, spec_text: str) -> None:
    """A run as a seeder would announce it, with ``spec_text`` as its spec."""
    if backend.name == "redis":
        r = raw_redis(backend)
        r.set(f"ttg:{{{run}}}:spec", spec_text)
        r.hset(f"ttg:{{{run}}}:meta", mapping={"total": 3, "control": "running", "seeded_at": 1})
        r.xgroup_create(f"ttg:{{{run}}}:tasks", "ttg", id="0", mkstream=True)
        r.xadd(f"ttg:{{{run}}}:tasks", {"c": "0", "a": "0"})
        r.sadd("ttg:runs", run)
        r.incr("ttg:runs:gen")
        return
    body = f'{{"run": "{run}", "t": 1, "spec": {spec_text}}}'.encode()
    if not spec_text.startswith(("{", "[", '"')) and spec_text not in ("null", "5"):
        body = b'{"run": "' + run.encode() + b'", "spec": ' + json.dumps(spec_text).encode() + b"}"
    with raw_channel(backend) as ch:
        stream(ch, f"ttg.{run}.meta")
        stream(ch, "ttg.runs")
        publish(ch, f"ttg.{run}.meta", body)
        publish(ch, "ttg.runs", body)


def plant_junk_in_the_run_list(backend: BackendEnv) -> None:
    """Entries of the list of runs that are no run at all."""
    if backend.name == "redis":
        raw_redis(backend).sadd("ttg:runs", "Not A Run}{", "x" * 300)
        return
    with raw_channel(backend) as ch:
        stream(ch, "ttg.runs")
        for body in (
            b"\xff\xfe not json",
            b"[1, 2]",
            DEEP.encode(),
            b'{"deleted": [1]}',
            b'{"run": "Not A Run", "spec": {}}',
            b'{"run": "r", "control": ["paused"]}',
            b'{"sync": {"a": 1}}',
            b'{"t": NaN}',
        ):
            publish(ch, "ttg.runs", body)


def good_spec_json(run: str, **extra: Any) -> str:
    spec = RunSpec(run, RangeSpace(0, 30).to_spec(), 10, "ttg.compute:square").to_dict()
    return json.dumps({**spec, **extra})


def seed(backend: BackendEnv, run: str, *args: str) -> None:
    ttg("seed", "--run", run, "--params", "400", "--chunk-size", "20", *args, env=backend.env,
        check=True)  # fmt: skip


def worker_log(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("*.log")))


def verified(backend: BackendEnv, run: str) -> bool:
    return bool(ttg_json("verify", "--run", run, env=backend.env)["ok"])


# -- unreadable and unsupported runs beside ordinary ones -----------------------------------------


def test_garbage_runs_never_stop_workers_or_readers(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    bad = {
        f"{run_id}-notjson": "not json",
        f"{run_id}-compute": good_spec_json(f"{run_id}-compute", compute=5),
        f"{run_id}-deep": good_spec_json(f"{run_id}-deep").replace(
            '"axes"', '"x": ' + "[" * 100 + "]" * 100 + ', "axes"'
        ).replace('"start": 0', '"start": ' + "[" * 100 + "0" + "]" * 100),
        f"{run_id}-nan": good_spec_json(f"{run_id}-nan").replace(
            '"chunk_size": 10', '"chunk_size": NaN'
        ),
        f"{run_id}-other": good_spec_json("somebody-else"),
        f"{run_id}-huge": good_spec_json(f"{run_id}-huge", chunk_size=10**30),
    }  # fmt: skip
    for run, text in bad.items():
        plant_run(backend, run, text)
    if backend.name == "redis":
        # A spec nested beyond any recursion limit (on RabbitMQ such an announcement
        # names no run at all: it is junk in the run list, below).
        bad[f"{run_id}-deeper"] = DEEP
        plant_run(backend, f"{run_id}-deeper", DEEP)
    plant_junk_in_the_run_list(backend)
    seed(backend, run_id)
    names = workers.start(2)
    eventually(lambda: verified(backend, run_id), timeout=90, what="the ordinary run verified")
    assert workers.alive() == names, "no worker exited"
    log = worker_log(tmp_path)
    assert "Traceback" not in log
    for run in bad:
        # One line per worker and run, however often the run is rescanned.
        assert len(re.findall(f"run {run}: unreadable spec.*skips the run", log)) <= len(names)

    for run in bad:
        proc = ttg("status", "--run", run, env=backend.env)
        assert proc.returncode == 5, proc.stderr
        assert proc.stderr.startswith(f"ttg: error: run {run}: unreadable spec: ")
        assert proc.stderr.count("\n") == 1 and len(proc.stderr) < 600
    listed = ttg_json("runs", env=backend.env)
    assert listed["_exit"] == 0
    # Junk in the list of runs belongs to no run: `ttg runs` reports it, and no other
    # command warns about it on every call.
    assert listed["problems"], listed
    good = ttg("status", "--run", run_id, env=backend.env)
    assert good.returncode == 0 and good.stderr == "", good.stderr
    states = {r["run"]: r for r in listed["runs"]}
    assert states[run_id]["state"] == "complete"
    for run in bad:
        assert states[run]["state"] == "unreadable" and states[run]["problems"], states[run]
    for run in bad:
        assert ttg("delete", "--run", run, env=backend.env).returncode == 0
        assert ttg("status", "--run", run, env=backend.env).returncode == 2
    # The workers go on serving new runs after all that.
    seed(backend, f"{run_id}-after")
    eventually(lambda: verified(backend, f"{run_id}-after"), timeout=90, what="a later run")
    assert workers.alive() == names


def test_rolling_upgrade_newer_and_older_specs_beside_ordinary_runs(
    backend: BackendEnv,
    workers: LocalWorkers,
    run_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A newer seeder's specs (an extra field; a feature these workers lack) and an older one's."""
    admin = backend.broker()
    plain = RunSpec(run_id, RangeSpace(0, 400).to_spec(), 20, "ttg.compute:square")
    newer, unsupported, older = (
        RunSpec(f"{run_id}-{kind}", RangeSpace(0, 400).to_spec(), 20, "ttg.compute:square")
        for kind in ("newer", "unsupported", "older")
    )
    admin.seed(plain)
    original = RunSpec.to_dict

    def written_by_a_newer_seeder(self: RunSpec) -> dict[str, Any]:
        return {**original(self), "format": 3, "colour": "blue", "retries": {"max": 7}}

    monkeypatch.setattr(RunSpec, "to_dict", written_by_a_newer_seeder)
    admin.seed(newer)
    # The newer seeder knows "teleport" and requires it; these workers do not know it.
    monkeypatch.setattr(runs, "FEATURES", frozenset({"teleport"}))
    admin.seed(
        RunSpec(
            unsupported.run, unsupported.space, 20, "ttg.compute:square", requires=("teleport",)
        )
    )
    monkeypatch.setattr(runs, "FEATURES", frozenset())

    def written_by_an_older_seeder(self: RunSpec) -> dict[str, Any]:
        return {k: v for k, v in original(self).items() if k in FORMAT_1}

    monkeypatch.setattr(RunSpec, "to_dict", written_by_an_older_seeder)
    admin.seed(older)
    monkeypatch.undo()

    names = workers.start(2)
    for spec in (plain, newer, older):
        eventually(lambda s=spec: verified(backend, s.run), timeout=90, what=f"{spec.run} verified")
    assert workers.alive() == names
    status = ttg("status", "--run", unsupported.run, env=backend.env)
    assert status.returncode == 5
    assert "requires teleport, which this version of ttg does not know" in status.stderr
    row = next(r for r in ttg_json("runs", env=backend.env)["runs"] if r["run"] == unsupported.run)
    assert row["state"] == "unsupported"
    log = worker_log(tmp_path)
    assert 1 <= len(re.findall(f"run {unsupported.run}: its spec .*skips the run", log)) <= 2
    assert "Traceback" not in log
    assert ttg("delete", "--run", unsupported.run, env=backend.env).returncode == 0


# -- garbage among a readable run's records -----------------------------------------------------


def plant_garbage_records(backend: BackendEnv, run: str) -> None:
    """Garbage in the ledger, tallies, events, meta and activity of a finished run."""
    if backend.name == "redis":
        r = raw_redis(backend)
        k = f"ttg:{{{run}}}:"
        r.hset(k + "ledger", mapping={"999999": "{}", "abc": "x", "-1": "[]"})
        r.hset(k + "stats", mapping={"duplicates": "many", "redelivered": "1e3"})
        r.xadd(k + "events", {"k": "failed", "t": "soon", "d": "x"})
        r.xadd(k + "events", {"k": "failed", "t": "1", "d": "oops\x1b]0;pwned\x07\x1b[2J"})
        r.hset(k + "meta", "seeded_at", "yesterday")
        return
    with raw_channel(backend) as ch:
        for body in (
            b"not json",
            DEEP.encode(),
            {"o": 5},
            {"o": [{"c": "x"}, {"c": 999999, "s": "ok"}, 7]},
            {"e": "retry", "g": "x", "c": "zz"},
            {"e": "failed", "t": 1, "d": "oops\x1b]0;pwned\x07\x1b[2J"},
        ):
            publish(ch, f"ttg.{run}.ledger", body)
        publish(ch, f"ttg.{run}.activity", {"w": ["x"], "t": "now", "h": 5})
        publish(ch, f"ttg.{run}.meta", {"cursor": "many"})


def test_garbage_records_are_problems_of_their_run(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    seed(backend, run_id)
    workers.start(1)
    eventually(lambda: verified(backend, run_id), timeout=90, what="the run verified")
    plant_garbage_records(backend, run_id)

    status = ttg("status", "--run", run_id, env=backend.env)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    assert "problem: " in status.stdout and "\x1b" not in status.stdout
    report = ttg_json("status", "--run", run_id, env=backend.env)
    assert report["problems"] and report["state"] == "complete"

    verdict = ttg_json("verify", "--run", run_id, env=backend.env)
    assert verdict["_exit"] == 1 and not verdict["ok"] and verdict["missing"] == 0
    assert any(p.startswith("unreadable: ") for p in verdict["problems"]), verdict["problems"]

    results = ttg("results", "--run", run_id, "--format", "csv", env=backend.env)
    assert results.returncode == 0 and "Traceback" not in results.stderr
    assert len(results.stdout.splitlines()) == 401, "every parameter's row"
    assert "could not be read" in results.stderr and results.stderr.count("\n") <= 2

    for args in (("runs", "--json"), ("retry", "--run", run_id), ("report", "--run", run_id,
                 "--output", str(tmp_path / "r.html"))):  # fmt: skip
        proc = ttg(*args, env=backend.env)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert workers.alive(), "the worker lives on"


# -- the allowlist: only functions an allowed module defines ---------------------------------


def test_an_allowed_module_cannot_hand_out_what_it_imported(
    backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    """``tests`` is allowed, and tests.hostile_pkg imports subprocess.check_output and os.system.

    check_output(value) of a grid point iterates its axis names: the axes below
    would be the command line ``sh -c 'touch MARKER'``.
    """
    marker = tmp_path / "pwned"
    space = f"grid:sh=1;-c=1;touch {marker}=1"
    for n, attr in enumerate(("check_output", "system", "shell", "Runner")):
        compute = f"tests.hostile_pkg:{attr}"
        proc = ttg("seed", "--run", f"{run_id}-{n}", "--space", space, "--chunk-size", "1",
                   "--compute", compute, env=backend.env)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "not allowed" in proc.stderr or "not a function" in proc.stderr, proc.stderr
    # A seeder without the user's code cannot check what the name is; workers can.
    ttg("seed", "--run", run_id, "--space", space, "--chunk-size", "1", "--no-check",
        "--compute", "tests.hostile_pkg:check_output", env=backend.env, check=True)  # fmt: skip
    honest = f"{run_id}-honest"
    ttg("seed", "--run", honest, "--params", "50", "--chunk-size", "5",
        "--compute", "tests.hostile_pkg:scaled", env=backend.env, check=True)  # fmt: skip
    workers.start(2)
    eventually(lambda: verified(backend, honest), timeout=90, what="the honest compute ran")

    def refused() -> bool:
        report = ttg_json("status", "--run", run_id, env=backend.env)
        # Dead with the reason, or declined by every worker: either way, never computed.
        return report["dead"] == 1 or any("cannot run" in w for w in report["warnings"])

    eventually(refused, timeout=60, what="the imported callable refused")
    assert not marker.exists(), "check_output ran in a worker"
    report = ttg_json("status", "--run", run_id, env=backend.env)
    assert report["done"] == 0 and "defined in 'subprocess'" in " ".join(
        report["recent_errors"] + report["warnings"]
    )
