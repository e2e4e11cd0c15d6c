"""One thread owns a pika connection; other threads talk to it by queue.

pika connections are not thread-safe, and a BlockingConnection serves
heartbeats only while some thread calls into it. So an ``IOThread`` is the
only thread that touches its connection: it serves heartbeats, dispatches
deliveries to the subclass's callbacks, and runs other threads' requests
(``call`` waits for the answer, ``post`` does not), woken by
``add_callback_threadsafe``. After a lost connection it reconnects with the
package's backoff; requests waiting at that moment fail with
``BrokerConnectionError`` and are the caller's to retry.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import queue as queues
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pika
import pika.exceptions as pex

from ttg.backoff import Backoff
from ttg.brokers.rabbitmq.connection import PIKA_ERRORS, open_connection, translate
from ttg.errors import AuthenticationError, BrokerConnectionError, TTGError, UsageError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What the loop recovers from by reconnecting.
_RECOVERABLE: tuple[type[BaseException], ...] = (*PIKA_ERRORS, TTGError)
#: How long ``start`` waits for the first connection.
START_TIMEOUT_SECONDS = 10.0
#: ``tick`` (timers: snapshots, stale groups, redeliveries judged) at most this often;
#: the loop itself turns at every delivery and request.
TICK_SECONDS = 0.01


class IOThread:
    """Base of the RabbitMQ consumer: the connection's own thread and its request queue."""

    def __init__(self, params: list[pika.URLParameters], name: str) -> None:
        self.params = params
        self.thread_name = name
        self.conn: pika.BlockingConnection | None = None
        #: Bumped at every new connection: delivery tags of older ones are void.
        self.generation = 0
        self._requests: queues.SimpleQueue[tuple[Callable[[], Any], cf.Future[Any] | None]] = (
            queues.SimpleQueue()
        )
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: BaseException | None = None
        # Where the first connection goes: a random node, so a cluster's workers
        # spread over its nodes (then the next node after each loss).
        self._node = random.randrange(len(params))  # noqa: S311 - not security

    # -- for subclasses ---------------------------------------------------------------------

    def on_connected(self, conn: pika.BlockingConnection) -> None:
        """Open channels and subscriptions on a new connection (I/O thread)."""

    def on_lost(self) -> None:
        """Forget what belonged to the lost connection (I/O thread)."""

    def tick(self) -> None:
        """Periodic work between two rounds of I/O (I/O thread)."""

    # -- other threads' side -------------------------------------------------------------

    def start_io(self) -> None:
        self._stop.clear()
        self._ready.clear()
        self._last_error = None
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._ready.wait(0.05):
            error = self._last_error
            if isinstance(error, AuthenticationError | UsageError):
                # Refused (credentials, an untrusted certificate, a virtual host the
                # broker does not have): retrying cannot help, so the worker says so
                # once, at once, instead of after the wait.
                self.stop_io()
                raise error
            if time.monotonic() < deadline:
                continue
            self.stop_io()
            raise BrokerConnectionError(
                f"rabbitmq: not connected after {START_TIMEOUT_SECONDS:.0f}s ({error})"
            )

    @property
    def io_connected(self) -> bool:
        conn = self.conn
        return self._ready.is_set() and conn is not None and conn.is_open

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the I/O thread and return its result (or raise its error)."""
        future: cf.Future[T] = cf.Future()
        self._requests.put((fn, future))
        self._wake()
        while True:
            try:
                return future.result(timeout=1)
            except cf.TimeoutError:
                if self._thread is None or not self._thread.is_alive():
                    raise BrokerConnectionError(
                        "rabbitmq: the consumer's I/O thread is gone"
                    ) from None

    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the I/O thread some time soon; never raises."""
        self._requests.put((fn, None))
        self._wake()

    def stop_io(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _wake(self) -> None:
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                conn.add_callback_threadsafe(lambda: None)

    # -- the I/O thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = Backoff()
        tick_due = 0.0
        while not self._stop.is_set():
            try:
                if self.conn is None or not self.conn.is_open:
                    self._connect()
                    backoff.reset()
                self.conn.process_data_events(time_limit=0.05)  # type: ignore[union-attr]
                self._drain()
                if time.monotonic() >= tick_due:
                    tick_due = time.monotonic() + TICK_SECONDS
                    self.tick()
            except _RECOVERABLE as e:
                self._lost(e)
                if isinstance(self._last_error, AuthenticationError) and self._ready.is_set():
                    # Refused after having been let in (before, start_io reports it).
                    log.error("%s", self._last_error)
                backoff.sleep(self._stop)
            except Exception as e:
                # A bug, not the network: say so loudly, then carry on as after a lost
                # connection.
                log.exception("rabbitmq I/O thread: unexpected error")
                self._lost(e)
                backoff.sleep(self._stop)
        self._drain()  # requests that arrived while stopping run (or fail) now
        self._fail_waiting(BrokerConnectionError("rabbitmq: consumer closed"))
        if self.conn is not None and self.conn.is_open:
            with contextlib.suppress(*PIKA_ERRORS):
                self.conn.close()

    def _connect(self) -> None:
        self._node += 1
        self.conn = open_connection(self.params, start=self._node)
        self.generation += 1
        self.on_connected(self.conn)
        self._ready.set()
        log.info("connected to rabbitmq")

    def _lost(self, e: BaseException) -> None:
        try:
            translate(e) if not isinstance(e, TTGError) else None
            self._last_error = e
        except TTGError as translated:
            self._last_error = translated
        if self._ready.is_set():
            log.warning("rabbitmq connection lost (%s); reconnecting", self._last_error)
        if self.conn is not None and self.conn.is_open:
            with contextlib.suppress(*PIKA_ERRORS):
                self.conn.close()
        self.conn = None
        self.on_lost()
        self._fail_waiting(BrokerConnectionError(f"rabbitmq: connection lost ({self._last_error})"))

    def _fail_waiting(self, error: Exception) -> None:
        while True:
            try:
                _, future = self._requests.get_nowait()
            except queues.Empty:
                return
            if future is not None:
                future.set_exception(error)

    def _drain(self) -> None:
        while True:
            try:
                fn, future = self._requests.get_nowait()
            except queues.Empty:
                return
            try:
                result = fn()
            except PIKA_ERRORS as e:
                if future is not None:
                    try:
                        translate(e)
                    except TTGError as translated:
                        future.set_exception(translated)
                if not isinstance(e, pex.UnroutableError | pex.NackError):
                    raise  # the connection or channel is broken: reconnect
            except Exception as e:
                if future is not None:
                    future.set_exception(e)
            else:
                if future is not None:
                    future.set_result(result)
