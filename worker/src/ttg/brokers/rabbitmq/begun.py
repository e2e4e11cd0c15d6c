"""Which deliveries a lost worker had begun: RabbitMQ's side of issue 17 item 5.

RabbitMQ counts every message a lost connection held as delivered once more (a
quorum queue's ``x-delivery-count``): the chunks a worker had read ahead and never
begun as well as the one it was computing. A worker killed again and again would
walk healthy chunks to the dead letters. So:

- a worker marks each delivery begun in its run's begun stream just before its
  compute starts (``mark``, on its one connection), and marks the chunks it is still
  computing again every 1/4 lease: the stream keeps 10 minutes, a chunk may run for
  hours. A message carrying a group of small chunks is marked whole when its first
  chunk begins (one hand-off to the I/O thread, one publish, for up to 64 chunks: a
  hand-off per chunk cost more than computing one-parameter chunks): its loss
  counts each of its chunks not yet settled once, and splits it into single-chunk
  messages, each marked alone from then on, so a healthy chunk is counted at most
  once for its neighbours' sake;
- a consumer that receives a redelivered message holds it back (``park``), reads the
  run's recent marks until it meets a sync marker of its own, published after the
  message came back and so after any mark of its lost holder, then judges it
  (``judged``): a chunk whose last delivery was begun counts it, as before; any
  other is published again with its count of earlier deliveries unchanged.

Everything here runs on the consumer's I/O thread. A mark that cannot be read is
skipped; marks that cannot be read at all in ``SYNC_TIMEOUT_SECONDS`` count the
delivery, as before marks existed: never a loop, never a chunk held forever.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ttg.brokers.rabbitmq import decode as qdecode
from ttg.brokers.rabbitmq.connection import body, queue, run_of
from ttg.brokers.rabbitmq.decode import Task
from ttg.brokers.rabbitmq.messages import Message
from ttg.decode import DecodeError, Throttle

log = logging.getLogger(__name__)

#: How far back a consumer reads a run's marks: a chunk in progress is marked again
#: every 1/4 lease, so this covers a redelivery taken up this long after its holder died.
LOOKBACK_SECONDS = 60.0
#: A redelivery whose marks could not be read in this long counts, as before marks.
SYNC_TIMEOUT_SECONDS = 10.0
#: A run's marks are no longer followed this long after its last redelivery.
IDLE_SECONDS = 30.0
#: Marks in flight to a follower (streams need acknowledgements for flow control).
PREFETCH = 1000
#: A follower acknowledges every this many marks.
ACK_EVERY = 100
#: One log line per run with unreadable marks at most this often.
LOG_SECONDS = 300.0


@dataclass
class Parked:
    """A redelivered task message held back until its run's marks are read."""

    run: str
    msg: Message
    task: Task
    #: The sync marker to read before judging it (None: not sent yet).
    sync: str | None = None
    since: float = field(default_factory=time.monotonic)

    @property
    def previous_attempt(self) -> int:
        """The attempt number of the delivery that came back."""
        return self.task.earlier + self.task.delivered


@dataclass
class _Follower:
    """One run's begun stream, read from LOOKBACK_SECONDS ago."""

    tag: str
    total_chunks: int
    #: chunk -> the highest attempt marked begun.
    begun: dict[int, int] = field(default_factory=dict)
    #: Sync markers read (ours; others' are ignored).
    synced: set[str] = field(default_factory=set)
    used: float = field(default_factory=time.monotonic)
    received: int = 0


class BegunMarks:
    """Marks of this worker's deliveries, and the judging of redelivered ones."""

    def __init__(self, worker: str, refresh_s: float) -> None:
        self.worker = worker
        self.refresh_s = refresh_s
        self._ch: Any = None
        self._pub: Any = None
        self._followers: dict[str, _Follower] = {}
        self._parked: list[Parked] = []
        #: run -> chunk -> attempt: begun here and not settled (marked again on refresh).
        self._running: dict[str, dict[int, int]] = {}
        #: Sync markers parked messages wait for.
        self._syncs: set[str] = set()
        self._next_refresh = 0.0
        self._log = Throttle(LOG_SECONDS)

    def connected(self, ch: Any, pub: Any) -> None:
        """A new connection: ``ch`` reads marks, ``pub`` publishes them (no confirms)."""
        ch.basic_qos(prefetch_count=PREFETCH)
        self._ch, self._pub = ch, pub
        self.lost()

    def lost(self) -> None:
        # What the old connection held is requeued by RabbitMQ: nothing to judge or refresh.
        self._followers.clear()
        self._parked.clear()
        self._running.clear()
        self._syncs.clear()

    # -- this worker's marks ------------------------------------------------------------

    def mark(self, run: str, marks: list[tuple[int, int]]) -> None:
        """Mark ``(chunk, attempt)`` deliveries begun: on the socket when this returns;
        marked again every refresh until they are settled."""
        self._pub.basic_publish("", queue(run, "begun"), marks_body(self.worker, marks))
        running = self._running.setdefault(run, {})
        for chunk, attempt in marks:
            running[chunk] = attempt

    def settled(self, run: str, chunk: int) -> None:
        running = self._running.get(run)
        if running is not None:
            running.pop(chunk, None)
            if not running:
                del self._running[run]

    def _marks(self, marks: list[tuple[int, int]]) -> bytes:
        return marks_body(self.worker, marks)

    # -- redelivered messages -------------------------------------------------------------

    def park(self, run: str, total_chunks: int, msg: Message, task: Task) -> None:
        follower = self._followers.get(run)
        if follower is None:
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=LOOKBACK_SECONDS)
            tag = self._ch.basic_consume(
                queue(run, "begun"), self._on_mark, arguments={"x-stream-offset": since}
            )
            follower = self._followers[run] = _Follower(tag, total_chunks)
        follower.used = time.monotonic()
        self._parked.append(Parked(run, msg, task))

    def _on_mark(self, ch: Any, method: Any, _props: Any, raw: bytes) -> None:
        # Nothing read here may raise: an exception on the I/O loop closes the connection.
        run = run_of(method.routing_key) or ""
        follower = self._followers.get(run)
        if follower is not None:
            follower.received += 1
            try:
                m = qdecode.begun_message(
                    qdecode.message(raw, f"a message of {queue(run, 'begun')}"),
                    follower.total_chunks,
                )
            except DecodeError as e:
                if self._log(run):
                    log.error("unreadable begun mark skipped: %s", e, extra={"run": run})
            else:
                if m.sync is not None and m.sync in self._syncs:
                    follower.synced.add(m.sync)
                for chunk, attempt in m.marks:
                    follower.begun[chunk] = max(attempt, follower.begun.get(chunk, 0))
            if follower.received % ACK_EVERY:
                return
        ch.basic_ack(method.delivery_tag, multiple=True)

    def judged(self) -> list[tuple[Parked, list[bool]]]:
        """Parked messages whose marks are read: for each, whether each chunk counts.

        Also sends the sync markers parked messages wait for, refreshes this
        worker's own marks, and stops following runs idle for IDLE_SECONDS.
        """
        now = time.monotonic()
        out: list[tuple[Parked, list[bool]]] = []
        waiting: list[Parked] = []
        sent: dict[str, str] = {}
        for p in self._parked:
            follower = self._followers[p.run]
            if p.sync is None:
                if p.run not in sent:
                    sent[p.run] = uuid.uuid4().hex
                    self._pub.basic_publish(
                        "", queue(p.run, "begun"), body({"sync": sent[p.run], "w": self.worker})
                    )
                p.sync = sent[p.run]
                self._syncs.add(p.sync)
            chunks = range(p.task.first, p.task.first + p.task.count)
            if p.sync in follower.synced:
                begun = follower.begun
                out.append((p, [begun.get(c, 0) >= p.previous_attempt for c in chunks]))
            elif now - p.since > SYNC_TIMEOUT_SECONDS:
                if self._log(f"sync {p.run}"):
                    log.warning(
                        "begun marks not read in %.0f s: a redelivery counts",
                        SYNC_TIMEOUT_SECONDS,
                        extra={"run": p.run},
                    )
                out.append((p, [True] * p.task.count))
            else:
                waiting.append(p)
        self._parked = waiting
        self._syncs = {p.sync for p in waiting if p.sync is not None}
        for follower in self._followers.values():
            follower.synced &= self._syncs
        busy = {p.run for p in waiting}
        for run, follower in list(self._followers.items()):
            if run not in busy and now - follower.used > IDLE_SECONDS:
                self._ch.basic_cancel(follower.tag)
                del self._followers[run]
        if now >= self._next_refresh:
            self._next_refresh = now + self.refresh_s
            for run, running in self._running.items():
                self._pub.basic_publish("", queue(run, "begun"), self._marks(list(running.items())))
        return out


def marks_body(worker: str, marks: list[tuple[int, int]]) -> bytes:
    return body({"w": worker, "t": time.time(), "b": [list(m) for m in marks]})
