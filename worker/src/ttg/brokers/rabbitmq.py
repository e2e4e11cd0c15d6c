"""RabbitMQ backend (3.10+, AMQP 0-9-1 through pika). No Redis anywhere in this mode.

Layout of one run ``R`` (all durable, declared by ``seed`` with fixed arguments)::

    ttg.runs          stream  run registrations {"run": R} and deletions {"deleted": R}
    ttg.R.meta        stream  the RunSpec, then seeding cursors {"cursor": k}
    ttg.R.tasks       quorum  one message per chunk (header c=chunk, a=earlier deliveries);
                              delivery limit = the run's max deliveries, then to ttg.R.dead
    ttg.R.retry       quorum  failed chunks waiting out their backoff (per-message TTL), then
                              dead-lettered (at-least-once) back into ttg.R.tasks
    ttg.R.dead        quorum  chunks RabbitMQ dead-lettered (their workers kept dying)
    ttg.R.ledger      stream  outcomes {"s": ok|dead, ...} (one, or a {"batch": [...]} of them)
                              and events (redelivered, failed),
                              replayed and deduplicated by chunk id on read: first outcome wins
    ttg.R.activity    stream  who holds which chunks: a snapshot every 1/4 lease, kept 10 min

Why this shape:

- A result is published to the ledger with a publisher confirm before its task
  is acknowledged (invariant 3); a redelivered chunk's second result is a
  duplicate on read, never counted (invariant 2).
- Liveness is the AMQP connection itself: a SIGKILLed worker's socket closes and
  RabbitMQ requeues its unacknowledged chunks at once; a live worker's I/O
  thread serves heartbeats however long its chunk computes.
- Queue arguments are immutable, so nothing that may change between releases is
  one: the retry delay is a per-message TTL, and the delivery limit is part of
  the run's immutable spec. A new worker with another retry delay declares
  nothing new and cannot hit PRECONDITION_FAILED.
- Per-message TTL expires only at the head of the retry queue, so a long delay
  can hold back a shorter one behind it; retries are late, never lost.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import pika
import pika.exceptions as pex
from pika.adapters.blocking_connection import BlockingChannel

from ttg.broker import Broker, Consumer, SeedReport
from ttg.errors import BrokerConnectionError, BrokerError, RunConflict, RunNotFound, UsageError
from ttg.run import InFlight, Outcome, Progress, RunSpec

log = logging.getLogger(__name__)

RUNS = "ttg.runs"
#: Chunks published per seeding step (then the cursor is published).
SEED_BATCH = 1000
#: A stream read is complete when nothing more arrives for this long.
STREAM_IDLE_SECONDS = 0.05
#: Activity snapshots older than this do not count as holding a chunk.
ACTIVITY_FRESH_SECONDS = 1.5
#: Heartbeat of short-lived admin connections (CLI commands, metrics).
ADMIN_HEARTBEAT = 30

T = TypeVar("T")

_CONNECTION_ERRORS = (
    pex.AMQPConnectionError,
    pex.ConnectionClosed,
    pex.StreamLostError,
    pex.ConnectionWrongStateError,
    ConnectionError,
    OSError,
)


def queue(run: str, name: str) -> str:
    return f"ttg.{run}.{name}"


def translate(e: Exception) -> NoReturn:
    """Turn a pika exception into TTG's own (the backend boundary)."""
    if isinstance(e, pex.ChannelClosedByBroker) and e.reply_code == 404:
        raise RunNotFound(f"rabbitmq: {e.reply_text}") from None
    if isinstance(e, pex.UnroutableError):
        # A mandatory publish to a queue that is gone: the run was deleted.
        raise RunNotFound("rabbitmq: the run's queues are gone (deleted)") from None
    if isinstance(e, _CONNECTION_ERRORS):
        raise BrokerConnectionError(f"rabbitmq: {e!r}") from None
    raise BrokerError(f"rabbitmq: {e!r}") from None


def translated(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (pex.AMQPError, *_CONNECTION_ERRORS) as e:
            translate(e)

    return wrapper


def parameters(url: str, heartbeat: int) -> pika.URLParameters:
    try:
        params = pika.URLParameters(url)
    except Exception as e:
        raise UsageError(f"broker URL: {e}") from None
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    params.socket_timeout = 5
    return params


def open_connection(url: str, heartbeat: int) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(parameters(url, heartbeat))
    except (pex.AMQPError, *_CONNECTION_ERRORS) as e:
        translate(e)


def declare_run(ch: BlockingChannel, spec: RunSpec) -> None:
    """Declare every queue of a run, always with the same arguments."""
    run = spec.run
    stream = {"x-queue-type": "stream"}
    ch.queue_declare(RUNS, durable=True, arguments=stream)
    ch.queue_declare(queue(run, "meta"), durable=True, arguments=stream)
    ch.queue_declare(queue(run, "ledger"), durable=True, arguments=stream)
    ch.queue_declare(
        queue(run, "activity"),
        durable=True,
        arguments={**stream, "x-max-age": "10m", "x-stream-max-segment-size-bytes": 1_000_000},
    )
    ch.queue_declare(queue(run, "dead"), durable=True, arguments={"x-queue-type": "quorum"})
    # At-least-once dead-lettering needs reject-publish overflow; neither queue
    # ever reaches a length limit, so that costs nothing.
    dead_letter = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    ch.queue_declare(
        queue(run, "tasks"),
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": spec.max_deliveries,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue(run, "dead"),
            **dead_letter,
        },
    )
    ch.queue_declare(
        queue(run, "retry"),
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue(run, "tasks"),
            **dead_letter,
        },
    )


def publish(ch: BlockingChannel, routing_key: str, body: dict[str, Any], **props: Any) -> None:
    """Publish persistently; on a confirm-mode channel this returns once the broker confirmed."""
    ch.basic_publish(
        "",
        routing_key,
        json.dumps(body, separators=(",", ":")).encode(),
        pika.BasicProperties(delivery_mode=2, content_type="application/json", **props),
        mandatory=True,
    )


class StreamTail:
    """A stream consumed from ``offset`` once and kept open; ``sync`` folds what arrived since.

    Stream consumers are never cancelled while the connection lives: pika rejects
    the deliveries a cancelled consumer still had buffered, and a stream answers
    a reject by closing the whole connection. Keeping the tail open also makes
    every later read incremental.
    """

    def __init__(
        self,
        conn: pika.BlockingConnection,
        name: str,
        fold: Callable[[dict[str, Any]], None],
        *,
        offset: Any = "first",
    ) -> None:
        self.conn = conn
        self.name = name
        self.fold = fold
        self.received = 0
        #: The first read of a tail is always exact, so a new process never undercounts.
        self.caught_up = False
        self._markers: set[str] = set()
        self._ch = conn.channel()
        self._ch.basic_qos(prefetch_count=2000)
        self._ch.basic_consume(name, self._on_message, arguments={"x-stream-offset": offset})

    def _on_message(self, ch: Any, method: Any, _props: Any, body: bytes) -> None:
        self.received += 1
        # Streams need acknowledgements for flow control only; ack in batches.
        if self.received % 500 == 0:
            ch.basic_ack(method.delivery_tag, multiple=True)
        msg = json.loads(body)
        if "barrier" in msg:
            self._markers.add(msg["barrier"])
        else:
            self.fold(msg)

    def sync(self, publisher: BlockingChannel | None = None, timeout: float = 10.0) -> None:
        """Fold everything published so far.

        With a confirm-mode ``publisher`` the read is exact: a marker is
        published and reading stops at it (streams report no length). Without,
        it stops once nothing arrives for ``STREAM_IDLE_SECONDS``, which is
        enough for progress displays.
        """
        if publisher is None and self.caught_up:
            while True:
                before = self.received
                self.conn.process_data_events(time_limit=STREAM_IDLE_SECONDS)
                if self.received == before:
                    return
        if publisher is None:
            raise BrokerError(f"rabbitmq: first read of {self.name} needs a publisher")
        marker = uuid.uuid4().hex
        publish(publisher, self.name, {"barrier": marker})
        deadline = time.monotonic() + timeout
        while marker not in self._markers:
            if time.monotonic() > deadline:
                raise BrokerError(f"rabbitmq: stream {self.name} did not replay within {timeout}s")
            self.conn.process_data_events(time_limit=0.05)
        self._markers.discard(marker)
        self.caught_up = True


@dataclass
class LedgerView:
    """A run's ledger folded into counters: first outcome per chunk wins."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    duplicates: int = 0
    redelivered: int = 0
    failed: int = 0

    def add(self, msg: dict[str, Any]) -> None:
        if "batch" in msg:
            for one in msg["batch"]:
                self.add(one)
            return
        kind = msg.get("e")
        if kind == "redelivered":
            self.redelivered += 1
        elif kind == "failed":
            self.failed += 1
        elif "s" in msg:
            chunk = int(msg["c"])
            if chunk in self.outcomes:
                self.duplicates += 1
            else:
                self.outcomes[chunk] = Outcome.from_json(chunk, json.dumps(msg))

    @property
    def done(self) -> tuple[int, int, int]:
        ok = [o for o in self.outcomes.values() if o.status == "ok"]
        return len(ok), sum(o.params for o in ok), len(self.outcomes) - len(ok)


@dataclass
class _RunState:
    """What this process has read of one run, kept current by its stream tails."""

    spec: RunSpec | None = None
    cursor: int = 0
    ledger: LedgerView = field(default_factory=LedgerView)
    #: worker -> its latest activity snapshot
    activity: dict[str, dict[str, Any]] = field(default_factory=dict)
    tails: dict[str, StreamTail] = field(default_factory=dict)

    def fold_meta(self, msg: dict[str, Any]) -> None:
        if "spec" in msg and self.spec is None:
            self.spec = RunSpec(**msg["spec"])
        elif "cursor" in msg:
            self.cursor = max(self.cursor, int(msg["cursor"]))

    def fold_activity(self, msg: dict[str, Any]) -> None:
        if "w" in msg:
            self.activity[msg["w"]] = msg


def connect(url: str) -> RabbitMQBroker:
    return RabbitMQBroker(url)


class RabbitMQBroker(Broker):
    """Admin side: seeding, progress, ledger, deletion (one thread at a time).

    Each stream it reads (a run's meta, ledger and activity; ttg.runs) is
    tailed once and kept open, so repeated ``progress`` calls read only what is
    new.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = open_connection(url, ADMIN_HEARTBEAT)
        self._reset()

    def _reset(self) -> None:
        """Forget everything read over a connection that is gone."""
        self._pub = self._conn.channel()
        self._pub.confirm_delivery()
        self._runs: dict[str, bool] = {}
        self._runs_tail: StreamTail | None = None
        self._state: dict[str, _RunState] = {}

    def _ensure_open(self) -> None:
        if not self._conn.is_open:
            self._conn = open_connection(self.url, ADMIN_HEARTBEAT)
            self._reset()
        elif not self._pub.is_open:
            self._pub = self._conn.channel()
            self._pub.confirm_delivery()

    def _sync(self, run: str, stream: str, *, exact: bool, offset: Any = "first") -> _RunState:
        """Bring the run's view of ``stream`` up to date (exactly on a tail's first read)."""
        tail = self._tail(run, stream, offset)
        tail.sync(self._pub if exact or not tail.caught_up else None)
        return self._state[run]

    def _tail(self, run: str, stream: str, offset: Any = "first") -> StreamTail:
        state = self._state.setdefault(run, _RunState())
        tail = state.tails.get(stream)
        if tail is None:
            fold = {
                "meta": state.fold_meta,
                "ledger": state.ledger.add,
                "activity": state.fold_activity,
            }[stream]
            tail = state.tails[stream] = StreamTail(
                self._conn, queue(run, stream), fold, offset=offset
            )
        return tail

    def _forget(self, run: str) -> None:
        state = self._state.pop(run, None)
        for tail in state.tails.values() if state else ():
            if tail._ch.is_open:
                try:
                    tail._ch.close()
                except (pex.AMQPError, *_CONNECTION_ERRORS):
                    pass  # a deleted stream's consumer was cancelled by the broker already

    @translated
    def ping(self) -> None:
        self._ensure_open()
        self._conn.process_data_events(time_limit=0)

    def _meta(self, run: str, *, exact: bool) -> _RunState:
        self._ensure_open()
        try:
            return self._sync(run, "meta", exact=exact)
        except (pex.UnroutableError, pex.ChannelClosedByBroker) as e:
            if isinstance(e, pex.ChannelClosedByBroker) and e.reply_code != 404:
                raise
            # No meta stream: no such run. (A 404 closes the publishing channel.)
            self._forget(run)
            self._ensure_open()
            return _RunState()

    @translated
    def seed(
        self, spec: RunSpec, *, on_progress: Callable[[int, int], None] | None = None
    ) -> SeedReport:
        run, total = spec.run, spec.total_chunks
        self._ensure_open()
        ch = self._conn.channel()
        ch.confirm_delivery()
        declare_run(ch, spec)
        state = self._meta(run, exact=True)
        if state.spec is None:
            body = json.loads(spec.to_json())
            publish(ch, queue(run, "meta"), {"spec": body})
            # Workers learn of runs, with their spec, from this one stream.
            publish(ch, RUNS, {"run": run, "spec": body})
            state = self._meta(run, exact=True)
        if state.spec != spec:
            raise RunConflict(f"run {run!r} exists with different parameters; pick a new run id")
        cursor = start = state.cursor
        while cursor < total:
            stop = min(cursor + SEED_BATCH, total)
            for chunk in range(cursor, stop):
                ch.basic_publish(
                    "",
                    queue(run, "tasks"),
                    b"",
                    pika.BasicProperties(delivery_mode=2, headers={"c": chunk, "a": 0}),
                    mandatory=True,
                )
            # The cursor moves only after every task before it was confirmed: a
            # seeder killed in between republishes at most one batch (duplicates
            # the ledger absorbs), and never skips a chunk.
            publish(ch, queue(run, "meta"), {"cursor": stop})
            cursor = stop
            if on_progress:
                on_progress(cursor, total)
        ch.close()
        return SeedReport(run, total, spec.total_params, cursor, cursor - start)

    @translated
    def spec(self, run: str) -> RunSpec:
        state = self._state.get(run)
        if state is None or state.spec is None:
            state = self._meta(run, exact=True)
        if state.spec is None:
            raise RunNotFound(f"no run {run!r} on this broker")
        return state.spec

    def _fold_run(self, msg: dict[str, Any]) -> None:
        if "run" in msg:
            self._runs[msg["run"]] = True
        elif "deleted" in msg:
            self._runs.pop(msg["deleted"], None)

    @translated
    def runs(self) -> list[str]:
        self._ensure_open()
        if self._runs_tail is None:
            self._pub.queue_declare(RUNS, durable=True, arguments={"x-queue-type": "stream"})
            self._runs_tail = StreamTail(self._conn, RUNS, self._fold_run)
        self._runs_tail.sync(self._pub)
        return sorted(self._runs)

    def _in_flight(self, run: str) -> list[InFlight]:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=3 * ACTIVITY_FRESH_SECONDS)
        state = self._sync(run, "activity", exact=False, offset=since)
        now = time.time()
        # A snapshot may outlive its worker by up to ACTIVITY_FRESH_SECONDS (RabbitMQ
        # requeues a dead worker's chunks at once); a chunk with an outcome is not in flight.
        return [
            InFlight(int(chunk), worker, int(attempt), round(now - float(started), 3))
            for worker, snap in sorted(state.activity.items())
            if now - float(snap["t"]) < ACTIVITY_FRESH_SECONDS
            for chunk, attempt, started in snap["h"]
            if int(chunk) not in state.ledger.outcomes
        ]

    @translated
    def progress(self, run: str) -> Progress:
        spec = self.spec(run)
        state = self._meta(run, exact=False)
        self._sync(run, "ledger", exact=False)
        done, done_params, dead = state.ledger.done
        ch = self._conn.channel()
        depth = sum(
            ch.queue_declare(queue(run, name), passive=True).method.message_count
            for name in ("tasks", "retry")
        )
        ch.close()
        in_flight = self._in_flight(run)
        return Progress(
            run=run,
            total_chunks=spec.total_chunks,
            total_params=spec.total_params,
            seeded_chunks=state.cursor,
            done=done,
            done_params=done_params,
            dead=dead,
            duplicates=state.ledger.duplicates,
            redelivered=state.ledger.redelivered,
            failed=state.ledger.failed,
            queue_depth=depth + len(in_flight),
            in_flight=in_flight,
        )

    def ledger(self, run: str) -> Iterator[Outcome]:
        try:
            self.spec(run)
            self._sync(run, "ledger", exact=True)
        except (pex.AMQPError, *_CONNECTION_ERRORS) as e:
            translate(e)
        yield from list(self._state[run].ledger.outcomes.values())

    @translated
    def delete(self, run: str) -> bool:
        if run not in self.runs():
            return False
        self._forget(run)
        ch = self._conn.channel()
        ch.confirm_delivery()
        for name in ("tasks", "retry", "dead", "ledger", "meta", "activity"):
            ch.queue_delete(queue(run, name))
        publish(ch, RUNS, {"deleted": run})
        ch.close()
        self._runs.pop(run, None)
        return True

    def consumer(self, name: str, *, lease_seconds: float, prefetch: int) -> Consumer:
        from ttg.brokers.rabbitmq_consumer import RabbitMQConsumer  # noqa: PLC0415 - cycle

        return RabbitMQConsumer(self, name, lease_seconds=lease_seconds, prefetch=prefetch)

    def close(self) -> None:
        # Closing cancels the stream tails, and pika's cancel rejects what they
        # had buffered, which a stream answers by closing the connection: the
        # very thing we are doing anyway.
        try:
            if self._conn.is_open:
                self._conn.close()
        except (pex.AMQPError, *_CONNECTION_ERRORS):
            pass
