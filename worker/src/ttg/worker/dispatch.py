"""The compute threads: each hands its share of a batch to its slot's compute process."""

from __future__ import annotations

import queue
import time

from ttg import compute
from ttg.broker import CANNOT_RUN
from ttg.children.supervisor import Aborted, ComputeUnavailable
from ttg.compute import ChunkResult
from ttg.errors import BrokerError, UsageError
from ttg.run import Delivery, Outcome, Status
from ttg.worker.state import Complete, Release, Retry, Verdict, WorkerState


class Dispatch(WorkerState):
    """Computing deliveries into verdicts (in a compute thread per slot)."""

    def _compute_batch(
        self,
        slot: int,
        batch: list[Delivery],
        outbox: queue.SimpleQueue[tuple[Delivery, Verdict]],
    ) -> None:
        """Compute ``batch`` in ``slot``'s child, one chunk at a time; a verdict for each.

        One request per chunk, sent just after the chunk is marked begun: a chunk
        queued with a child ahead of time would count a delivery if the worker died
        before the child reached it (invariant 6).
        """
        for i, d in enumerate(batch):
            if self.stopping and i > 0:
                # 3. Fetched but not started: give back at once. (The first one is the
                # chunk in hand, even if the signal came before its compute began.)
                outbox.put((d, Release()))
                continue
            early = self._before_compute(d)
            if early is not None:
                outbox.put((d, early))
                continue
            try:
                r: ChunkResult | ComputeUnavailable = self.children.compute(
                    slot, d.spec, d.lo, d.hi
                )
            except ComputeUnavailable as e:
                r = e
            except Aborted:
                for rest in batch[i:]:
                    outbox.put((rest, Release()))
                return
            except BaseException as e:
                outbox.put((d, self._failure(d, f"worker error: {compute.describe(e)}")))
                for rest in batch[i + 1 :]:
                    outbox.put((rest, Release()))
                return
            outbox.put((d, self._verdict(d, r)))

    def _before_compute(self, d: Delivery) -> Verdict | None:
        """The verdict of a delivery that must not be computed; None for one that may."""
        if d.attempt > d.spec.max_deliveries:
            # Its earlier holders all died with it (or it killed them).
            return Complete(
                Outcome.dead(
                    d,
                    self.name,
                    f"delivered {d.attempt} times without an outcome: "
                    "the workers holding it were lost each time",
                )
            )
        try:
            # By name here; the child imports it (user code never runs in the worker).
            compute.check_allowed(d.spec.compute, self.compute_allow)
        except UsageError as e:
            # This worker may not run it; others may: given back uncounted (declined).
            return self._cannot_run(d, str(e))
        # From here on this worker's death counts a delivery of d (invariant 6), not before.
        try:
            self.consumer.begin(d)
        except BrokerError:
            return Release()  # not begun: given back uncounted
        return None

    def _cannot_run(self, d: Delivery, why: str) -> Release:
        """A chunk of a run whose compute this worker cannot run (not allowed here, not
        importable): declined, never recorded dead, so a stale or misconfigured worker
        cannot dead-letter a run that the others can compute."""
        self.metrics.run(d.run).declined.inc()
        return Release(f"worker {self.name} {CANNOT_RUN} {d.spec.compute}: {why}")

    def _verdict(self, d: Delivery, r: ChunkResult | ComputeUnavailable) -> Verdict:
        """What the child's answer for ``d`` decides."""
        if isinstance(r, ComputeUnavailable):
            return self._cannot_run(d, str(r))
        spec = d.spec
        result_json, unserialisable = compute.encode_results(r.results, d.lo)
        errors: list[tuple[int, str] | tuple[int, str, str]] = [
            (i, text, tb) if tb else (i, text) for i, text, _, tb in r.errors
        ]
        errors += unserialisable
        if r.transient and d.attempt < spec.max_deliveries:
            return Retry(r.first_error() or "transient error")
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
        return Complete(outcome, r.seconds)

    def _failure(self, d: Delivery, error: str) -> Verdict:
        if d.attempt < d.spec.max_deliveries:
            return Retry(error)
        return Complete(Outcome.dead(d, self.name, error))
