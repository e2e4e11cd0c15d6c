"""The worker loop: fetch a chunk, compute it off the I/O thread, record it.

Shutdown is the part that matters most, and it is ordered:

1. The first SIGTERM (or SIGINT) stops fetching. Nothing new is taken.
2. The chunk being computed gets ``grace_seconds`` to finish; if it does, its
   result is recorded and acknowledged as usual. If not, it is given back
   whole, so another worker redoes it; partial work is never acknowledged.
3. Chunks fetched but not started are given back at once.
4. The consumer leaves: heartbeat stopped, lease key deleted.
5. Exit 0. A second signal at any point exits at once (code 1); the chunk in
   hand then comes back to the queue when the lease runs out.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from ttg import compute
from ttg.broker import Broker, Consumer
from ttg.errors import BrokerConnectionError, BrokerError, TTGError
from ttg.metrics import Metrics, Probes
from ttg.run import Delivery, Outcome

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest wait between two attempts to reach a broker that went away.
MAX_BACKOFF_SECONDS = 5.0


class Worker:
    """Serves every live run of one broker until told to stop."""

    def __init__(
        self,
        broker: Broker,
        consumer: Consumer,
        *,
        metrics: Metrics,
        probes: Probes,
        grace_seconds: float,
        retry_delay: float,
        max_deliveries: int | None = None,
        fetch_timeout: float = 0.5,
    ) -> None:
        self.broker = broker
        self.consumer = consumer
        self.name = consumer.name
        self.metrics = metrics
        self.probes = probes
        self.grace_seconds = grace_seconds
        self.retry_delay = retry_delay
        self.max_deliveries = max_deliveries
        self.fetch_timeout = fetch_timeout
        #: Set by the first signal; the deadline for the chunk in hand.
        self.stop_deadline: float | None = None
        self._stopped = threading.Event()
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ttg-compute")
        self._computing = False
        self._fetching_stopped = False

    # -- signals ----------------------------------------------------------------

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

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    # -- main loop --------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped. Returns the process exit code."""
        # Without a lease nothing may be fetched: others would take our chunks.
        attempt = 0
        while not self.stopping:
            try:
                self.consumer.start()
                break
            except BrokerConnectionError as e:
                attempt += 1
                log.warning("cannot start the lease yet (attempt %d): %s", attempt, e)
                self._backoff_sleep(attempt)
        log.info("worker %s started", self.name)
        try:
            while not self.stopping:
                self.probes.tick()
                deliveries = self._with_broker(lambda: self.consumer.fetch(self.fetch_timeout))
                for i, d in enumerate(deliveries or []):
                    if self.stopping:
                        # 3. Fetched but not started: give back at once.
                        for rest in deliveries[i:]:
                            self._give_back(rest)
                        break
                    try:
                        self._process(d)
                    except TTGError as e:
                        # Its run was deleted, say: nothing to record it in.
                        log.error("chunk %s of run %s dropped: %s", d.chunk, d.run, e)
        finally:
            # 4. Leave the broker.
            self.consumer.close()
        log.info("worker %s stopped", self.name)
        if self._computing:
            # A chunk given back is still being computed in its thread, which
            # cannot be interrupted; the normal interpreter exit would wait for it.
            logging.shutdown()
            sys.stdout.flush()
            os._exit(0)
        self._pool.shutdown(wait=False)
        return 0

    def _process(self, d: Delivery) -> None:
        spec = self.broker.spec(d.run)
        max_deliveries = self.max_deliveries or spec.max_deliveries
        labels = {"run": d.run}
        if d.attempt > 1:
            self.metrics.redelivered.labels(**labels).inc()
        if d.attempt > max_deliveries:
            # Its earlier holders all died with it (or it killed them).
            why = f"delivered {d.attempt} times without an outcome; its workers were lost each time"
            self._fail(d, why, max_deliveries)
            return
        try:
            fn = compute.load(spec.compute)
        except TTGError as e:
            self._fail(d, str(e), max_deliveries)
            return
        self.metrics.in_flight.inc()
        started = time.perf_counter()
        self._computing = True
        future = self._pool.submit(
            compute.run_chunk, fn, spec.parameter_space, d.lo, d.hi, spec.work_ms
        )
        try:
            if not self._await(future):
                # 2. Grace ran out: give the whole chunk back.
                self._give_back(d)
                return
            self._computing = False
            error = future.exception()
            if error is not None:
                self.metrics.failed.labels(**labels).inc()
                detail = "".join(traceback.format_exception_only(error)).strip()
                self._fail(d, detail, max_deliveries)
                return
            self.metrics.duration.labels(**labels).observe(time.perf_counter() - started)
            outcome = Outcome.ok(d, self.name, future.result())
            counted = self._settle(lambda: self.consumer.complete(d, outcome))
            if counted is None:
                return
            if counted:
                self.metrics.completed.labels(**labels).inc()
                self.metrics.params.labels(**labels).inc(d.hi - d.lo)
            else:
                self.metrics.duplicates.labels(**labels).inc()
                log.warning(
                    "chunk %s of run %s already had a result: recorded as duplicate", d.chunk, d.run
                )
        finally:
            self.metrics.in_flight.dec()

    def _await(self, future: cf.Future[Any]) -> bool:
        """Wait for the computation; False if the shutdown grace ran out first."""
        while True:
            done, _ = cf.wait([future], timeout=0.1)
            self.probes.tick()
            if done:
                return True
            if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                return False

    def _stop_fetching(self) -> bool:
        self.consumer.stop_fetching()
        return True

    def _fail(self, d: Delivery, error: str, max_deliveries: int) -> None:
        delay = min(self.retry_delay * 2 ** (d.attempt - 1), 60.0)
        verdict = self._settle(
            lambda: self.consumer.fail(d, error, max_deliveries=max_deliveries, delay=delay)
        )
        if verdict == "dead":
            self.metrics.dead.labels(run=d.run).inc()
            log.error(
                "chunk %s of run %s dead-lettered after %d deliveries: %s",
                d.chunk,
                d.run,
                d.attempt,
                error,
            )
        elif verdict == "retry":
            log.warning(
                "chunk %s of run %s failed (attempt %d), retry in %.1f s: %s",
                d.chunk,
                d.run,
                d.attempt,
                delay,
                error,
            )

    def _give_back(self, d: Delivery) -> None:
        if not self._fetching_stopped:
            # 1. (for push-based backends) Nothing new may arrive while we give back.
            self._fetching_stopped = self._with_broker(self._stop_fetching) is not None

        def release() -> bool:
            self.consumer.release(d)
            return True

        if self._settle(release):
            self.metrics.released.labels(run=d.run).inc()
            log.info("gave back chunk %s of run %s unfinished", d.chunk, d.run)
        else:
            log.warning(
                "chunk %s of run %s returns to the queue when our lease expires", d.chunk, d.run
            )

    # -- broker hiccups ---------------------------------------------------------

    def _with_broker(self, call: Callable[[], T]) -> T | None:
        """Run ``call``; if the broker fails it, log, wait a little and return None.

        A refused command (a run deleted under our feet, say) is no reason to
        stop serving the other runs.
        """
        try:
            return call()
        except BrokerConnectionError as e:
            log.warning("broker unreachable: %s", e)
        except BrokerError as e:
            log.error("broker refused: %s", e)
        self._backoff_sleep(1)
        return None

    def _settle(self, call: Callable[[], T]) -> T | None:
        """Retry an outcome until the broker takes it: a computed result is not thrown away.

        Gives up only when shutting down past the grace deadline; the chunk then
        returns to the queue by the lease, and is computed again.
        """
        attempt = 0
        while True:
            try:
                return call()
            except BrokerConnectionError as e:
                attempt += 1
                if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                    log.error("broker unreachable at shutdown, outcome not recorded: %s", e)
                    return None
                log.warning("broker unreachable (attempt %d), retrying: %s", attempt, e)
                self._backoff_sleep(attempt)

    def _backoff_sleep(self, attempt: int) -> None:
        self.probes.tick()
        delay = min(0.1 * 2**attempt, MAX_BACKOFF_SECONDS)
        time.sleep(delay)
