"""The RabbitMQ consumer: one I/O thread owns the connection; the worker talks to it by queue.

pika connections are not thread-safe, and a BlockingConnection serves
heartbeats only while some thread calls into it. So the consumer's I/O thread
is the only one that touches its connection: it serves heartbeats, receives
deliveries into an inbox the worker's ``fetch`` reads, and runs the worker's
``complete``/``fail``/``release`` requests (woken by ``add_callback_threadsafe``)
while the chunk itself computes in the worker's compute thread. A chunk lasting
many heartbeat intervals never drops the connection.

After a lost connection the I/O thread reconnects with backoff. Deliveries of
the old connection are stale: RabbitMQ requeues them itself; a result computed
for one is still published to the ledger (where a second result is a
duplicate), only its acknowledgement is skipped.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import queue as queues
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions as pex

from ttg.broker import Consumer
from ttg.brokers.rabbitmq import (
    _CONNECTION_ERRORS,
    RUNS,
    RabbitMQBroker,
    open_connection,
    publish,
    queue,
    translate,
)
from ttg.errors import BrokerConnectionError
from ttg.run import Delivery, Outcome, RunSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest wait between reconnection attempts.
MAX_BACKOFF_SECONDS = 5.0
#: Shortest gap between two activity snapshots of a worker.
SNAPSHOT_MIN_INTERVAL = 0.05
#: How long ``start`` waits for the first connection.
START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class _Handle:
    """Where a delivery came from: the connection generation and its delivery tag."""

    generation: int
    tag: int


class RabbitMQConsumer(Consumer):
    def __init__(
        self, broker: RabbitMQBroker, name: str, *, lease_seconds: float, prefetch: int
    ) -> None:
        self.url = broker.url
        self.name = name
        self.prefetch = prefetch
        # Heartbeats near the lease: a partitioned worker is dropped (and its
        # chunks requeued) after about two intervals; a crashed one at once.
        self.heartbeat = max(1, round(lease_seconds))
        self.snapshot_s = lease_seconds / 4
        self._inbox: queues.Queue[Delivery] = queues.Queue()
        self._calls: queues.Queue[tuple[Callable[[], Any], cf.Future[Any]]] = queues.Queue()
        self._records: queues.Queue[tuple[Delivery, Outcome]] = queues.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: pika.BlockingConnection | None = None
        self._generation = 0
        self._specs: dict[str, RunSpec] = {}
        self._subscribed: set[str] = set()
        self._announced: list[str] = []
        #: run -> chunk -> (attempt, started): what this worker holds, for activity snapshots.
        self._held: dict[str, dict[int, tuple[int, float]]] = {}
        #: run -> chunk -> (attempt, started): held at some point since the last snapshot.
        self._recent: dict[str, dict[int, tuple[int, float]]] = {}
        self._snapshot_due = 0.0
        self._snapshot_last = 0.0
        #: A chunk was delivered since the last snapshot.
        self._dirty = False
        self._last_error: Exception | None = None

    # -- the worker's side --------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._io_loop, name="ttg-amqp-io", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS):
            self.close()
            raise BrokerConnectionError(
                f"rabbitmq: not connected after {START_TIMEOUT_SECONDS}s: {self._last_error!r}"
            )

    def fetch(self, timeout: float) -> list[Delivery]:
        try:
            first = self._inbox.get(timeout=timeout)
        except queues.Empty:
            return []
        out = [first]
        while len(out) < self.prefetch:
            try:
                out.append(self._inbox.get_nowait())
            except queues.Empty:
                break
        return [d for d in out if d.handle.generation == self._generation]

    def complete(self, delivery: Delivery, outcome: Outcome) -> bool:
        # Queued, not awaited: the I/O thread publishes every outcome queued by
        # then as one confirmed ledger message and only then acknowledges their
        # tasks, so results are durable before their acks (invariant 3) and the
        # worker computes the next chunk meanwhile. Lost before the confirm, a
        # result is simply computed again: its task was never acknowledged.
        self._records.put((delivery, outcome))
        self._wake()
        return True

    def fail(self, delivery: Delivery, error: str, *, max_deliveries: int, delay: float) -> str:
        def fail() -> str:
            ch = self._ch
            publish(
                ch,
                queue(delivery.run, "ledger"),
                {"e": "failed", "c": delivery.chunk, "w": self.name},
            )
            if delivery.attempt >= max_deliveries:
                self._record(delivery, Outcome.dead(delivery, self.name, error))
                return "dead"
            headers = {"c": delivery.chunk, "a": delivery.attempt}
            ch.basic_publish(
                "",
                queue(delivery.run, "retry"),
                b"",
                pika.BasicProperties(
                    delivery_mode=2, headers=headers, expiration=str(int(delay * 1000))
                ),
                mandatory=True,
            )
            self._ack(delivery)
            return "retry"

        return self._call(fail)

    def release(self, delivery: Delivery) -> None:
        def release() -> None:
            # A copy with the same count of earlier deliveries: a release is not a failure.
            headers = {"c": delivery.chunk, "a": delivery.attempt - 1}
            self._ch.basic_publish(
                "",
                queue(delivery.run, "tasks"),
                b"",
                pika.BasicProperties(delivery_mode=2, headers=headers),
                mandatory=True,
            )
            self._ack(delivery)

        self._call(release)

    def stop_fetching(self) -> None:
        """Cancel every task consumer, so a released chunk is not pushed back to us."""

        def cancel() -> None:
            for tag in list(self._ch.consumer_tags):
                self._ch.basic_cancel(tag)

        self._call(cancel)

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._conn is not None:
            # Queued outcomes go out (and their tasks are acked) before we leave.
            with contextlib.suppress(BrokerConnectionError):
                self._call(lambda: None)
        self._stop.set()
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                self._conn.add_callback_threadsafe(lambda: None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the I/O thread and wait for its result."""
        future: cf.Future[T] = cf.Future()
        self._calls.put((fn, future))
        self._wake()
        while True:
            try:
                return future.result(timeout=1)
            except cf.TimeoutError:
                if self._thread is None or not self._thread.is_alive():
                    raise BrokerConnectionError(
                        "rabbitmq: the consumer's I/O thread is gone"
                    ) from None

    def _wake(self) -> None:
        """Wake the I/O loop; if the connection is gone it drains the queues on reconnect."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(lambda: None)

    # -- the I/O thread -------------------------------------------------------------

    def _io_loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                if self._conn is None or not self._conn.is_open:
                    self._connect()
                    attempt = 0
                    self._ready.set()
                self._subscribe_announced()
                self._conn.process_data_events(time_limit=0.05)  # type: ignore[union-attr]
                self._flush_records()
                self._drain_calls()
                self._snapshot()
            except (pex.AMQPError, BrokerConnectionError, *_CONNECTION_ERRORS) as e:
                self._last_error = e
                self._lost(e)
                attempt += 1
                self._stop.wait(min(0.1 * 2**attempt, MAX_BACKOFF_SECONDS))
            except Exception as e:
                # A bug, not the network: say so loudly, then carry on as after a lost
                # connection. A dead I/O thread would leave the worker waiting forever.
                log.exception("rabbitmq I/O thread: unexpected error")
                self._last_error = e
                self._lost(e)
                attempt += 1
                self._stop.wait(min(0.1 * 2**attempt, MAX_BACKOFF_SECONDS))
        self._fail_pending(BrokerConnectionError("rabbitmq: consumer closed"))
        if self._conn is not None and self._conn.is_open:
            try:
                self._conn.close()
            except (pex.AMQPError, *_CONNECTION_ERRORS):
                pass

    def _connect(self) -> None:
        self._conn = open_connection(self.url, self.heartbeat)
        self._generation += 1
        self._subscribed.clear()
        self._held.clear()
        self._recent.clear()
        # Confirmed publishes (results, retries, releases) and the task deliveries.
        self._ch = self._conn.channel()
        self._ch.confirm_delivery()
        self._ch.basic_qos(prefetch_count=self.prefetch)
        # Activity snapshots are informational: no confirms, no waiting.
        self._activity = self._conn.channel()
        runs = self._conn.channel()
        runs.basic_qos(prefetch_count=100)
        runs.queue_declare(RUNS, durable=True, arguments={"x-queue-type": "stream"})
        runs.basic_consume(RUNS, self._on_run, arguments={"x-stream-offset": "first"})
        log.info("connected to rabbitmq as %s", self.name)

    def _lost(self, e: Exception) -> None:
        if self._ready.is_set():
            log.warning("rabbitmq connection lost (%r); reconnecting", e)
        self._conn = None
        # Whatever was delivered on the old connection is requeued by RabbitMQ.
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._fail_pending(BrokerConnectionError(f"rabbitmq: connection lost: {e!r}"))

    def _fail_pending(self, error: Exception) -> None:
        while True:
            try:
                _, future = self._calls.get_nowait()
            except queues.Empty:
                return
            future.set_exception(error)

    def _drain_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queues.Empty:
                return
            try:
                future.set_result(fn())
            except (pex.AMQPError, *_CONNECTION_ERRORS) as e:
                try:
                    translate(e)
                except Exception as translated:
                    future.set_exception(translated)
                raise
            except Exception as e:
                future.set_exception(e)

    def _on_run(self, ch: Any, method: Any, _props: Any, body: bytes) -> None:
        msg = json.loads(body)
        if "run" in msg:
            self._specs[msg["run"]] = RunSpec(**msg["spec"])
            self._announced.append(msg["run"])
        elif "deleted" in msg:
            # Replaying ttg.runs from the start, most deletions arrive before we subscribed.
            run = msg["deleted"]
            self._specs.pop(run, None)
            self._announced = [r for r in self._announced if r != run]
            self._subscribed.discard(run)
        ch.basic_ack(method.delivery_tag)

    def _subscribe_announced(self) -> None:
        """Start consuming the tasks (and dead letters) of runs announced on ttg.runs."""
        while self._announced:
            run = self._announced.pop(0)
            if run in self._subscribed or run not in self._specs:
                continue
            if not self._exists(queue(run, "tasks")):
                # Deleted; its deletion is further down ttg.runs than we have read.
                continue
            self._ch.basic_consume(queue(run, "tasks"), self._on_task)
            self._ch.basic_consume(queue(run, "dead"), self._on_dead)
            self._subscribed.add(run)

    def _exists(self, name: str) -> bool:
        """Probe on a throwaway channel: a missing queue closes the channel it is asked on."""
        probe = self._conn.channel()  # type: ignore[union-attr]  # the I/O thread is connected
        try:
            probe.queue_declare(name, passive=True)
        except pex.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return False
            raise
        probe.close()
        return True

    def _on_task(self, _ch: Any, method: Any, props: Any, _body: bytes) -> None:
        run = method.routing_key.split(".")[1] if method.routing_key.count(".") >= 2 else ""
        headers = props.headers or {}
        spec = self._specs.get(run)
        if spec is None:
            return  # deleted run: its queue is gone with the message
        chunk = int(headers["c"])
        attempt = int(headers.get("a", 0)) + int(headers.get("x-delivery-count", 0)) + 1
        lo, hi = spec.bounds(chunk)
        self._held.setdefault(run, {})[chunk] = (attempt, time.time())
        self._recent.setdefault(run, {})[chunk] = self._held[run][chunk]
        self._dirty = True
        if attempt > 1:
            publish(
                self._ch,
                queue(run, "ledger"),
                {"e": "redelivered", "c": chunk, "w": self.name, "a": attempt},
            )
        self._inbox.put(
            Delivery(run, chunk, lo, hi, attempt, _Handle(self._generation, method.delivery_tag))
        )

    def _on_dead(self, ch: Any, method: Any, props: Any, _body: bytes) -> None:
        """RabbitMQ dead-lettered a task (delivery limit): record the death in the ledger."""
        run = method.routing_key.split(".")[1]
        headers = props.headers or {}
        spec = self._specs.get(run)
        if spec is not None:
            chunk = int(headers["c"])
            lo, hi = spec.bounds(chunk)
            attempt = int(headers.get("a", 0)) + spec.max_deliveries + 1
            error = "delivery limit reached: the workers holding it were lost each time"
            d = Delivery(run, chunk, lo, hi, attempt, None)
            publish(ch, queue(run, "ledger"), self._outcome_body(Outcome.dead(d, self.name, error)))
        ch.basic_ack(method.delivery_tag)

    def _flush_records(self) -> None:
        """Publish the queued outcomes, one confirmed ledger message per run, then ack them."""
        batch: dict[str, list[tuple[Delivery, Outcome]]] = {}
        while True:
            try:
                d, o = self._records.get_nowait()
            except queues.Empty:
                break
            batch.setdefault(d.run, []).append((d, o))
        for run, items in batch.items():
            try:
                publish(
                    self._ch,
                    queue(run, "ledger"),
                    {"batch": [self._outcome_body(o) for _, o in items]},
                )
            except pex.UnroutableError:
                log.error("run %s was deleted: %d results dropped", run, len(items))
                continue
            for d, _ in items:
                self._ack(d)

    def _record(self, d: Delivery, outcome: Outcome) -> None:
        # Durable in the ledger (confirmed) before the task is acknowledged.
        publish(self._ch, queue(d.run, "ledger"), self._outcome_body(outcome))
        self._ack(d)

    def _ack(self, d: Delivery) -> None:
        # No snapshot for an ack: readers drop chunks that have an outcome, and a
        # snapshot taken between two chunks would show this worker holding nothing.
        self._held.get(d.run, {}).pop(d.chunk, None)
        if d.handle.generation == self._generation:
            self._ch.basic_ack(d.handle.tag)

    @staticmethod
    def _outcome_body(o: Outcome) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(o.to_json())
        body["c"] = o.chunk
        return body

    def _snapshot(self) -> None:
        """Publish, per run, the chunks this worker held since its last snapshot.

        Held *since*, not held *now*: chunks of a tenth of a second would
        otherwise mostly be caught between two chunks, holding nothing. Readers
        drop the ones whose outcome is in the ledger already.
        """
        # On schedule, or soon after a delivery, but never more than 20 times a second.
        now = time.monotonic()
        changed = self._dirty and now - self._snapshot_last >= SNAPSHOT_MIN_INTERVAL
        if now < self._snapshot_due and not changed:
            return
        self._snapshot_due = now + self.snapshot_s
        self._snapshot_last = now
        self._dirty = False
        for run in list(self._recent):
            recent = self._recent[run]
            if run in self._specs:
                snap = {
                    "w": self.name,
                    "t": time.time(),
                    "h": [[c, a, s] for c, (a, s) in recent.items()],
                }
                publish(self._activity, queue(run, "activity"), snap)
            held = self._held.get(run, {})
            if held:
                self._recent[run] = dict(held)
            else:
                del self._recent[run]  # said once that it holds nothing; quiet after
