"""The worker's loop and lifecycle: start, fetch, hand batches to the compute threads, stop.

The ordered shutdown is described in ``ttg.worker``'s docstring.
"""

from __future__ import annotations

import concurrent.futures as cf
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
from ttg.worker.dispatch import Dispatch
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
        self._pool = cf.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="ttg-compute"
        )
        self._computing = False
        self._fetching_stopped = False
        self.long = LongWatch(self._say_long)
        self._in_hand: dict[int, Delivery] = {}

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
        fetch_backoff = Backoff()
        try:
            while not self.stopping:
                self.probes.tick()
                # Every slot's child needs its own chunks in hand.
                limit = self.read_ahead.limit * self.concurrency
                try:
                    self.consumer.set_read_ahead(limit)
                    batch = self.consumer.fetch(self.fetch_timeout, limit)
                    fetch_backoff.reset()
                except AuthenticationError:
                    raise
                except BrokerError as e:
                    log.warning("cannot fetch: %s", e)
                    fetch_backoff.sleep(self._stopped)
                    continue
                if batch:
                    self._work(batch)
        finally:
            # 4. Leave the broker; end the children (killed, if one still computes a
            # chunk given back).
            self.consumer.close()
            if self._computing:
                self.children.abort()
            self.children.close()
        log.info("worker %s stopped", self.name)
        self._pool.shutdown(wait=False)
        return 0

    @property
    def compute_running(self) -> bool:
        """A chunk given back is still computing in its thread, which cannot be interrupted.

        The process must then end with ``os._exit``: the interpreter's normal
        exit would wait for that thread.
        """
        return self._computing

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

    def _work(self, batch: list[Delivery]) -> None:
        """Compute ``batch`` in the compute thread and settle every delivery of it."""
        in_hand = self._in_hand = {id(d): d for d in batch}
        self.metrics.see(d.run for d in batch)
        self.metrics.in_flight.set(len(in_hand))
        outbox: queue.SimpleQueue[tuple[Delivery, Verdict]] = queue.SimpleQueue()
        self._computing = True
        jobs = [
            self._pool.submit(self._compute_batch, slot, batch[slot :: self.concurrency], outbox)
            for slot in range(min(self.concurrency, len(batch)))
        ]
        try:
            remaining = len(batch)
            while remaining:
                got = self._collect(outbox, jobs)
                if got is None:
                    break  # 2. grace ran out (or the compute thread died): give back below
                remaining -= len(got)
                self._settle(got, in_hand)
                self.metrics.in_flight.set(len(in_hand))
        finally:
            self._computing = not all(job.done() for job in jobs)
            if self._computing:
                # Past the grace: the children stop at once; the chunks go back below.
                self.children.abort()
            # The one place a delivery that was not settled goes back.
            for d in in_hand.values():
                self._give_back(d)
            self.metrics.in_flight.set(0)
            self.long.check([], self._chunk_of)

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

    def _collect(
        self,
        outbox: queue.SimpleQueue[tuple[Delivery, Verdict]],
        jobs: list[cf.Future[None]],
    ) -> list[tuple[Delivery, Verdict]] | None:
        """The verdicts ready now (at least one); None once the grace deadline has passed."""
        while True:
            try:
                first = outbox.get(timeout=0.1)
            except queue.Empty:
                self.probes.tick()
                self.long.check(self.children.busy(), self._chunk_of)
                if self._past_deadline():
                    return None
                if all(job.done() for job in jobs) and outbox.empty():
                    log.error("compute threads ended early: %r", [j.exception() for j in jobs])
                    return None
                continue
            got = [first]
            while True:
                try:
                    got.append(outbox.get_nowait())
                except queue.Empty:
                    return got
