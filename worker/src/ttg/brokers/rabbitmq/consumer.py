"""The RabbitMQ consumer: one worker's session, over the one connection its I/O thread owns.

It learns of runs, with their specs and controls, from the ``ttg.runs`` stream
over that same connection, so a delivery carries its run's spec and the worker
needs no other connection (a second one that nothing services is dropped by
the broker after missed heartbeats).

Liveness is the connection: heartbeats near the lease, served by the I/O
thread while a chunk computes; a crashed worker's socket closes and RabbitMQ
requeues its chunks at once. After a lost connection the I/O thread reconnects;
deliveries of the old connection are requeued by RabbitMQ, and an outcome
computed for one is still recorded in the ledger (where a second outcome is a
duplicate), only its acknowledgement is skipped.

A task message may carry a group of consecutive chunks (``messages.py``). The
worker sees one delivery per chunk. A group is split into single-chunk
messages — published before the group is acknowledged — whenever keeping it
whole would cost something: when it is redelivered (so a chunk that kills its
workers is isolated from the others), and when its chunks wait for the worker
longer than ``STALE_GROUP_SECONDS`` (long chunks: other workers take the rest).

A redelivered message counts a delivery only for the chunks its lost holder had
begun (``begun.py``): the others are published again with their count unchanged.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions as pex

from ttg import decode
from ttg.broker import DECLINE_SECONDS, Consumer
from ttg.brokers.rabbitmq import decode as qdecode
from ttg.brokers.rabbitmq.begun import BegunMarks
from ttg.brokers.rabbitmq.connection import (
    BEGUN_ARGS,
    RUNS,
    body,
    parameters,
    publish,
    publish_task,
    queue,
    run_of,
    task_headers,
)
from ttg.brokers.rabbitmq.iothread import IOThread
from ttg.brokers.rabbitmq.messages import Activity, Inbox, Message, Unacked
from ttg.decode import DecodeError, Throttle
from ttg.endpoint import TLS
from ttg.errors import RunDataError
from ttg.run import Delivery, LongParam, Outcome, Recorded, RunSpec

log = logging.getLogger(__name__)

#: Members of a group that wait longer than this for the worker go back as single chunks.
STALE_GROUP_SECONDS = 0.25
#: Shortest gap between two activity snapshots of a worker.
SNAPSHOT_MIN_INTERVAL = 0.05
#: One log line per skipped run (unreadable, unsupported) or garbage source at most this often.
SKIP_LOG_SECONDS = 300.0


@dataclass
class _Subscription:
    """One run's task consumer: its tag, its prefetch, and how many of its messages we hold."""

    tag: str
    prefetch: int
    unacked: int = 0


class RabbitMQConsumer(IOThread, Consumer):
    def __init__(
        self, url: str, tls: TLS, name: str, *, lease_seconds: float, prefetch: int
    ) -> None:
        # Heartbeats near the lease: a partitioned worker is dropped (and its
        # chunks requeued) after about two intervals; a crashed one at once.
        super().__init__(
            parameters(url, tls, max(1, round(lease_seconds)), name=name), "ttg-amqp-io"
        )
        self.name = name
        self.cap = prefetch
        #: Prefetch of the task subscriptions, in messages.
        self.window = 1
        #: Chunks per message of the last group received (to size the window in messages).
        self._group = 1
        #: Deliveries handed to the worker and not settled yet (the worker's thread only).
        self._unsettled = 0
        self.snapshot_s = lease_seconds / 4
        self._inbox = Inbox()
        #: run -> spec and control, from ttg.runs.
        self._specs: dict[str, RunSpec] = {}
        self._controls: dict[str, str] = {}
        #: Runs announced with a spec this worker cannot read or run: skipped.
        self._unreadable: dict[str, RunDataError] = {}
        self._skip_log = Throttle(SKIP_LOG_SECONDS)
        #: run -> its task subscription.
        self._subscribed: dict[str, _Subscription] = {}
        #: Runs this worker cannot run (``decline``) -> when to take them again.
        self._declined: dict[str, float] = {}
        self._unacked = Unacked()
        #: Runs whose dead-letter queue we consume (the worker records those deaths).
        self._dead_subscribed: set[str] = set()
        self._fetching = True
        self._activity = Activity()
        #: The ttg.runs replay of this connection reached our marker (see on_connected).
        self._replayed = False
        self._marker = ""
        self._snapshot_due = 0.0
        self._snapshot_last = 0.0
        #: Begun marks: ours, and those that judge the redeliveries we receive.
        self._begun = BegunMarks(name, self.snapshot_s)
        #: Runs whose begun stream this connection has declared (older runs lack one).
        self._marked_runs: set[str] = set()
        self._ch: Any = None
        self._events: Any = None

    # -- the worker's side ---------------------------------------------------------------

    def start(self) -> None:
        self.start_io()

    @property
    def connected(self) -> bool:
        return self.io_connected

    def fetch(self, timeout: float, limit: int) -> list[Delivery]:
        # RabbitMQ pushes: the prefetch window is what we hold plus what we ask for.
        self._size_window(self._unsettled + limit)
        got = self._inbox.take(limit, timeout)
        out = []
        for d in got:
            if d.handle.generation != self.generation:
                continue  # its connection is gone: RabbitMQ requeued it
            if self._controls.get(d.run, "running") != "running":
                self._unsettled += 1
                self.release(d)  # paused or cancelled since it arrived
                continue
            out.append(d)
        self._unsettled += len(out)
        return out

    def _size_window(self, chunks: int) -> None:
        # Messages, in powers of two: a new window means a new subscription (see _resize).
        messages = -(-chunks // self._group) + (1 if self._group > 1 else 0)
        self.window = min(self.cap, 1 << max(0, messages - 1).bit_length())

    def running_long(self, params: Sequence[LongParam]) -> None:
        by_run: dict[str, list[list[Any]]] = {}
        for p in params:
            by_run.setdefault(p.run, []).append(p.to_list())
        # One assignment the I/O thread reads whole at its next snapshot, sent soon.
        self._activity.long = by_run
        self._activity.dirty = True

    def begin(self, delivery: Delivery) -> None:
        self.begin_many([delivery])

    def begin_many(self, deliveries: Sequence[Delivery]) -> None:
        # A group is marked whole, once: a mark per chunk of 64 one-parameter chunks
        # would cost more than computing them. Its loss then counts each chunk not
        # yet settled once, and splits it: from then on each is marked alone.
        msgs: list[Message] = []
        marks: dict[str, list[tuple[int, int]]] = {}
        for d in deliveries:
            msg = d.handle
            if msg is None or msg.generation != self.generation:
                continue  # its connection is gone: requeued, and judged unbegun
            if d.run not in self._marked_runs or msg.marked:
                continue  # no begun stream (garbage under its name), or marked already
            msg.marked = True
            msgs.append(msg)
            chunks = range(d.chunk, msg.first + msg.size)
            marks.setdefault(d.run, []).extend((c, d.attempt) for c in chunks)
        if not marks:
            return

        def mark() -> None:
            if self._events is not None and all(m.generation == self.generation for m in msgs):
                for run, run_marks in marks.items():
                    self._begun.mark(run, run_marks)

        # On the I/O thread (the worker's one connection), and waited for: the marks are
        # on the socket before the computes start, so a compute that kills its worker at
        # once is still counted. One hand-off, one publish per run, for every message
        # queued with a compute process together.
        self.call(mark)

    def complete(self, items: Sequence[tuple[Delivery, Outcome]]) -> list[Recorded]:
        out = self.call(lambda: self._record(items))
        self._unsettled = max(0, self._unsettled - len(items))
        return out

    def retry(self, delivery: Delivery, error: str, *, delay: float) -> None:
        def retry() -> None:
            d = delivery
            publish(
                self._ch,
                queue(d.run, "ledger"),
                {"e": "failed", "c": d.chunk, "w": self.name, "t": time.time(), "d": error},
            )
            publish_task(
                self._ch,
                queue(d.run, "retry"),
                task_headers(d.chunk, d.attempt, d.round),
                expiration_ms=int(delay * 1000),
            )
            self._settle([d])

        self.call(retry)
        self._unsettled = max(0, self._unsettled - 1)

    def release(self, delivery: Delivery) -> None:
        self.call(lambda: self._release_all([delivery], event=True))
        self._unsettled = max(0, self._unsettled - 1)

    def abandon(self, delivery: Delivery) -> None:
        # Back to the queue once its message is settled (a delivery that counts, as a
        # lost worker's does); never raises.
        self.post(lambda: self._settle([delivery], requeue=True))
        self._unsettled = max(0, self._unsettled - 1)

    def decline(self, delivery: Delivery, why: str) -> None:
        def decline() -> None:
            self._release_all([delivery], event=True, why=why)
            self._declined[delivery.run] = time.monotonic() + DECLINE_SECONDS
            self._unsubscribe(delivery.run)

        self.call(decline)
        self._unsettled = max(0, self._unsettled - 1)

    def stop_fetching(self) -> None:
        """Cancel every task subscription, so a released chunk is not pushed back to us."""

        def cancel() -> None:
            self._fetching = False
            for run in list(self._subscribed):
                self._unsubscribe(run)

        self.call(cancel)

    def close(self) -> None:
        self.stop_io()

    # -- the I/O thread: connection ---------------------------------------------------------

    def on_connected(self, conn: pika.BlockingConnection) -> None:
        self._subscribed.clear()
        self._unacked.clear()
        self._dead_subscribed = set()
        self._activity.clear()
        # Confirmed publishes (outcomes, retries, releases) and the task deliveries.
        self._ch = conn.channel()
        self._ch.confirm_delivery()
        # Informational events and activity snapshots: no confirms, no waiting.
        self._events = conn.channel()
        self._marked_runs = set()
        self._begun.connected(conn.channel(), self._events)
        runs = conn.channel()
        runs.basic_qos(prefetch_count=500)
        runs.queue_declare(RUNS, durable=True, arguments={"x-queue-type": "stream"})
        runs.basic_consume(RUNS, self._on_run, arguments={"x-stream-offset": "first"})
        # Replaying ttg.runs from the start must only rebuild state: subscribing to a
        # run its history later pauses would make pika reject what it had buffered on
        # the cancel, and a quorum queue counts each reject as a delivery. Our own
        # marker, confirmed at the stream's end, says when the replay is over.
        self._replayed = False
        self._marker = uuid.uuid4().hex
        publish(self._ch, RUNS, {"sync": self._marker, "w": self.name})

    def on_lost(self) -> None:
        self._ch = self._events = None
        # Whatever was delivered on the old connection is requeued by RabbitMQ.
        self._inbox.clear()
        self._begun.lost()

    def tick(self) -> None:
        now = time.monotonic()
        for run in [r for r, until in self._declined.items() if until <= now]:
            del self._declined[run]
            self._subscribe(run)
        self._judge_redeliveries()
        self._split_stale_groups()
        self._resize()
        self._snapshot()

    def _split_stale_groups(self) -> None:
        """Give back, as single chunks, group members the worker has not taken for a while.

        With chunks that take long, the rest of a group would wait behind this
        worker's computing; other workers take them at once instead. With short
        chunks the worker takes them within milliseconds, and a group stays whole.
        """
        stale = [
            d
            for d in self._inbox.take_stale(STALE_GROUP_SECONDS)
            if d.handle.generation == self.generation
        ]
        if stale:
            self._release_all(stale, event=False)

    def _resize(self) -> None:
        """Give each run's subscription the prefetch window the worker asks for.

        RabbitMQ fixes a consumer's prefetch when it subscribes, so a new
        window takes a new subscription. The old one is cancelled only while
        its window is full: a delivery on its way at the cancel would be
        rejected by pika, and on a quorum queue a reject counts as a delivery
        towards the dead-letter limit. With the window full, none is on its way.
        """
        for run, sub in list(self._subscribed.items()):
            if sub.prefetch != self.window and sub.unacked >= sub.prefetch:
                self._ch.basic_cancel(sub.tag)
                del self._subscribed[run]
                self._subscribe(run)

    # -- the I/O thread: runs -----------------------------------------------------------------

    def _on_run(self, ch: Any, method: Any, _props: Any, raw: bytes) -> None:
        # Nothing read here may raise: an exception on the I/O loop closes the
        # connection, and the replay after the reconnect would meet it again.
        try:
            m = qdecode.runs_message(qdecode.message(raw, f"a message of {RUNS}"))
        except DecodeError as e:
            if self._skip_log(RUNS):
                log.error("unreadable message on %s ignored: %s", RUNS, e)
            ch.basic_ack(method.delivery_tag)
            return
        if m.kind == "sync":
            if m.marker == self._marker:
                self._replayed = True  # the history is read: act on where it ended
                for run in list(self._specs):
                    if self._controls.get(run) == "running":
                        self._subscribe(run)
            ch.basic_ack(method.delivery_tag)
            return
        run = m.run or ""
        if m.kind == "deleted":
            self._specs.pop(run, None)
            self._controls.pop(run, None)
            self._unreadable.pop(run, None)
            self._unsubscribe(run)
        elif m.kind == "announce":
            self._announced(run, m.spec)
        elif m.kind == "control" and run in self._specs:
            self._controls[run] = m.control or "running"
            if m.control != "running":
                self._unsubscribe(run)
        if self._replayed and run in self._specs and self._controls.get(run) == "running":
            self._subscribe(run)
        ch.basic_ack(method.delivery_tag)

    def _announced(self, run: str, spec: Any) -> None:
        """A run announced: learn its spec, or skip the run if it cannot be read or run."""
        if run in self._specs or run in self._unreadable:
            return  # the first announcement since its creation is the run's
        try:
            self._specs[run] = RunSpec.from_dict(spec, run)
            self._controls.setdefault(run, "running")
        except RunDataError as e:
            self._unreadable[run] = e
            if self._skip_log(run):
                log.error(
                    "%s; this worker skips the run and serves the others", e, extra={"run": run}
                )

    def _subscribe(self, run: str) -> None:
        if run in self._subscribed or not self._fetching:
            return
        if self._declined.get(run, 0.0) > time.monotonic():
            return  # back in ``tick`` once the decline has run out
        probe = self.conn.channel()  # type: ignore[union-attr]  # the I/O thread is connected
        try:
            # A missing queue closes the channel it is asked on: probe on a throwaway one.
            probe.queue_declare(queue(run, "tasks"), passive=True)
            probe.close()
        except pex.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return  # deleted; its deletion is further down ttg.runs than we have read
            raise
        self._declare_begun(run)
        # Read once: the worker's thread resizes the window at any time, and the
        # subscription must record the prefetch the broker was given (see _resize).
        window = self.window
        self._ch.basic_qos(prefetch_count=window)
        tag = self._ch.basic_consume(queue(run, "tasks"), self._on_task)
        self._subscribed[run] = _Subscription(tag, window)
        if run not in self._dead_subscribed:
            self._dead_subscribed.add(run)
            self._ch.basic_consume(queue(run, "dead"), self._on_dead)

    def _unsubscribe(self, run: str) -> None:
        sub = self._subscribed.pop(run, None)
        if sub is not None and self._ch is not None and self._ch.is_open:
            self._ch.basic_cancel(sub.tag)

    # -- the I/O thread: deliveries ------------------------------------------------------------

    def _on_task(self, _ch: Any, method: Any, props: Any, _body: bytes) -> None:
        run = run_of(method.routing_key) or ""
        spec = self._specs.get(run)
        if spec is None:
            self._ch.basic_ack(method.delivery_tag)  # a deleted run's leftover
            return
        headers = props.headers or {}
        try:
            t = qdecode.task(headers, spec.total_chunks)
        except DecodeError as e:
            self._malformed(run, headers, e, method.delivery_tag)
            return
        chunks = range(t.first, t.first + t.count)
        msg = Message(
            self.generation,
            method.delivery_tag,
            method.consumer_tag,
            set(chunks),
            size=t.count,
            first=t.first,
        )
        self._unacked.add(msg)
        for sub in self._subscribed.values():
            if sub.tag == method.consumer_tag:
                sub.unacked += 1
        if t.delivered and run in self._marked_runs:
            # Back from a lost worker (or rejected): judged by its begun marks first.
            self._begun.park(run, spec.total_chunks, msg, t)
            return
        self._accept(run, spec, msg, t, t.earlier + t.delivered + 1)

    def _accept(self, run: str, spec: RunSpec, msg: Message, t: qdecode.Task, attempt: int) -> None:
        """Hand the chunks of a task message to the worker."""
        if t.count > 1 and attempt > 1:
            # A group that counts a delivery: split it, so a chunk that kills its
            # workers goes to the dead letters alone, not with its neighbours.
            self._republish(run, msg, t, [True] * t.count)
            return
        chunks = range(t.first, t.first + t.count)
        self._group = t.count
        self._activity.hold(run, chunks, attempt)
        if attempt > 1:
            self._event(run, {"e": "redelivered", "c": t.first, "w": self.name, "a": attempt})
        self._inbox.put([Delivery(spec, chunk, attempt, msg, t.round) for chunk in chunks])

    def _judge_redeliveries(self) -> None:
        for p, counts in self._begun.judged():
            spec = self._specs.get(p.run)
            if p.msg.generation != self.generation:
                continue  # its connection is gone: RabbitMQ requeued it
            if spec is None:
                self._settle_message(p.msg)  # its run was deleted meanwhile
            elif p.task.count == 1 and counts[0]:
                self._accept(p.run, spec, p.msg, p.task, p.previous_attempt + 1)
            else:
                self._republish(p.run, p.msg, p.task, counts)

    def _republish(self, run: str, msg: Message, t: qdecode.Task, counts: list[bool]) -> None:
        """Each chunk of ``msg`` again as a message of its own, then ``msg`` acknowledged.

        A chunk whose last delivery was begun counts it; any other keeps its count.
        """
        earlier = t.earlier + t.delivered
        for chunk, counted in zip(range(t.first, t.first + t.count), counts, strict=True):
            headers = task_headers(chunk, earlier if counted else earlier - 1, t.round)
            publish_task(self._ch, queue(run, "tasks"), headers)
        self._settle_message(msg)

    def _settle_message(self, msg: Message) -> None:
        for chunk in list(msg.open):
            if self._unacked.settle(msg, chunk):
                self._finish([msg])

    def _declare_begun(self, run: str) -> None:
        """Make sure the run has a begun stream (runs seeded by older versions have none)."""
        if run in self._marked_runs:
            return
        probe = self.conn.channel()  # type: ignore[union-attr]  # the I/O thread is connected
        try:
            probe.queue_declare(queue(run, "begun"), durable=True, arguments=BEGUN_ARGS)
            probe.close()
        except pex.ChannelClosedByBroker as e:
            # Garbage under its name: no marks for this run; its redeliveries count.
            if self._skip_log(f"begun {run}"):
                log.error("run %s: no begun stream (%s)", run, e, extra={"run": run})
            return
        self._marked_runs.add(run)

    def _malformed(self, run: str, headers: Any, e: Exception, tag: int) -> None:
        # Described, never quoted whole: a 20 MB header is not logged by every worker.
        detail = f"malformed task message {decode.preview(headers)}: {e}"
        log.error(
            "%s: acknowledged and recorded as a problem of the run", detail, extra={"run": run}
        )
        publish(
            self._ch,
            queue(run, "ledger"),
            {"e": "malformed", "w": self.name, "t": time.time(), "d": detail[:500]},
        )
        self._ch.basic_ack(tag)

    def _on_dead(self, ch: Any, method: Any, props: Any, _body: bytes) -> None:
        """RabbitMQ dead-lettered a task (delivery limit): record the death in the ledger."""
        run = run_of(method.routing_key) or ""
        spec = self._specs.get(run)
        try:
            t = None if spec is None else qdecode.task(props.headers or {}, spec.total_chunks)
        except DecodeError as e:
            t = None
            if self._skip_log(f"dead {run}"):
                log.error("unreadable dead-lettered task dropped: %s", e, extra={"run": run})
        if spec is not None and t is not None:
            attempt = t.earlier + spec.max_deliveries + 1
            error = "delivery limit reached: the workers holding it were lost each time"
            dead = [
                _outcome_json(Outcome.dead(Delivery(spec, c, attempt, None), self.name, error))
                for c in range(t.first, t.first + t.count)
            ]
            publish(ch, queue(run, "ledger"), ('{"o":[' + ",".join(dead) + "]}").encode())
        ch.basic_ack(method.delivery_tag)

    # -- the I/O thread: settling --------------------------------------------------------------

    def _record(self, items: Sequence[tuple[Delivery, Outcome]]) -> list[Recorded]:
        """One confirmed ledger message per run, then the acknowledgements (invariant 3)."""
        by_run: dict[str, list[int]] = {}
        for i, (d, _) in enumerate(items):
            by_run.setdefault(d.run, []).append(i)
        out = [Recorded.RECORDED] * len(items)
        for run, indexes in by_run.items():
            payload = (
                b'{"o":[' + b",".join(_outcome_json(items[i][1]).encode() for i in indexes) + b"]}"
            )
            try:
                publish(self._ch, queue(run, "ledger"), payload)
            except pex.UnroutableError:
                log.error("run %s was deleted: %d outcomes dropped", run, len(indexes))
                for i in indexes:
                    out[i] = Recorded.GONE
        self._settle([d for d, _ in items])
        return out

    def _release_all(self, ds: Sequence[Delivery], *, event: bool, why: str | None = None) -> None:
        """Single-chunk copies back to the queue, then the originals settled.

        A copy keeps the count of earlier deliveries: a release is not a failure.
        """
        for d in ds:
            publish_task(
                self._ch, queue(d.run, "tasks"), task_headers(d.chunk, d.attempt - 1, d.round)
            )
            if event:
                msg: dict[str, Any] = {"e": "released", "c": d.chunk, "w": self.name}
                if why:
                    msg["d"] = why[:500]
                self._event(d.run, msg)
        self._settle(ds)

    def _settle(self, ds: Sequence[Delivery], *, requeue: bool = False) -> None:
        """Mark chunks settled; acknowledge (or, for abandoned ones, requeue) finished messages."""
        done = []
        for d in ds:
            self._activity.drop(d.run, d.chunk)
            self._begun.settled(d.run, d.chunk)
            msg = d.handle
            if msg is None or msg.generation != self.generation:
                continue  # its connection is gone: RabbitMQ requeued it already
            if self._unacked.settle(msg, d.chunk, requeue=requeue):
                done.append(msg)
        self._finish(done)

    def _finish(self, done: list[Message]) -> None:
        """Acknowledge (or, for abandoned ones, requeue) messages whose chunks are all settled."""
        for msg in done:
            for sub in self._subscribed.values():
                if sub.tag == msg.consumer_tag:
                    sub.unacked -= 1
        multiple, acks, nacks = self._unacked.finish(done)
        for tag in nacks:
            self._ch.basic_nack(tag, requeue=True)
        if multiple is not None:
            self._ch.basic_ack(multiple, multiple=True)
        for tag in acks:
            self._ch.basic_ack(tag)

    def _event(self, run: str, msg: dict[str, Any]) -> None:
        msg.setdefault("t", time.time())
        self._events.basic_publish("", queue(run, "ledger"), body(msg))

    def _snapshot(self) -> None:
        """Publish, per run, the chunks this worker held since its last snapshot."""
        # On schedule, or soon after a delivery, but never more than 20 times a second.
        now = time.monotonic()
        changed = self._activity.dirty and now - self._snapshot_last >= SNAPSHOT_MIN_INTERVAL
        if (now < self._snapshot_due and not changed) or self._events is None:
            return
        self._snapshot_due = now + self.snapshot_s
        self._snapshot_last = now
        for run, held in self._activity.snapshots().items():
            if run in self._specs:
                snap: dict[str, Any] = {"w": self.name, "t": time.time(), "h": held}
                long = self._activity.long.get(run)
                if long:
                    snap["l"] = long
                self._events.basic_publish("", queue(run, "activity"), body(snap))


def _outcome_json(o: Outcome) -> str:
    text = o.to_json()
    return f'{text[:-1]},"c":{o.chunk}}}'
