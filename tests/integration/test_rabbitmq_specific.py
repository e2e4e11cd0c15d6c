"""RabbitMQ backend details the shared conformance suite cannot see from the interface."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from tests.conftest import BackendEnv, ConsumerFactory, backend_env
from tests.helpers import ALONE, ROOT, eventually
from ttg import compute
from ttg.broker import Consumer
from ttg.brokers.rabbitmq.connection import open_connection, parameters, queue
from ttg.brokers.rabbitmq.seeder import CURSOR_EVERY, WINDOW, WindowedSeeder, group_size
from ttg.endpoint import TLS
from ttg.errors import TTGError
from ttg.processes import RabbitMQNode
from ttg.run import Delivery, Outcome, RunSpec, Status
from ttg.space import RangeSpace

pytestmark = pytest.mark.integration

#: What a progress reader may grow by, per 10^6 parameters of a finished run.
PROGRESS_BYTES_PER_MILLION = 2 * 1024 * 1024

RSS_PROBE = """
import sys
from ttg.endpoint import open_broker

def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])

url, run = sys.argv[1], sys.argv[2]
open_broker("rabbitmq", url).progress(run)  # everything imported, a connection open
reader = open_broker("rabbitmq", url)
before = rss_kib()
p = reader.progress(run)
print(p.done, p.done_params, rss_kib() - before)
"""


def squares(d: Delivery) -> Outcome:
    result = [x * x for x in range(d.lo, d.hi)]
    return Outcome(d.chunk, Status.OK, d.hi - d.lo, "filler", d.attempt, time.time(), result)


@pytest.fixture
def backend(rabbitmq_node: object) -> Iterator[BackendEnv]:
    yield from backend_env("rabbitmq", rabbitmq_node)  # type: ignore[arg-type]


def test_progress_of_a_finished_million_parameter_run_costs_no_memory_per_result(
    backend: BackendEnv, new_consumer: ConsumerFactory, run_id: str
) -> None:
    # A reader keeps counters and a byte per chunk, never the results (which are
    # 10^6 integers here): a million-parameter run must not cost megabytes per reader.
    broker = backend.broker()
    spec = RunSpec(run_id, RangeSpace(0, 1_000_000).to_spec(), 100, compute.DEFAULT_COMPUTE)
    broker.seed(spec)
    c = new_consumer(broker, "filler")
    done = 0
    deadline = time.monotonic() + 300
    while done < spec.total_chunks and time.monotonic() < deadline:
        batch = c.fetch(0.5, 64)
        c.complete([(d, squares(d)) for d in batch])
        done += len(batch)
    assert done == spec.total_chunks

    probe = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, backend.url, run_id],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    chunks_done, params_done, growth_kib = map(int, probe.stdout.split())
    assert (chunks_done, params_done) == (10_000, 1_000_000), probe.stdout
    print(f"progress() of a finished 10^6-parameter run grew RSS by {growth_kib} KiB")  # noqa: T201
    assert growth_kib * 1024 < PROGRESS_BYTES_PER_MILLION, growth_kib


def test_an_outcome_the_broker_did_not_take_leaves_its_task_to_come_back(
    backend: BackendEnv, rabbitmq_node: RabbitMQNode, new_consumer: ConsumerFactory, run_id: str
) -> None:
    # Result first, then the acknowledgement (invariant 3). Publishers blocked by a
    # memory alarm, a worker's outcome publish hangs; its connection is then cut. Had
    # the task been acknowledged before the result was durable, the chunk would be
    # gone for good; it must come back.
    broker = backend.broker()
    broker.seed(RunSpec(run_id, RangeSpace(0, 10).to_spec(), 10, compute.DEFAULT_COMPUTE))
    # A long lease: no activity snapshot publishes on its own schedule, so the outcome
    # is this connection's first publish once the alarm is on (a connection is blocked
    # at its first publish, after reading whatever came before it, e.g. an ack).
    holder = new_consumer(broker, f"{run_id}-holder", lease=1000)
    (d,) = eventually(lambda: holder.fetch(0.2, 1), what="the chunk delivered")
    holder.begin(d)  # computed: its loss counts a delivery
    # The snapshot that follows a delivery has gone out.
    eventually(lambda: broker.progress(run_id).in_flight, what="the chunk shown in flight")
    rabbitmq_node.ctl_run("set_vm_memory_high_watermark", "0.0001")
    try:
        attempt = threading.Thread(target=_complete_quietly, args=(holder, d), daemon=True)
        attempt.start()

        def blocked_connection() -> str | None:
            out = rabbitmq_node.ctl_run(
                "list_connections", "pid", "state", "client_properties", "--quiet",
                "--no-table-headers",
            )  # fmt: skip
            return next(
                (
                    line.split("\t")[0]
                    for line in out.splitlines()
                    if f"{run_id}-holder" in line and "\tblocked\t" in line
                ),
                None,
            )

        pid = eventually(blocked_connection, timeout=60, what="the outcome's publish blocked")
        holder.close()  # no reconnection: the chunk goes back to the queue, not to it
        rabbitmq_node.ctl_run("close_connection", pid, "test: cut while blocked")
    finally:
        rabbitmq_node.ctl_run("set_vm_memory_high_watermark", "0.4")
    other = new_consumer(broker, f"{run_id}-other")
    (again,) = eventually(lambda: other.fetch(0.2, 1), timeout=60, what="the chunk back")
    assert again.chunk == d.chunk and again.attempt >= 2


def _complete_quietly(c: Consumer, d: Delivery) -> None:
    with contextlib.suppress(TTGError):
        c.complete([(d, squares(d))])


def test_a_seeder_is_never_further_ahead_of_its_durable_cursor_than_it_may_republish(
    backend: BackendEnv, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a seeder killed at its worst moment publishes twice is how far its publishes
    # run ahead of the cursor the broker confirmed. The cursor's own confirms come back
    # later than the tasks' (another queue), so a window of task confirms alone let the
    # lead reach 9,361 chunks against a documented bound of 5,000.
    leads: list[int] = []
    publish = WindowedSeeder._publish

    def watched(self: WindowedSeeder, *args: Any) -> int:
        leads.append(self.next - self.durable)
        return publish(self, *args)

    monkeypatch.setattr(WindowedSeeder, "_publish", watched)
    spec = RunSpec(run_id, RangeSpace(0, 30_000_000).to_spec(), 1000, compute.DEFAULT_COMPUTE)
    report = backend.broker().seed(spec)
    assert report.seeded_chunks == spec.total_chunks == 30_000
    bound = WINDOW * group_size(spec.chunk_size) + CURSOR_EVERY
    assert max(leads) <= bound, f"{max(leads)} chunks ahead of the durable cursor"


def test_garbage_in_the_begun_stream_is_skipped_and_judges_nothing(
    backend: BackendEnv, new_consumer: ConsumerFactory, run_id: str
) -> None:
    broker = backend.broker()
    broker.seed(RunSpec(run_id, RangeSpace(0, 4 * ALONE).to_spec(), ALONE, compute.DEFAULT_COMPUTE))
    conn = open_connection(parameters(backend.url, TLS(), 10))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for junk in (b"not json", b"[1]", b'{"b": [[99, 1]]}', b'{"b": [["x", 1]]}', b"{}"):
            ch.basic_publish("", queue(run_id, "begun"), junk)
    finally:
        conn.close()
    gone = new_consumer(broker, "gone", lease=1.0, prefetch=4)
    held: list[Delivery] = []

    def two() -> bool:
        held.extend(d for d in gone.fetch(0.2, 2 - len(held)) if d.run == run_id)
        return len(held) >= 2

    eventually(two, what="two chunks held")
    gone.begin(held[0])
    live = new_consumer(broker, "live", lease=1.0, prefetch=4)
    gone.close()
    back: dict[int, int] = {}

    def all_back() -> bool:
        for d in live.fetch(0.2, 4):
            back[d.chunk] = d.attempt
            live.complete([(d, squares(d))])
        return len(back) == 4

    eventually(all_back, timeout=30, what="every chunk done")
    assert back[held[0].chunk] == 2 and back[held[1].chunk] == 1, back


def test_a_subscription_records_the_prefetch_the_broker_was_given(
    backend: BackendEnv,
    rabbitmq_node: RabbitMQNode,
    run_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker's thread resizes the window at any time; once it did so between the
    # I/O thread's basic_qos and its record of the subscription, which then said 4 while
    # the broker held it at 1: a consumer holding one chunk never got a second.
    broker = backend.broker()
    broker.seed(RunSpec(run_id, RangeSpace(0, 40).to_spec(), 10, compute.DEFAULT_COMPUTE))
    made: list[Consumer] = []
    consume = pika.adapters.blocking_connection.BlockingChannel.basic_consume

    def resized_meanwhile(channel: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        if queue_name == queue(run_id, "tasks") and made:
            made[0].fetch(0, 4)  # what the worker's next fetch does: a window of 4 messages
        return consume(channel, queue_name, *args, **kwargs)

    monkeypatch.setattr(
        pika.adapters.blocking_connection.BlockingChannel, "basic_consume", resized_meanwhile
    )
    made.append(broker.consumer(f"{run_id}-w", lease_seconds=2.0, prefetch=4))
    c = made[0]
    c.start()
    try:
        tasks = queue(run_id, "tasks")

        def broker_prefetch() -> int | None:
            out = rabbitmq_node.ctl_run(
                "list_consumers", "queue_name", "prefetch_count", "--quiet", "--no-table-headers"
            )
            got = [line.split("\t")[1] for line in out.splitlines() if line.startswith(tasks)]
            return int(got[0]) if got else None

        given = eventually(broker_prefetch, timeout=60, what="the run's task subscription")
        (recorded,) = (s.prefetch for s in c._subscribed.values())  # type: ignore[attr-defined]
        assert recorded == given, f"recorded {recorded}, the broker was given {given}"
    finally:
        c.close()



def test_a_watcher_whose_connection_is_lost_waits_out_its_interval_then_reads_again(
    backend: BackendEnv, run_id: str
) -> None:
    # wait_progress reads on the broker's connection; losing it must cost no more than
    # the sleep it replaces: the wait runs out, the next read reconnects.
    broker = backend.broker()
    broker.seed(RunSpec(run_id, RangeSpace(0, 20).to_spec(), 10, compute.DEFAULT_COMPUTE))
    assert broker.progress(run_id).finished == 0
    broker._conn.close()  # type: ignore[attr-defined]  # as a broker restart would
    started = time.monotonic()
    broker.wait_progress(run_id, 0.5)
    assert time.monotonic() - started >= 0.5
    assert broker.progress(run_id).finished == 0
