"""Settling (the main thread): every delivery ends complete, retried or given back."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ttg.backoff import Backoff
from ttg.broker import DECLINE_SECONDS
from ttg.errors import AuthenticationError, BrokerDataError, BrokerError, RunNotFound, StoreError
from ttg.run import Delivery, Recorded, Status
from ttg.worker.state import GONE, Complete, Release, Retry, Verdict, WorkerState, log

T = TypeVar("T")

#: Longest retry delay after a compute error (it doubles per attempt).
MAX_RETRY_DELAY_SECONDS = 60.0
#: While the broker refuses an outcome, a warning at most this often.
WARN_EVERY_SECONDS = 10.0


class Settle(WorkerState):
    """Recording verdicts with the results store and the broker; giving chunks back."""

    def _settle(self, got: list[tuple[Delivery, Verdict]], in_hand: dict[int, Delivery]) -> None:
        completes = [(d, v) for d, v in got if isinstance(v, Complete)]
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
            if recorded is GONE:
                recorded = [Recorded.GONE] * len(completes)
            if isinstance(recorded, list):
                self.results.settled([(d, v.outcome) for d, v in completes], recorded)
                self._count(completes, recorded, in_hand)
        for d, verdict in got:
            if isinstance(verdict, Retry):
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
            elif isinstance(verdict, Release):
                in_hand.pop(id(d), None)
                if verdict.why is None or not self._decline(d, verdict.why):
                    self._give_back(d)

    def _count(
        self,
        completes: list[tuple[Delivery, Complete]],
        recorded: list[Recorded],
        in_hand: dict[int, Delivery],
    ) -> None:
        """Metrics and logs of recorded outcomes; plain successes are counted per run at once."""
        plain: dict[str, list[int]] = {}  # run -> [chunks, parameters]
        for (d, v), r in zip(completes, recorded, strict=True):
            if r is Recorded.REFUSED:
                # Stays in hand: ``_work`` gives it back (a stuck run holds no chunk).
                log.error(
                    "the broker refused the outcome because of what the run's keys hold: "
                    "chunk given back, run left alone for a while",
                    extra=self._fields(d),
                )
                continue
            in_hand.pop(id(d), None)
            if v.seconds is not None:
                self.metrics.run(d.run).duration.observe(v.seconds)
                self.read_ahead.observe(v.seconds)
                self.long.finished(d.run, v.seconds, v.outcome.params)
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

    def _completed(self, d: Delivery, v: Complete, recorded: Recorded) -> None:
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

    def _decline(self, d: Delivery, why: str) -> bool:
        """Give ``d`` back as a chunk this worker cannot run; False if the broker refused."""
        try:
            self.consumer.decline(d, why)
        except BrokerError as e:
            log.warning("cannot decline the chunk (%s): giving it back", e, extra=self._fields(d))
            return False
        # The one log line of a decline (the consumer says nothing): the run is then left
        # alone for DECLINE_SECONDS, so this is a line per declined chunk in hand.
        log.error(
            "%s: chunk given back for another worker; this worker leaves the run for %.0f s",
            why,
            DECLINE_SECONDS,
            extra=self._fields(d),
        )
        return True

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
                if isinstance(e, BrokerDataError):
                    delay = float("inf")  # refused for good: no use waiting
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

        Returns its value, ``GONE`` if the run was deleted, or None if we gave
        up (shutting down past the grace deadline): the caller gives back.
        """
        backoff = Backoff()
        warned = 0.0
        while True:
            try:
                return call()
            except RunNotFound:
                return GONE
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
