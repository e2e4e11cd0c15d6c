"""The worker loop: fetch chunks, compute them off the main thread, settle each exactly once.

Every delivery ends in exactly one of complete, retry or release, decided in
one place (``_work``'s ``finally``): whatever happens — a compute error, a
broker refusing writes for a while, a signal, a bug — a delivery the worker
could not settle is given back, or, if the broker will not take it back
either, abandoned to the lease, never held by a live worker that no longer
works on it. "The run was deleted" is the only reason to forget one.

Shutdown is the part that matters most, and it is ordered:

1. The first SIGTERM (or SIGINT) stops fetching. Nothing new is taken.
2. The chunk being computed gets ``grace_seconds`` to finish; if it does, its
   outcome is recorded and acknowledged as usual. If not, it is given back
   whole, so another worker redoes it; partial work is never acknowledged.
3. Chunks fetched but not started are given back at once.
4. The consumer leaves: lease dropped, connection closed.
5. Exit 0. A second signal at any point exits at once (code 1); the chunks in
   hand then come back to the queue when the lease runs out.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

from ttg import compute
from ttg.backoff import Backoff
from ttg.broker import Consumer
from ttg.errors import AuthenticationError, BrokerError, RunNotFound, StoreError, UsageError
from ttg.metrics import Metrics, Probes
from ttg.run import Delivery, Outcome, Recorded, Status
from ttg.store.writer import ResultsWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest retry delay after a compute error (it doubles per attempt).
MAX_RETRY_DELAY_SECONDS = 60.0
#: Measured work a worker holds ahead, seconds: enough chunks to hide the broker's round
#: trips behind computing, few enough that a busy worker never sits on work an idle one
#: could do (a small run is shared, not swallowed by the first worker to fetch).
READ_AHEAD_SECONDS = 0.05
#: While the broker refuses an outcome, a warning at most this often.
WARN_EVERY_SECONDS = 10.0


# -- what computing a delivery decided -----------------------------------------------


@dataclass(frozen=True)
class _Complete:
    outcome: Outcome
    #: Compute time, for the histogram and the read-ahead (None: nothing was computed).
    seconds: float | None = None


@dataclass(frozen=True)
class _Retry:
    error: str


@dataclass(frozen=True)
class _Release:
    pass


_Verdict = _Complete | _Retry | _Release

#: ``_with_retries`` result when the delivery's run was deleted: nothing to settle.
_GONE = object()


class ReadAhead:
    """How many chunks to hold: enough to hide broker round trips, little enough work to share.

    The worker keeps up to ``budget_s`` seconds of measured work in hand (an
    exponentially weighted mean of chunk durations), at least 1 chunk and at
    most ``cap``. Unknown durations start at one chunk; tiny chunks soon raise
    it to the cap, anything longer than the budget keeps it at 1, so an idle
    worker beside a busy one never waits while chunks sit in the busy one's
    read-ahead.
    """

    def __init__(self, cap: int, budget_s: float) -> None:
        self.cap = max(1, cap)
        self.budget_s = budget_s
        self.mean_s: float | None = None

    def observe(self, seconds: float) -> None:
        self.mean_s = seconds if self.mean_s is None else 0.8 * self.mean_s + 0.2 * seconds

    @property
    def limit(self) -> int:
        if self.mean_s is None:
            return 1
        return max(1, min(self.cap, int(self.budget_s / max(self.mean_s, 1e-6))))


class Worker:
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
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ttg-compute")
        self._computing = False
        self._fetching_stopped = False
        #: Computes allowed and imported, by name (the compute thread's own).
        self._loaded: dict[str, compute.ComputeFn] = {}

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

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    def _past_deadline(self) -> bool:
        return self.stop_deadline is not None and time.monotonic() >= self.stop_deadline

    # -- main loop --------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped. Returns the process exit code.

        Raises:
            AuthenticationError: the broker refused our credentials (retrying cannot help).
        """
        if not self._start():
            return 0
        log.info("worker %s started", self.name)
        fetch_backoff = Backoff()
        try:
            while not self.stopping:
                self.probes.tick()
                limit = self.read_ahead.limit
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
            # 4. Leave the broker.
            self.consumer.close()
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
        in_hand = {id(d): d for d in batch}
        self.metrics.see(d.run for d in batch)
        self.metrics.in_flight.set(len(in_hand))
        outbox: queue.SimpleQueue[tuple[Delivery, _Verdict]] = queue.SimpleQueue()
        self._computing = True
        job = self._pool.submit(self._compute_batch, batch, outbox)
        try:
            remaining = len(batch)
            while remaining:
                got = self._collect(outbox, job)
                if got is None:
                    break  # 2. grace ran out (or the compute thread died): give back below
                remaining -= len(got)
                self._settle(got, in_hand)
                self.metrics.in_flight.set(len(in_hand))
        finally:
            self._computing = not job.done()
            # The one place a delivery that was not settled goes back.
            for d in in_hand.values():
                self._give_back(d)
            self.metrics.in_flight.set(0)

    def _collect(
        self, outbox: queue.SimpleQueue[tuple[Delivery, _Verdict]], job: cf.Future[None]
    ) -> list[tuple[Delivery, _Verdict]] | None:
        """The verdicts ready now (at least one); None once the grace deadline has passed."""
        while True:
            try:
                first = outbox.get(timeout=0.1)
            except queue.Empty:
                self.probes.tick()
                if self._past_deadline():
                    return None
                if job.done() and outbox.empty():
                    log.error("compute thread ended early: %r", job.exception())
                    return None
                continue
            got = [first]
            while True:
                try:
                    got.append(outbox.get_nowait())
                except queue.Empty:
                    return got

    # -- the compute thread -------------------------------------------------------------

    def _compute_batch(
        self, batch: list[Delivery], outbox: queue.SimpleQueue[tuple[Delivery, _Verdict]]
    ) -> None:
        for i, d in enumerate(batch):
            if self.stopping and i > 0:
                # 3. Fetched but not started: give back at once. (The first one is the
                # chunk in hand, even if the signal came before its compute began.)
                outbox.put((d, _Release()))
                continue
            try:
                verdict = self._compute_one(d)
            except BaseException as e:
                verdict = self._failure(d, f"worker error: {compute.describe(e)}")
            outbox.put((d, verdict))

    def _compute_one(self, d: Delivery) -> _Verdict:
        spec = d.spec
        if d.attempt > spec.max_deliveries:
            # Its earlier holders all died with it (or it killed them).
            return _Complete(
                Outcome.dead(
                    d,
                    self.name,
                    f"delivered {d.attempt} times without an outcome: "
                    "the workers holding it were lost each time",
                )
            )
        # issue 17 item 5: from here on this worker's death counts a delivery of d (not before).
        try:
            self.consumer.begin(d)
        except BrokerError:
            return _Release()  # not begun: given back uncounted
        fn = self._loaded.get(spec.compute)
        if fn is None:
            try:
                compute.check_allowed(spec.compute, self.compute_allow)
                fn = self._loaded[spec.compute] = compute.load(spec.compute, self.compute_allow)
            except UsageError as e:
                # The same answer on every attempt: dead at once, never retried.
                return _Complete(Outcome.dead(d, self.name, str(e)))
        r = compute.run_chunk(fn, spec.parameter_space, d.lo, d.hi, spec.work_ms)
        result_json, unserialisable = compute.encode_results(r.results, d.lo)
        errors = [(i, text) for i, text, _ in r.errors] + unserialisable
        if r.transient and d.attempt < spec.max_deliveries:
            return _Retry(r.first_error() or "transient error")
        errors.sort()
        outcome = Outcome(
            chunk=d.chunk,
            status=Status.ERRORS if errors else Status.OK,
            params=d.hi - d.lo,
            worker=self.name,
            attempt=d.attempt,
            finished_at=time.time(),
            result=r.results,
            result_json=result_json,
            error=f"parameter {errors[0][0]}: {errors[0][1]}" if errors else None,
            param_errors=tuple(errors),
            started_at=r.started_at,
            round=d.round,
        )
        return _Complete(outcome, r.seconds)

    def _failure(self, d: Delivery, error: str) -> _Verdict:
        if d.attempt < d.spec.max_deliveries:
            return _Retry(error)
        return _Complete(Outcome.dead(d, self.name, error))

    # -- settling (the main thread) -------------------------------------------------------

    def _settle(self, got: list[tuple[Delivery, _Verdict]], in_hand: dict[int, Delivery]) -> None:
        completes = [(d, v) for d, v in got if isinstance(v, _Complete)]
        if completes:
            given = [(d, v.outcome) for d, v in completes]
            # Results first: durable in the run's store (capped, and out of the ledger) ...
            items = self._with_retries(lambda: self.results.persist(given), "results")
            # ... then the ledger counts them (for a broker run it is the store).
            recorded = None
            if isinstance(items, list):
                completes = [(d, dataclasses.replace(v, outcome=o)) for (d, v), (_, o) in
                             zip(completes, items, strict=True)]  # fmt: skip
                recorded = self._with_retries(lambda: self.consumer.complete(items), "outcomes")
            if recorded is _GONE:
                recorded = [Recorded.GONE] * len(completes)
            if isinstance(recorded, list):
                self.results.settled([(d, v.outcome) for d, v in completes], recorded)
                self._count(completes, recorded, in_hand)
        for d, verdict in got:
            if isinstance(verdict, _Retry):
                delay = min(self.retry_delay * 2 ** (d.attempt - 1), MAX_RETRY_DELAY_SECONDS)

                def retry(
                    d: Delivery = d, error: str = verdict.error, delay: float = delay
                ) -> bool:
                    self.consumer.retry(d, error, delay=delay)
                    return True

                if self._with_retries(retry, f"the retry of chunk {d.chunk}") is not None:
                    in_hand.pop(id(d), None)
                    self.metrics.run(d.run).failed.inc()
                    log.warning(
                        "chunk failed (attempt %d), retry in %.1f s: %s",
                        d.attempt,
                        delay,
                        verdict.error,
                        extra=self._fields(d),
                    )
            elif isinstance(verdict, _Release):
                in_hand.pop(id(d), None)
                self._give_back(d)

    def _count(
        self,
        completes: list[tuple[Delivery, _Complete]],
        recorded: list[Recorded],
        in_hand: dict[int, Delivery],
    ) -> None:
        """Metrics and logs of recorded outcomes; plain successes are counted per run at once."""
        plain: dict[str, list[int]] = {}  # run -> [chunks, parameters]
        for (d, v), r in zip(completes, recorded, strict=True):
            in_hand.pop(id(d), None)
            if v.seconds is not None:
                self.metrics.run(d.run).duration.observe(v.seconds)
                self.read_ahead.observe(v.seconds)
            if (
                v.outcome.status is Status.OK
                and d.attempt == 1
                and r in (Recorded.COUNTED, Recorded.RECORDED)
            ):
                tally = plain.setdefault(d.run, [0, 0])
                tally[0] += 1
                tally[1] += v.outcome.params
            else:
                self._completed(d, v, r)
        for run, (chunks, params) in plain.items():
            m = self.metrics.run(run)
            m.completed.inc(chunks)
            m.params.inc(params)

    def _completed(self, d: Delivery, v: _Complete, recorded: Recorded) -> None:
        """One outcome that is not a plain first-delivery success: counted and logged."""
        m = self.metrics.run(d.run)
        o = v.outcome
        if d.attempt > 1:
            m.redelivered.inc()
        if recorded is Recorded.GONE:
            log.warning("run was deleted: outcome dropped", extra=self._fields(d))
            return
        if recorded is Recorded.DUPLICATE:
            m.duplicates.inc()
            log.warning(
                "chunk already had an outcome: recorded as duplicate", extra=self._fields(d)
            )
            return
        if o.status is Status.DEAD:
            m.dead.inc()
            log.error(
                "chunk dead-lettered after %d deliveries: %s",
                d.attempt,
                o.error,
                extra=self._fields(d),
            )
            return
        m.completed.inc()
        m.params.inc(o.params - len(o.param_errors))
        if o.param_errors:
            m.failed.inc()
            log.warning(
                "chunk recorded with %d parameter errors, first: %s",
                len(o.param_errors),
                o.error,
                extra=self._fields(d),
            )

    def _give_back(self, d: Delivery) -> None:
        """Release ``d`` so another worker takes it at once; else abandon it to the lease."""
        if not self._fetching_stopped:
            # 1. (push-based backends) Nothing new may arrive while we give back.
            try:
                self.consumer.stop_fetching()
                self._fetching_stopped = True
            except BrokerError as e:
                log.warning("cannot stop fetching: %s", e)
        deadline = self.stop_deadline or time.monotonic() + self.grace_seconds
        backoff = Backoff()
        while True:
            try:
                self.consumer.release(d)
                self.metrics.run(d.run).released.inc()
                log.info("gave the chunk back unfinished", extra=self._fields(d))
                return
            except RunNotFound:
                return
            except BrokerError as e:
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    self.consumer.abandon(d)
                    log.warning(
                        "cannot give the chunk back (%s): it returns to the queue after a lease",
                        e,
                        extra=self._fields(d),
                    )
                    return
                time.sleep(delay)

    def _with_retries(self, call: Callable[[], T], what: str) -> T | object | None:
        """Run ``call`` until the broker takes it: a computed outcome is not thrown away.

        Returns its value, ``_GONE`` if the run was deleted, or None if we gave
        up (shutting down past the grace deadline): the caller gives back.
        """
        backoff = Backoff()
        warned = 0.0
        while True:
            try:
                return call()
            except RunNotFound:
                return _GONE
            except AuthenticationError:
                raise
            except (BrokerError, StoreError) as e:
                # A results store down for a while is waited out like the broker: the
                # chunk stays in hand, its lease renewed, nothing is lost.
                where = "results store" if isinstance(e, StoreError) else "broker"
                if self._past_deadline():
                    log.error("%s refused %s at shutdown: %s", where, what, e)
                    return None
                if time.monotonic() - warned > WARN_EVERY_SECONDS:
                    warned = time.monotonic()
                    log.warning("%s refused %s, retrying: %s", where, what, e)
                self.probes.tick()
                backoff.sleep()

    def _fields(self, d: Delivery) -> dict[str, Any]:
        """Structured fields of every log line about a chunk (JSON logs carry them as keys)."""
        return {"run": d.run, "chunk": d.chunk, "worker": self.name, "attempt": d.attempt}
