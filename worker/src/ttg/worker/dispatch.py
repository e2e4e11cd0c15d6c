"""The compute threads: each hands its share of a batch to its slot's compute process."""

from __future__ import annotations

import queue
import time

from ttg import compute
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
        """Compute ``batch`` in ``slot``'s child, queued there at once; a verdict for each."""
        todo: list[Delivery] = []
        for d in batch:
            early = self._before_compute(d)
            if early is None:
                todo.append(d)
            else:
                outbox.put((d, early))
        results = self.children.compute_many(slot, [(d.spec, d.lo, d.hi) for d in todo])
        try:
            for i, d in enumerate(todo):
                if self.stopping and i > 0:
                    # 3. Fetched but not started: give back at once. (The first one is
                    # the chunk in hand, even if the signal came before its compute began.)
                    outbox.put((d, Release()))
                    continue
                try:
                    r = next(results)
                except Aborted:
                    for rest in todo[i:]:
                        outbox.put((rest, Release()))
                    return
                except BaseException as e:
                    outbox.put((d, self._failure(d, f"worker error: {compute.describe(e)}")))
                    for rest in todo[i + 1 :]:
                        outbox.put((rest, Release()))
                    return
                outbox.put((d, self._verdict(d, r)))
        finally:
            results.close()

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
            # The same answer on every attempt: dead at once, never retried.
            return Complete(Outcome.dead(d, self.name, str(e)))
        # From here on this worker's death counts a delivery of d (invariant 6), not before.
        try:
            self.consumer.begin(d)
        except BrokerError:
            return Release()  # not begun: given back uncounted
        return None

    def _verdict(self, d: Delivery, r: ChunkResult | ComputeUnavailable) -> Verdict:
        """What the child's answer for ``d`` decides."""
        if isinstance(r, ComputeUnavailable):
            return Complete(Outcome.dead(d, self.name, str(r)))
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
