"""Reading RabbitMQ streams: kept-open tails for progress, one-shot reads for exports.

A run's ledger is a stream, decided on read: the first outcome of a chunk in
its current retry round counts, every later one is a duplicate. ``LedgerFold``
folds it into counters and one byte per chunk (1 MB per 10^6 chunks), never
into results: progress costs
memory in proportion to the run's size in chunks, not to what it computed.
Only ``read_stream`` (verify, results, reports) sees results, streamed.
"""

from __future__ import annotations

import contextlib
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pika

from ttg import decode
from ttg.brokers.rabbitmq import decode as qdecode
from ttg.brokers.rabbitmq.connection import PIKA_ERRORS, open_connection, publish
from ttg.decode import DecodeError, Problems
from ttg.errors import BrokerError, RunDataError

#: A stream read is complete when nothing more arrives for this long (progress displays).
STREAM_IDLE_SECONDS = 0.05
#: ... or when it has read for this long: a busy run's outcomes never pause for
#: ``STREAM_IDLE_SECONDS``, and a display must still update (the next read goes on).
STREAM_DRAIN_SECONDS = 0.25
#: A one-shot read fails when nothing arrives for this long.
READ_STALL_SECONDS = 30.0
#: Stream messages in flight to a kept-open tail (progress). A ledger message holds a
#: batch of outcomes (tens of kB): the window bounds a reader's buffers, which would
#: otherwise grow with the run's results.
TAIL_PREFETCH = 16
#: Stream messages in flight to a one-shot read (verify, results): faster, still bounded.
READ_PREFETCH = 64
#: A stream reader acknowledges (flow control only) every this many messages.
STREAM_ACK_EVERY = 4
#: Distinct recent errors kept per run.
RECENT_ERRORS = 20

_CODES = {"ok": 1, "errors": 2, "dead": 3}


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
        #: Messages that could not be read (garbage stays in a stream for good).
        self.problems = Problems()
        #: The first read of a tail is always exact, so a new process never undercounts.
        self.caught_up = False
        self._markers: set[str] = set()
        self.channel = conn.channel()
        self.channel.basic_qos(prefetch_count=TAIL_PREFETCH)
        self.channel.basic_consume(name, self._on_message, arguments={"x-stream-offset": offset})

    def _on_message(self, ch: Any, method: Any, _props: Any, raw: bytes) -> None:
        self.received += 1
        # Streams need acknowledgements for flow control only; ack in batches.
        if self.received % STREAM_ACK_EVERY == 0:
            ch.basic_ack(method.delivery_tag, multiple=True)
        # Nothing read may raise here: on pika's I/O loop that would close the
        # connection, and the next read would replay the same message.
        try:
            msg = qdecode.message(raw, f"a message of {self.name}")
            if "barrier" in msg:
                self._markers.add(qdecode.marker(msg, "barrier"))
            else:
                self.fold(msg)
        except (DecodeError, RunDataError) as e:
            self.problems.add(str(e))

    def sync(self, publisher: Any | None = None, timeout: float = 30.0) -> None:
        """Fold everything published so far.

        With a confirm-mode ``publisher`` the read is exact: a marker is
        published and reading stops at it (streams report no length). Without,
        it stops once nothing arrives for ``STREAM_IDLE_SECONDS``, which is
        enough for progress displays.
        """
        if publisher is None and self.caught_up:
            drain(self.conn, [self])
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


def drain(
    conn: pika.BlockingConnection,
    tails: list[StreamTail],
    done: Callable[[], bool] = lambda: False,
) -> None:
    """Fold what reaches ``tails`` (kept-open tails of ``conn``) until they fall quiet.

    One wait serves every tail of the connection, since pika delivers to all of
    them in each turn: reading a run's meta, ledger and activity costs one
    ``STREAM_IDLE_SECONDS``, not three. Bounded by ``STREAM_DRAIN_SECONDS``, and
    over as soon as what it reads makes ``done()`` true (a run found complete has
    nothing left to wait for). When ``done()`` is true already, it may be stale
    (a ``ttg retry`` of this process not read yet): the wait is then the full one.
    """
    deadline = time.monotonic() + STREAM_DRAIN_SECONDS
    was_done = done()
    while True:
        before = sum(t.received for t in tails)
        conn.process_data_events(time_limit=STREAM_IDLE_SECONDS)
        if sum(t.received for t in tails) == before or time.monotonic() > deadline:
            return
        if not was_done and done():
            return


class LedgerFold:
    """A run's ledger folded into counters: the first outcome of each chunk's current round wins.

    Per chunk it keeps one byte: 0 while the chunk has no counted outcome, else
    a fingerprint (1-255) of who recorded it (worker, attempt, round), so the
    same record sent twice — a publish whose confirm was lost, sent again — is
    recognised and not taken for a duplicate. One megabyte per 10^6 chunks.
    """

    def __init__(self, total_chunks: int) -> None:
        self.total = total_chunks
        self.marks = bytearray(total_chunks)
        #: chunk -> retry round, for chunks ``ttg retry`` re-queued.
        self.rounds: dict[int, int] = {}
        self.done = self.done_params = self.errors = self.param_errors = self.dead = 0
        self.duplicates = self.redelivered = self.failed = self.malformed = 0
        #: What ``ttg retry`` took out of the counts, kept (Progress.retried, retried_params).
        self.retried = self.retried_params = 0
        self.recent: deque[str] = deque(maxlen=RECENT_ERRORS)
        #: Outcomes and events that could not be read.
        self.problems = Problems()

    @property
    def finished(self) -> int:
        return self.done + self.errors + self.dead

    def max_round(self) -> int:
        return max(self.rounds.values(), default=0)

    def add(self, msg: dict[str, Any]) -> None:
        """Fold one ledger message; what cannot be read is counted in ``problems``."""
        try:
            batch = qdecode.outcomes(msg)
            event = qdecode.event(msg, self.total)
        except DecodeError as e:
            self.problems.add(str(e))
            return
        for one in batch:
            self._outcome(one)
        if event is None:
            return
        if event.kind in ("redelivered", "released"):
            self.redelivered += 1
            if event.kind == "released":
                self._note(event.detail)  # a reason: a worker declined the run
        elif event.kind == "failed":
            self.failed += 1
            self._note(event.detail)
        elif event.kind == "malformed":
            self.malformed += 1
            self._note(event.detail)
        elif event.kind == "retry":
            self._retry(event.round, event.retried)

    def is_open(self, chunk: int) -> bool:
        return self.marks[chunk] == 0

    def _note(self, error: str | None) -> None:
        if error and error not in self.recent:
            self.recent.appendleft(error)

    def _outcome(self, o: Any) -> None:
        # Checked field by field, not through Outcome.from_dict: progress folds every
        # outcome of a run, and never needs the results.
        try:
            chunk = qdecode.outcome_chunk(o, self.total)
            round_, code = qdecode.round_of(o), _CODES[o["s"]]
            params = decode.as_int(o["n"], "parameter count", 0, decode.MAX_INT)
            pe = o.get("pe") or ()
            if not isinstance(pe, list | tuple):
                raise DecodeError("parameter errors are not a list")
            perr = len(pe)
            worker = decode.as_str(o["w"], "worker", 256)
            attempt = decode.as_int(o["a"], "attempt", 0, decode.MAX_INT)
            error = decode.opt_str(o.get("e"), "error", 20_000)
            mark = zlib.crc32(f"{worker}/{attempt}/{round_}".encode()) % 255 + 1
        except (DecodeError, KeyError, TypeError) as e:
            what = e if isinstance(e, DecodeError) else f"{type(e).__name__}: {e}"
            self.problems.add(f"unreadable outcome {decode.preview(o, 60)}: {what}")
            return
        if round_ < self.rounds.get(chunk, 0):
            self.duplicates += 1
            return
        if self.marks[chunk]:
            if self.marks[chunk] != mark:
                self.duplicates += 1
            return  # else: the counted record, sent again
        self.marks[chunk] = mark
        self._count(code, params, perr, +1)
        if code != 1:
            self.failed += 1
            self._note(None if error is None else decode.one_line(error, 500))

    def _count(self, code: int, params: int, perr: int, sign: int) -> None:
        if code == 1:
            self.done += sign
            self.done_params += sign * params
        elif code == 2:
            self.errors += sign
            self.done_params += sign * (params - perr)
            self.param_errors += sign * perr
        else:
            self.dead += sign

    def _retry(self, round_: int, chunks: tuple[qdecode.Retried, ...]) -> None:
        """A ``ttg retry``: each listed chunk's outcome leaves the count; its round moves on."""
        for r in chunks:
            if self.is_open(r.chunk):
                continue
            self.marks[r.chunk] = 0
            code = _CODES[r.status]
            self._count(code, r.params, r.param_errors, -1)
            self.retried += 1
            self.retried_params += {1: r.params, 2: r.params - r.param_errors}.get(code, 0)
            self.rounds[r.chunk] = max(round_, self.rounds.get(r.chunk, 0))


def read_stream(
    params: list[pika.URLParameters],
    name: str,
    *,
    offset: Any = "first",
    problems: Problems | None = None,
) -> Iterator[dict[str, Any]]:
    """Every message of stream ``name`` published before this call, streamed, then stop.

    A message that is not a JSON object is skipped (and described in ``problems``).

    A connection of its own, closed at the end (closing is how a stream
    consumer ends without a reject).

    Raises:
        BrokerError: the stream stopped delivering before the end.
    """
    conn = open_connection(params)
    try:
        pub = conn.channel()
        pub.confirm_delivery()
        ch = conn.channel()
        ch.basic_qos(prefetch_count=READ_PREFETCH)
        buf: deque[bytes] = deque()
        count = [0]

        def on_message(ch: Any, method: Any, _props: Any, raw: bytes) -> None:
            buf.append(raw)
            count[0] += 1
            if count[0] % STREAM_ACK_EVERY == 0:
                ch.basic_ack(method.delivery_tag, multiple=True)

        ch.basic_consume(name, on_message, arguments={"x-stream-offset": offset})
        marker = uuid.uuid4().hex
        publish(pub, name, {"barrier": marker})
        last = time.monotonic()
        while True:
            while buf:
                last = time.monotonic()
                try:
                    msg = qdecode.message(buf.popleft(), f"a message of {name}")
                except DecodeError as e:
                    if problems is not None:
                        problems.add(str(e))
                    continue
                if msg.get("barrier") == marker:
                    return
                if "barrier" not in msg:
                    yield msg
            if time.monotonic() - last > READ_STALL_SECONDS:
                raise BrokerError(f"rabbitmq: stream {name} stopped delivering")
            conn.process_data_events(time_limit=0.05)
    finally:
        with contextlib.suppress(*PIKA_ERRORS):
            conn.close()
