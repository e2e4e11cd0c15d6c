"""The compute threads: each hands its share of a batch to its slot's compute process."""

from __future__ import annotations

import collections
import queue
import threading
import time

from ttg import compute
from ttg.broker import CANNOT_RUN
from ttg.children.supervisor import Aborted, ComputeUnavailable
from ttg.compute import ChunkResult
from ttg.errors import BrokerError, UsageError
from ttg.run import Delivery, Outcome, Status
from ttg.worker.state import Complete, Release, Retry, Verdict, WorkerState, log

#: Work queued with a compute process beyond the chunk it is on (by the mean chunk
#: time): enough that it never waits for the worker between short chunks, little
#: enough that a worker's death counts few chunks that had not started.
QUEUE_AHEAD_SECONDS = 0.02


def _queueable(d: Delivery) -> bool:
    """May ``d`` be queued with a compute process behind other chunks (its first
    delivery, of a run that allows more than one)?"""
    return d.attempt == 1 and d.spec.max_deliveries > 1


class Backlog:
    """Chunks fetched and not yet taken by a compute thread.

    Shared by the compute threads, each taking a little at a time: a slot stuck on
    a long chunk holds up only what it took, never the chunks the others could compute.
    """

    def __init__(self, slots: int) -> None:
        self._waiting: collections.deque[Delivery] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        #: Per slot, whether its thread holds a batch it took.
        self.busy = [False] * slots

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, batch: list[Delivery]) -> None:
        with self._ready:
            self._waiting.extend(batch)
            self._ready.notify_all()

    def take(self, slot: int, most: int) -> list[Delivery] | None:
        """Up to ``most`` chunks, waiting for one; None once closed."""
        with self._ready:
            self.busy[slot] = False
            while not self._waiting and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            self.busy[slot] = True
            n = min(most, len(self._waiting))
            return [self._waiting.popleft() for _ in range(n)]

    def drain(self) -> list[Delivery]:
        """Every chunk waiting, taken out."""
        with self._ready:
            out = list(self._waiting)
            self._waiting.clear()
            return out

    def idle(self) -> bool:
        """Nothing waiting, and no compute thread holds a batch."""
        with self._ready:
            return not self._waiting and not any(self.busy)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class Dispatch(WorkerState):
    """Computing deliveries into verdicts (in a compute thread per slot)."""

    backlog: Backlog

    def _compute_loop(self, slot: int, outbox: queue.SimpleQueue[tuple[Delivery, Verdict]]) -> None:
        """A compute thread: take a little of the backlog at a time (``QUEUE_AHEAD_SECONDS``
        of work), compute it in ``slot``'s child; until the backlog closes."""
        while True:
            mean = self.read_ahead.mean_s
            most = 1 if mean is None else int(QUEUE_AHEAD_SECONDS / max(mean, 1e-6))
            batch = self.backlog.take(slot, max(1, most))
            if batch is None:
                return
            try:
                self._compute_batch(slot, batch, outbox, lead=not self.stopping)
            except BaseException:
                log.exception("compute thread %d failed: its chunks are given back", slot)
                raise

    def _compute_batch(
        self,
        slot: int,
        batch: list[Delivery],
        outbox: queue.SimpleQueue[tuple[Delivery, Verdict]],
        lead: bool = True,
    ) -> None:
        """Compute ``batch`` in ``slot``'s child; a verdict for each.

        After a stop, a ``lead`` batch (taken before it) computes its first chunk, the one
        in hand; everything else is given back.

        Short first deliveries are queued with the child ahead of the one it is on,
        ``QUEUE_AHEAD_SECONDS`` of work at most (``Supervisor.compute_many``: it goes
        from one chunk to the next without waiting for this thread), each marked
        begun as it is queued. A worker lost meanwhile counts a delivery against
        those too, once: a redelivered chunk (or one of a run that allows a single
        delivery) is computed alone, marked just before it starts, so no chunk is
        counted twice for its neighbours' sake (invariant 6), as on RabbitMQ, where
        a group of chunks travels and is marked as one message.
        """
        groups: list[list[Delivery]] = []
        for d in batch:
            early = self._refused(d)
            if early is not None:
                outbox.put((d, early))
            elif _queueable(d) and groups and _queueable(groups[-1][-1]):
                groups[-1].append(d)
            else:
                groups.append([d])
        for n, group in enumerate(groups):
            # 3. Fetched but not started: given back at once. (The first of a batch taken
            # before the stop is the chunk in hand, even if its compute had not begun.)
            skip = self.stopping and not (n == 0 and lead)
            whole = not skip and self._compute_group(slot, group, outbox)
            if not whole:
                # From this group on if it was skipped, else from the next (decided before
                # computing it: a stop during its compute must not give it back twice).
                later = groups[n:] if skip else groups[n + 1 :]
                for d in (d for rest in later for d in rest):
                    outbox.put((d, Release()))
                return

    def _compute_group(
        self,
        slot: int,
        group: list[Delivery],
        outbox: queue.SimpleQueue[tuple[Delivery, Verdict]],
    ) -> bool:
        """Compute ``group`` in one go; True if every delivery of it got its verdict
        and the worker is not stopping (False: the rest of the batch goes back)."""

        def begin(i: int, j: int) -> None:
            # From here on this worker's death counts a delivery of each (invariant 6).
            self.consumer.begin_many(group[i:j])

        mean = self.read_ahead.mean_s
        depth = 1 if mean is None else int(QUEUE_AHEAD_SECONDS / max(mean, 1e-6))
        done = 0
        try:
            chunks = [(d.spec, d.lo, d.hi) for d in group]
            for r in self.children.compute_many(slot, chunks, begin, depth):
                d = group[done]
                done += 1
                outbox.put((d, self._verdict(d, r)))
                if self.stopping:
                    break
        except (Aborted, BrokerError):
            pass  # aborted, or not begun: given back uncounted below
        except BaseException as e:
            d = group[done]
            done += 1
            outbox.put((d, self._failure(d, f"worker error: {compute.describe(e)}")))
        for d in group[done:]:
            outbox.put((d, Release()))
        if done and not _queueable(group[0]):
            self._await_settled(group[:done])
        return done == len(group) and not self.stopping

    def _await_settled(self, deliveries: list[Delivery]) -> None:
        """Wait until the main thread has settled (or given back) ``deliveries``.

        A chunk computed alone (a redelivery, or any chunk of a run allowing one
        delivery) is settled before its slot begins another:
        were the next to kill the worker while this one's verdict waited in the outbox,
        its mark would count it once more, for a neighbour's sake (invariant 6).
        """

        def settled() -> bool:
            return all(self._in_hand.get(id(d)) is not d for d in deliveries)

        with self._settled:
            # The main thread notifies whenever deliveries leave its hand; the timeout
            # only bounds the wait should a notification go astray.
            while not self._settled.wait_for(settled, timeout=1.0):
                pass

    def _refused(self, d: Delivery) -> Verdict | None:
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
        unserialisable: list[tuple[int, str]] = []
        if r.results_json is not None:
            result_json = r.results_json
        else:
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
