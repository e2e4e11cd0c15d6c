"""Seeding a RabbitMQ run: tasks published with a window of outstanding publisher confirms.

Waiting for each confirm before the next publish costs a broker round trip
(and a quorum-log write) per chunk: 20,000 chunks took 40 s. Here up to
``WINDOW`` publishes are in flight at once, on pika's asynchronous connection,
and the seeding cursor (in the run's meta stream) is advanced only past chunks
whose every task is confirmed, itself with a confirmed publish. Publishing
waits whenever it is ``WINDOW`` task messages plus ``CURSOR_EVERY`` chunks
ahead of the confirmed cursor (however slowly the cursor's own confirms come
back), so a seeder killed at any point has published at most that much that
a rerun publishes again: duplicates the ledger absorbs (invariant 7), never a
chunk skipped.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pika
from pika.spec import Basic

from ttg.brokers.rabbitmq.connection import body, queue, task_headers, translate
from ttg.errors import BrokerError, RunNotFound

#: Publishes in flight, unconfirmed, at most.
WINDOW = 4000
#: Small chunks travel in groups of consecutive chunks, one message each, of about this
#: many parameters: fewer messages to publish, deliver and acknowledge (a group is
#: headers only, whatever its size). A consumer splits a group back into single chunks
#: when that matters (consumer.py). Chunks of this many parameters or more travel alone.
GROUP_PARAMS = 4000
#: Most chunks in one message.
GROUP_MAX = 64


def group_size(chunk_size: int) -> int:
    """Chunks per task message for chunks of ``chunk_size`` parameters."""
    return max(1, min(GROUP_MAX, GROUP_PARAMS // chunk_size))


#: The cursor is published once at least this many more chunks are confirmed.
CURSOR_EVERY = 1000


class WindowedSeeder:
    """Publish tasks ``start .. total-1`` of ``run``; ``run()`` returns the durable cursor."""

    def __init__(
        self,
        params: list[pika.URLParameters],
        run: str,
        start: int,
        total: int,
        *,
        group: int = 1,
        on_progress: Callable[[int, int], None] | None = None,
        window: int = WINDOW,
        cursor_every: int = CURSOR_EVERY,
    ) -> None:
        self.params = params
        self.run = run
        self.total = total
        self.group = max(1, group)
        self.window = window
        self.cursor_every = cursor_every
        self.on_progress = on_progress
        #: Next chunk to publish.
        self.next = start
        #: Highest cursor the broker confirmed.
        self.durable = start
        self._cursor_sent = start
        self._tag = 0
        #: chunk -> delivery tag, for tasks not yet confirmed (publish order).
        self._tasks: collections.OrderedDict[int, int] = collections.OrderedDict()
        #: delivery tag -> ("task", chunk) | ("cursor", value), not yet confirmed.
        self._unconfirmed: collections.OrderedDict[int, tuple[str, int]] = collections.OrderedDict()
        self._error: BaseException | None = None
        self._conn: pika.SelectConnection | None = None
        self._ch: Any = None

    def run_to_end(self) -> int:
        """Publish everything; the durable cursor (== total) once all is confirmed.

        Raises:
            BrokerConnectionError, BrokerError, RunNotFound: as the broker fails us.
        """
        if self.next >= self.total:
            return self.next
        last: BaseException | None = None
        for p in self.params:
            self._conn = pika.SelectConnection(
                parameters=p,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            self._conn.ioloop.start()
            if not isinstance(self._error, _OpenFailed):
                break
            last = self._error.cause
            self._error = None
        else:
            if last is not None:
                translate(last)
        if self._error is not None:
            err = self._error
            if isinstance(err, BrokerError):
                raise err
            translate(err)
        return self.durable

    # -- connection ---------------------------------------------------------------------

    def _on_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, conn: pika.SelectConnection, error: BaseException) -> None:
        self._error = _OpenFailed(error)
        conn.ioloop.stop()

    def _on_closed(self, conn: pika.SelectConnection, reason: BaseException) -> None:
        if self._error is None and not self._done():
            self._error = reason
        conn.ioloop.stop()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self._conn is not None and self._conn.is_open:
            self._conn.close()

    def _on_channel(self, ch: Any) -> None:
        self._ch = ch
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: self._pump())

    def _on_channel_closed(self, _ch: Any, reason: BaseException) -> None:
        if not self._done():
            self._fail(reason)

    def _on_return(self, *_args: Any) -> None:
        # A mandatory publish nobody could take: the run's queues were deleted.
        self._fail(RunNotFound(f"rabbitmq: run {self.run!r} was deleted while seeding"))

    # -- publishing -----------------------------------------------------------------------

    def _publish(self, routing_key: str, payload: bytes, props: pika.BasicProperties) -> int:
        self._ch.basic_publish("", routing_key, payload, props, mandatory=True)
        self._tag += 1
        return self._tag

    def republish_bound(self) -> int:
        """Most chunks published beyond the durable cursor: what a rerun may publish again."""
        return self.window * self.group + self.cursor_every

    def _pump(self) -> None:
        tasks = queue(self.run, "tasks")
        while (
            self.next < self.total
            and len(self._unconfirmed) < self.window
            and self.next + self.group - self.durable <= self.republish_bound()
        ):
            count = min(self.group, self.total - self.next)
            headers = task_headers(self.next, 0, count=count)
            tag = self._publish(tasks, b"", pika.BasicProperties(delivery_mode=2, headers=headers))
            self._tasks[self.next] = tag
            self._unconfirmed[tag] = ("task", self.next)
            self.next += count
        self._maybe_cursor()

    def _confirmed_prefix(self) -> int:
        """Every chunk below this is confirmed."""
        return next(iter(self._tasks)) if self._tasks else self.next

    def _maybe_cursor(self) -> None:
        prefix = self._confirmed_prefix()
        if prefix - self._cursor_sent >= self.cursor_every or (
            prefix == self.total and self._cursor_sent < self.total
        ):
            props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
            tag = self._publish(queue(self.run, "meta"), body({"cursor": prefix}), props)
            self._unconfirmed[tag] = ("cursor", prefix)
            self._cursor_sent = prefix

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, Basic.Nack):
            self._fail(BrokerError("rabbitmq refused a task while seeding (nack)"))
            return
        if method.multiple:
            confirmed = []
            while self._unconfirmed and next(iter(self._unconfirmed)) <= method.delivery_tag:
                confirmed.append(self._unconfirmed.popitem(last=False)[1])
        else:
            confirmed = [self._unconfirmed.pop(method.delivery_tag, ("", 0))]
        for kind, value in confirmed:
            if kind == "task":
                self._tasks.pop(value, None)
            elif kind == "cursor" and value > self.durable:
                self.durable = value
                if self.on_progress:
                    self.on_progress(value, self.total)
        if self._done():
            self._conn.close()  # type: ignore[union-attr]
            return
        self._pump()

    def _done(self) -> bool:
        return self.durable >= self.total


class _OpenFailed(Exception):
    """The connection to one node could not be opened; the next node is tried."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
