"""The worker's loop and lifecycle: start, fetch, hand batches to the compute threads, stop.

The ordered shutdown is described in ``ttg.worker``'s docstring.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType

from ttg import compute
from ttg.backoff import Backoff
from ttg.broker import Consumer
from ttg.children.supervisor import Supervisor
from ttg.errors import AuthenticationError, BrokerError
from ttg.metrics import Metrics, Probes
from ttg.run import Delivery, LongParam
from ttg.store.writer import ResultsWriter
from ttg.worker.dispatch import Backlog, Dispatch
from ttg.worker.long import LongWatch
from ttg.worker.readahead import READ_AHEAD_SECONDS, ReadAhead
from ttg.worker.settle import Settle
from ttg.worker.state import Verdict, log


class Worker(Dispatch, Settle):
    """Serves every live run its consumer sees, until told to stop."""

    def __init__(
        self,
        consumer: Consumer,
        *,
        metrics: Metrics,
        probes: Probes,
        grace_seconds: float,
        retry_delay: float,
        read_ahead_cap: int,
        compute_allow: Sequence[str] = compute.DEFAULT_ALLOW,
        fetch_timeout: float = 0.5,
        results: ResultsWriter | None = None,
        concurrency: int = 1,
    ) -> None:
        self.consumer = consumer
        self.name = consumer.name
        #: Writes each outcome's results to its run's results store before the ledger counts it.
        self.results = results or ResultsWriter(self.name)
        self.metrics = metrics
        self.probes = probes
        self.grace_seconds = grace_seconds
        self.retry_delay = retry_delay
        self.compute_allow = tuple(compute_allow)
        self.fetch_timeout = fetch_timeout
        self.read_ahead = ReadAhead(read_ahead_cap, budget_s=READ_AHEAD_SECONDS)
        #: Set by the first signal; the deadline for the chunk in hand.
        self.stop_deadline: float | None = None
        self._stopped = threading.Event()
        #: Chunks computed at once, each by its own child process.
        self.concurrency = max(1, concurrency)
        self.children = Supervisor(self.compute_allow, self.concurrency)
        #: Chunks fetched and not yet taken by the compute threads, one per slot.
        self.backlog = Backlog(self.concurrency)
        self._outbox: queue.SimpleQueue[tuple[Delivery, Verdict]] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._compute_loop,
                args=(slot, self._outbox),
                name=f"ttg-compute-{slot}",
                daemon=True,
            )
            for slot in range(self.concurrency)
        ]
        self._fetch_backoff = Backoff()
        #: No fetch before this (monotonic): the broker refused the last one.
        self._fetch_after = 0.0
        self._fetching_stopped = False
        self.long = LongWatch(self._say_long)
        self._in_hand: dict[int, Delivery] = {}
        self._settled = threading.Condition()

    # -- signals ----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_deadline is not None:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        self.request_stop(f"{signal.Signals(signum).name} received")

    def request_stop(self, why: str) -> None:
        """Begin the ordered shutdown (thread-safe, idempotent)."""
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.grace_seconds
            log.info(
                "%s: finishing the chunk in hand (up to %.0f s), then exiting",
                why,
                self.grace_seconds,
            )
        self._stopped.set()

    # -- main loop --------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped. Returns the process exit code.

        Raises:
            AuthenticationError: the broker refused our credentials (retrying cannot help).
        """
        self.children.start()
        if not self._start():
            self.children.close()
            return 0
        log.info("worker %s started", self.name)
        for t in self._threads:
            t.start()
        try:
            while not (self.stopping and not self._in_hand):
                self.probes.tick()
                if self.stopping:
                    # 3. Fetched but not taken by a compute thread: given back at once.
                    for d in self.backlog.drain():
                        self._give_back(self._in_hand.pop(id(d)))
                else:
                    self._top_up()
                if not self._in_hand:
                    continue
                # Verdicts as they come, while the compute threads go on: the next fetch
                # is due once half of what the worker may hold is settled.
                got = self._collect(0.1 if self._full() or self.stopping else 0.02)
                if got is None:
                    # 2. Grace ran out (or the compute threads ended): given back below.
                    self._give_back_all()
                elif got:
                    self._settle(got, self._in_hand)
                    self._after_settle(got)
                    with self._settled:
                        self._settled.notify_all()
        finally:
            # The one place a delivery that was not settled goes back.
            self._give_back_all()
            self.backlog.close()
            # 4. Leave the broker; end the children.
            self.consumer.close()
            self.children.close()
        log.info("worker %s stopped", self.name)
        return 0

    def _limit(self) -> int:
        """Most chunks to hold: every slot's child needs its own."""
        return self.read_ahead.limit * self.concurrency

    def _full(self) -> bool:
        """Too many in hand to fetch: more is fetched once half of the limit is settled."""
        limit = self._limit()
        return limit - len(self._in_hand) < max(1, limit // 2)

    def _top_up(self) -> None:
        """Fetch more chunks for the compute threads unless the worker holds enough."""
        if self._full() or time.monotonic() < self._fetch_after:
            return
        limit = self._limit()
        try:
            self.consumer.set_read_ahead(limit)
            # Blocking only with nothing in hand: else the verdicts are waited for.
            batch = self.consumer.fetch(
                0.0 if self._in_hand else self.fetch_timeout, limit - len(self._in_hand)
            )
            self._fetch_backoff.reset()
        except AuthenticationError:
            raise
        except BrokerError as e:
            log.warning("cannot fetch: %s", e)
            if self._in_hand:
                # Settling goes on meanwhile; the next fetch waits its turn.
                self._fetch_after = time.monotonic() + self._fetch_backoff.next()
            else:
                self._fetch_backoff.sleep(self._stopped)
            return
        if batch:
            self.metrics.see(d.run for d in batch)
            self._in_hand.update((id(d), d) for d in batch)
            self.metrics.in_flight.set(len(self._in_hand))
            self.backlog.put(batch)

    def _after_settle(self, got: list[tuple[Delivery, Verdict]]) -> None:
        """Give back what was decided but not settled (refused by the broker); report."""
        for d, _ in got:
            if id(d) in self._in_hand:
                self._give_back(self._in_hand.pop(id(d)))
        self.metrics.in_flight.set(len(self._in_hand))
        if not self._in_hand:
            self.long.check([], self._chunk_of)

    def _give_back_all(self) -> None:
        """Give back every delivery in hand; children still computing one are stopped."""
        self.backlog.drain()
        if self.compute_running:
            # Past the grace: the children stop at once; the chunks go back below.
            self.children.abort()
        for d in list(self._in_hand.values()):
            self._give_back(d)
        self._in_hand.clear()
        with self._settled:
            self._settled.notify_all()
        self.metrics.in_flight.set(0)
        self.long.check([], self._chunk_of)

    @property
    def compute_running(self) -> bool:
        """A chunk given back is still computing in its thread, which cannot be interrupted.

        The process must then end with ``os._exit``: the interpreter's normal
        exit would wait for that thread.
        """
        return any(self.backlog.busy)

    def _start(self) -> bool:
        """Connect and take the lease, retrying while the broker is away; False if stopped first."""
        # Without a lease nothing may be fetched: others would take our chunks.
        backoff = Backoff()
        while not self.stopping:
            try:
                self.consumer.start()
                return True
            except AuthenticationError:
                raise
            except BrokerError as e:
                log.warning("cannot reach the broker yet (attempt %d): %s", backoff.attempt + 1, e)
                self.probes.tick()
                backoff.sleep(self._stopped)
        return False

    def _chunk_of(self, run: str, lo: int) -> int | None:
        """The chunk in hand of ``run`` that starts at parameter ``lo``."""
        return next(
            (d.chunk for d in list(self._in_hand.values()) if d.run == run and d.lo == lo), None
        )

    def _say_long(self, params: Sequence[LongParam]) -> None:
        try:
            self.consumer.running_long(params)
        except Exception as e:  # best effort: never the worker's end
            log.debug("long-running parameters not reported: %s", e)

    def _collect(self, timeout: float) -> list[tuple[Delivery, Verdict]] | None:
        """The verdicts ready within ``timeout`` (perhaps none); None once the grace deadline
        has passed, or if the compute threads left deliveries undecided (they failed)."""
        outbox = self._outbox
        try:
            got = [outbox.get(timeout=timeout)]
        except queue.Empty:
            self.long.check(self.children.busy(), self._chunk_of)
            if self._past_deadline():
                return None
            if not all(t.is_alive() for t in self._threads):
                # A bug, logged by the thread: a worker that cannot compute goes away
                # (and its pod is restarted) rather than fetch what it cannot compute.
                self.request_stop("a compute thread failed")
                return None
            if self.backlog.idle() and outbox.empty():
                log.error("%d chunks in hand had no verdict: given back", len(self._in_hand))
                return None
            return []
        while True:
            try:
                got.append(outbox.get_nowait())
            except queue.Empty:
                break
        # Not a verdict for what was given back meanwhile (its compute was aborted).
        return [(d, v) for d, v in got if self._in_hand.get(id(d)) is d]
