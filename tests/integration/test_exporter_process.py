"""A real ``ttg exporter`` over real brokers: counters that only grow, one run's garbage, a flood.

Garbage is written with the brokers' own clients (redis-py, pika), beside
healthy runs, into brokers of the module's own: a garbage run announcement
stays in RabbitMQ's ``ttg.runs`` stream for good, and must not reach the
session's shared node, whose other tests' workers replay it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BackendEnv, ConsumerFactory, backend_env
from tests.helpers import child_env, eventually
from ttg import compute
from ttg.broker import Consumer
from ttg.brokers.rabbitmq.connection import RUNS as RABBITMQ_RUNS
from ttg.brokers.rabbitmq.connection import parameters, queue
from ttg.brokers.redis.client import RUNS as REDIS_RUNS
from ttg.brokers.redis.client import key
from ttg.processes import RabbitMQNode, RedisServer, free_port, wait_port
from ttg.run import Delivery, Outcome, RunSpec, Status
from ttg.space import RangeSpace

pytestmark = pytest.mark.integration

#: What each check may wait: the exporter reads every 2 s; 2 cores, loaded.
TIMEOUT = 60


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def own_backend(request: pytest.FixtureRequest) -> Iterator[BackendEnv]:
    server: RedisServer | RabbitMQNode
    server = RedisServer().start() if request.param == "redis" else RabbitMQNode().start()
    try:
        yield from backend_env(request.param, server)
    finally:
        server.stop()


@dataclass
class ExporterProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics(self) -> dict[tuple[str, str], float]:
        """(sample name, run or "") -> value; ttg_run_info's key is "run/state"."""
        code, body = self.get("/metrics")
        assert code == 200, body
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                run = s.labels.get("run", "")
                out[s.name, f"{run}/{s.labels['state']}" if "state" in s.labels else run] = s.value
        return out

    def queue(self) -> dict[str, Any]:
        code, body = self.get("/api/queue")
        assert code == 200, body
        out: dict[str, Any] = json.loads(body)
        return out

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))


@contextlib.contextmanager
def exporter_process(env: BackendEnv, tmp_path: Path) -> Iterator[ExporterProcess]:
    """A real ``ttg exporter`` reading ``env``'s broker, on a free port; its log shown after."""
    port = free_port()
    log = tmp_path / "exporter.log"
    with ExitStack() as stack:
        out = stack.enter_context(log.open("wb"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "ttg", "exporter"],
            env=child_env({**env.env, "TTG_METRICS_PORT": str(port)}),
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
        stack.callback(lambda: proc.poll() is None and proc.kill())
        wait_port(port, timeout=30)
        yield ExporterProcess(proc, port, log)
        print(f"--- exporter log\n{log.read_text()[-4000:]}")  # noqa: T201


@pytest.fixture
def exporter(own_backend: BackendEnv, tmp_path: Path) -> Iterator[ExporterProcess]:
    with exporter_process(own_backend, tmp_path) as e:
        yield e


def spec(run: str, chunks: int = 4) -> RunSpec:
    return RunSpec(run, RangeSpace(0, 10 * chunks).to_spec(), 10, compute.DEFAULT_COMPUTE)


def ok(d: Delivery) -> Outcome:
    values = [x * x for x in range(d.lo, d.hi)]
    return Outcome(
        d.chunk, Status.OK, d.hi - d.lo, "w", d.attempt, 0.0, values, round=d.round
    )  # fmt: skip


def fetch(c: Consumer, run: str, n: int) -> list[Delivery]:
    got: list[Delivery] = []

    def more() -> bool:
        got.extend(d for d in c.fetch(0.2, n - len(got)) if d.run == run)
        return len(got) == n

    eventually(more, timeout=TIMEOUT, what=f"{n} deliveries of {run}")
    return got


# -- counters that only grow --------------------------------------------------------------


def test_a_retry_never_makes_the_exporters_counters_go_down(
    own_backend: BackendEnv, exporter: ExporterProcess, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker = own_backend.broker()
    broker.seed(spec(run_id))
    c = new_consumer(broker, "test-worker", lease=30, prefetch=4)
    a, b, d, e = fetch(c, run_id, 4)
    bad = Outcome(
        b.chunk, Status.ERRORS, 10, "w", 1, 0.0, [None] * 10, error="boom",
        param_errors=tuple((i, "boom") for i in range(b.lo, b.lo + 3)), round=b.round,
    )  # fmt: skip
    c.complete([(a, ok(a)), (b, bad), (d, Outcome.dead(d, "w", "lost")), (e, ok(e))])
    finished, computed = "ttg_run_chunks_finished_total", "ttg_run_parameters_finished_total"

    def read(**want: float) -> dict[tuple[str, str], float]:
        m = exporter.metrics()
        got = {name: m.get((f"ttg_run_{name}", run_id)) for name in want}
        assert got == want
        return m

    eventually(lambda: read(chunks_finished_total=4, parameters_finished_total=27), timeout=TIMEOUT)
    # Before, the exporter's counters fell by what the retry took back (2 chunks,
    # 7 parameters): Prometheus read a reset, and a rate of everything since 0.
    assert broker.retry(run_id).requeued == 2
    eventually(
        lambda: read(chunks_done=2, chunks_finished_total=4, chunks_retried_total=2),
        timeout=TIMEOUT,
    )
    assert exporter.metrics()[computed, run_id] == 27
    again = fetch(c, run_id, 2)
    c.complete([(x, ok(x)) for x in again])
    m = eventually(lambda: read(chunks_done=4, chunks_finished_total=6), timeout=TIMEOUT)
    assert m[computed, run_id] == 47 and m[finished, run_id] == 6
    c.close()


# -- one run's garbage --------------------------------------------------------------------


def spoil_redis(env: BackendEnv, runs: dict[str, str]) -> None:
    """Garbage in each run, as a bug or a hostile writer with the broker's password leaves it."""
    client = redis.Redis.from_url(env.url, decode_responses=True)
    try:
        client.hset(key(runs["tally"], "stats"), "done", "many")
        client.delete(key(runs["type"], "stats"))
        client.set(key(runs["type"], "stats"), "not a hash")  # WRONGTYPE on every read
        client.hset(key(runs["ledger"], "ledger"), "0", "\x00garbage")
        spec_run = runs["spec"]
        client.set(key(spec_run, "spec"), f'{{"run": "{spec_run}", "space": [[[')
        client.hset(key(spec_run, "meta"), mapping={"total": 3, "control": "running"})
        client.sadd(REDIS_RUNS, spec_run)
    finally:
        client.close()


def spoil_rabbitmq(env: BackendEnv, runs: dict[str, str]) -> None:
    conn = pika.BlockingConnection(parameters(env.url, env.tls, heartbeat=30))
    try:
        ch = conn.channel()
        ch.confirm_delivery()

        def publish(name: str, msg: object) -> None:
            ch.basic_publish("", name, json.dumps(msg).encode(), mandatory=True)

        publish(queue(runs["tally"], "meta"), {"cursor": "many"})
        publish(queue(runs["type"], "meta"), {"cursor": [1, 2]})
        publish(queue(runs["ledger"], "ledger"), {"e": "retry", "g": "x", "c": [[0, "dead"]]})
        spec_run = runs["spec"]
        stream = {"x-queue-type": "stream"}
        for name in ("meta", "ledger", "activity"):
            ch.queue_declare(queue(spec_run, name), durable=True, arguments=stream)
        ch.queue_declare(
            queue(spec_run, "tasks"), durable=True, arguments={"x-queue-type": "quorum"}
        )
        garbage = {"run": spec_run, "space": 12, "colour": "red"}
        publish(queue(spec_run, "meta"), {"spec": garbage, "t": 0})
        publish(RABBITMQ_RUNS, {"run": spec_run, "spec": garbage, "t": 0})
    finally:
        conn.close()


def test_one_runs_garbage_never_takes_the_exporter_down(
    own_backend: BackendEnv, exporter: ExporterProcess, run_id: str
) -> None:
    broker = own_backend.broker()
    good = [f"{run_id}-good{i}" for i in range(2)]
    bad = {kind: f"{run_id}-{kind}" for kind in ("tally", "type", "ledger", "spec")}
    for run in [*good, bad["tally"], bad["type"], bad["ledger"]]:
        broker.seed(spec(run))
    eventually(lambda: set(good) <= set(exporter.queue()["runs"]), timeout=TIMEOUT)
    (spoil_redis if own_backend.name == "redis" else spoil_rabbitmq)(own_backend, bad)
    if own_backend.name == "redis":
        # The exporter reads a run's tallies, never its ledger (memory bounded by
        # counters): a garbage ledger entry is verify's to find, and the run exports on.
        good.append(bad.pop("ledger"))
    # Every read of the exporter from now on: the healthy runs as they are, the
    # broker up, and the process alive; each bad run flagged (at least once: on
    # RabbitMQ a stream's garbage is read once, then the run reads without it).
    flagged: set[str] = set()

    def healthy_and_every_bad_run_flagged() -> bool:
        assert exporter.proc.poll() is None, "the exporter exited"
        q, m = exporter.queue(), exporter.metrics()
        assert q["broker_up"] is True and m["ttg_exporter_broker_up", ""] == 1, q
        for run in good:
            assert q["runs"][run] == {"state": "running", "queued": 4, "workers": 0}, q
            assert m["ttg_run_queue_depth", run] == 4
            assert m.get(("ttg_run_problems", run)) == 0, run
        assert q["queued"] >= 8
        for run in bad.values():
            entry = q["runs"].get(run)
            if m.get(("ttg_run_problems", run), 0) >= 1:
                flagged.add(run)
                assert entry is None or "problem" in entry or entry["state"] != "unreadable"
        return flagged == set(bad.values())

    eventually(healthy_and_every_bad_run_flagged, timeout=TIMEOUT, interval=0.2)
    if own_backend.name == "redis":
        # Garbage in a Redis hash stays: so does the flag, and the exporter goes on.
        m = exporter.metrics()
        for kind in ("tally", "type", "spec"):
            assert m["ttg_run_problems", bad[kind]] >= 1, kind
        assert exporter.proc.poll() is None
    assert "Traceback" not in exporter.log.read_text()


# -- a flood of idle connections ------------------------------------------------------------


def test_thousands_of_idle_connections_never_exhaust_the_exporter(tmp_path: Path) -> None:
    server = RedisServer().start()
    try:
        env = BackendEnv("redis", server.url, server.restart)
        with exporter_process(env, tmp_path) as exporter:
            flood(exporter)
    finally:
        server.stop()


def flood(exporter: ExporterProcess) -> None:
    assert exporter.get("/healthz") == (200, b"ok\n")
    before = exporter.threads()
    idle = []
    try:
        for _ in range(6):
            for _ in range(500):
                idle.append(socket.create_connection(("127.0.0.1", exporter.port), timeout=10))
            # Each used to hold a thread, with no timeout: 18,000 reached a pod's memory.
            assert exporter.get("/healthz") == (200, b"ok\n")
            assert exporter.get("/api/queue")[0] == 200
            assert exporter.threads() <= before + 4, (len(idle), before, exporter.threads())
        # Silent connections are closed by the server (10 s to send a request).
        still_open = idle[-50:]
        for s in still_open:
            s.settimeout(TIMEOUT)
        assert all(s.recv(1) == b"" for s in still_open)
        assert exporter.get("/healthz") == (200, b"ok\n")
    finally:
        for s in idle:
            s.close()
