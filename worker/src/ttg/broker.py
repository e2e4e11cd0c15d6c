"""The broker interface every backend implements.

A ``Broker`` owns runs: it seeds them, steers them, reports their progress and
keeps their ledger. A ``Consumer`` is one worker's session with the broker,
and the worker's only door to it: it fetches deliveries (each carrying its
run's spec), and settles each one in exactly one of three ways — ``complete``,
``retry`` or ``release``. Backends live in ``ttg.brokers.<name>``; the worker
core never imports redis or pika. Where a broker is and how to reach it
(URL, credentials, TLS) is ``ttg.endpoint``'s, which opens backends.

The contract (docs/design.md, invariants 1-13; docs/contract.md), checked by one
conformance suite run unchanged against every backend:

- ``seed`` is idempotent and resumable;
- ``complete`` returns only once each outcome is durable in the ledger and its
  task acknowledged (the result first, invariant 3); a second outcome for a
  chunk is a duplicate that changes no total (invariant 2);
- a consumer that stops renewing its lease has its chunks redelivered to a live
  one within the lease, and a live consumer never loses a chunk it holds;
- a chunk delivered ``max_deliveries`` times without an outcome is recorded dead;
  only deliveries a worker had begun count: read-ahead never begun comes back
  with its count unchanged;
- a task message that cannot be read is acknowledged and recorded as a problem
  of its run, never handed to the worker and never left pending;
- anything else read that cannot be read (a spec, a tally, a ledger record, an
  event) is one run's problem: reported (``Progress.problems``, ``RunDataError``),
  never a reason to stop serving or reading the other runs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ttg.decode import Problems
from ttg.errors import UsageError
from ttg.run import Delivery, LongParam, Outcome, Progress, Recorded, RunEvent, RunSpec

#: The outcomes of a run's reused chunks from the given chunk on, in chunk order.
Reused = Callable[[int], Iterator[Outcome]]


def reused_chunks(spec: RunSpec, reused: Reused | None, start: int) -> Iterator[Outcome]:
    """``reused(start)``, checked: a backend's seeding calls this past the task chunks."""
    if reused is None:
        runs = " ".join(f"--reuse {r}" for r in (spec.reuse or {}).get("from", ()))
        raise UsageError(f"run {spec.run} reuses results: seed it again with {runs}")
    return reused(start)


@dataclass(frozen=True)
class SeedReport:
    """What one ``seed`` call did."""

    run: str
    total_chunks: int
    total_params: int
    seeded_chunks: int
    added: int
    #: Parameters taken from reused runs' results (``Sweep.seed`` fills it in).
    reused_params: int = 0
    #: What the seeding wants said (a reused run that gave nothing, and why).
    warnings: tuple[str, ...] = ()

    @property
    def already_seeded(self) -> bool:
        return self.added == 0


@dataclass(frozen=True)
class RetryReport:
    """What one ``retry`` call re-queued."""

    run: str
    dead: int
    errors: int
    round: int

    @property
    def requeued(self) -> int:
        return self.dead + self.errors


#: How long a consumer leaves a run alone after declining one of its chunks.
DECLINE_SECONDS = 60.0
#: The words of a decline's reason (``worker W cannot run compute C: why``).
CANNOT_RUN = "cannot run compute"


class Consumer(ABC):
    """One worker process's session: fetch, then settle each delivery exactly once."""

    name: str

    @abstractmethod
    def start(self) -> None:
        """Connect, announce the consumer and start renewing its lease.

        Raises:
            BrokerConnectionError: the broker cannot be reached yet (retry).
            AuthenticationError: it refused us (do not retry).
        """

    @property
    @abstractmethod
    def connected(self) -> bool:
        """The broker answered recently and our lease is held (what /readyz reports)."""

    @abstractmethod
    def fetch(self, timeout: float, limit: int) -> list[Delivery]:
        """Wait up to ``timeout`` seconds for at most ``limit`` deliveries from any live run.

        Deliveries of dead consumers come here too, with ``attempt`` counting
        every earlier delivery that was begun (``begin``). Returns nothing
        while the lease is not held: a worker that cannot renew its lease
        takes no new work.
        """

    @abstractmethod
    def begin(self, delivery: Delivery) -> None:
        """Mark ``delivery`` begun: call it just before its compute starts.

        Only a begun delivery counts towards ``max_deliveries`` when its worker
        dies (or abandons it): a chunk fetched ahead and never begun comes back
        with the same ``attempt`` (docs/design.md, invariant 6). Returns once
        the mark is with the broker, so a compute that kills its worker at once
        is still counted.

        Raises:
            BrokerError: the mark could not be written; do not compute the
                delivery (give it back: it was not begun).
        """

    def running_long(self, params: Sequence[LongParam]) -> None:  # noqa: B027 - optional
        """Say which parameters this worker has been computing for long, for ``ttg
        status`` to name beside their chunks in flight; replaces what it said before.
        Called when that changes. Best effort: never raises."""

    def begin_many(self, deliveries: Sequence[Delivery]) -> None:
        """``begin`` each of ``deliveries``, queued with a compute process together
        (a backend may mark them in one write).

        Raises:
            BrokerError: not every mark could be written: compute none of them.
        """
        for d in deliveries:
            self.begin(d)

    @abstractmethod
    def complete(self, items: Sequence[tuple[Delivery, Outcome]]) -> list[Recorded]:
        """Record each outcome (ok, errors or dead) in its run's ledger, then acknowledge.

        Returns once every outcome is durable and its task acknowledged, one
        ``Recorded`` per item, in order. A run deleted meanwhile gives ``GONE``
        for its items (nothing to record them in); any other failure raises and
        leaves every item of the call unsettled, to be completed again (a
        re-sent record is recognised, never counted twice).
        """

    @abstractmethod
    def retry(self, delivery: Delivery, error: str, *, delay: float) -> None:
        """A failure worth retrying: the chunk comes back after ``delay`` seconds.

        The failure is counted in the run's tallies with ``error``.
        """

    @abstractmethod
    def release(self, delivery: Delivery) -> None:
        """Give an unfinished delivery back so another worker takes it at once (not a failure)."""

    @abstractmethod
    def decline(self, delivery: Delivery, why: str) -> None:
        """Give back a delivery this worker cannot run (its compute is not allowed or
        cannot be imported here): released without counting a delivery, with a
        ``released`` event naming this worker and ``why`` (``ttg status`` shows it),
        and the run left alone by this consumer for ``DECLINE_SECONDS``, so the
        workers that can run it take its chunks.

        Raises:
            BrokerError: as ``release``.
        """

    @abstractmethod
    def abandon(self, delivery: Delivery) -> None:
        """Stop tracking a delivery the broker would not take back; never raises.

        The broker redelivers it (to this consumer or another) once it has
        been held for a lease without an outcome: a chunk is never left with
        a live worker that no longer works on it.
        """

    def set_read_ahead(self, limit: int) -> None:  # noqa: B027 - optional hook, a no-op for pull backends
        """Hold at most ``limit`` undelivered chunks (push backends adjust their prefetch)."""

    def stop_fetching(self) -> None:  # noqa: B027 - optional hook, a no-op for pull backends
        """Receive no new deliveries (shutdown). Push-based backends cancel their subscriptions."""

    @abstractmethod
    def close(self) -> None:
        """Release anything read ahead, stop the lease, leave the broker."""


class Broker(ABC):
    """A connection to one broker holding any number of runs (the admin side)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise ``BrokerConnectionError`` unless the broker answers."""

    @abstractmethod
    def seed(
        self,
        spec: RunSpec,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        reused: Reused | None = None,
    ) -> SeedReport:
        """Create the run if needed and publish every chunk not yet published.

        Idempotent and resumable: a second call, or a call after one that died
        halfway, publishes only what is missing. A run that reuses results
        (``spec.reuse``) has tasks only for chunks ``0 .. spec.task_chunks-1``; its
        other chunks' outcomes, from ``reused``, are recorded in its ledger as a
        worker's would be, after the tasks (the seeding cursor runs over both).

        Raises:
            RunConflict: the run exists with a different spec.
        """

    @abstractmethod
    def spec(self, run: str) -> RunSpec:
        """The run's spec.

        Raises:
            RunNotFound: no such run.
        """

    @abstractmethod
    def runs(self) -> list[str]:
        """Ids of every run the broker knows, finished or not, sorted."""

    def problems(self) -> list[str]:
        """Records about no run in particular that could not be read, one line each.

        Garbage in the list of runs, say: skipped by every reader, reported here
        (``ttg runs``) rather than by every command. Read by ``runs``; empty before.
        """
        return []

    @abstractmethod
    def progress(self, run: str) -> Progress:
        """Counters of the run, including the chunks in flight now.

        Memory is bounded by the run's size in chunks, never by its results.

        Raises:
            RunNotFound: no such run.
        """

    def wait_progress(self, run: str, seconds: float) -> None:
        """Wait ``seconds`` between two ``progress`` reads of ``run``, or less: a backend
        that follows the run as its outcomes arrive returns once every chunk has one, so
        a watcher sees the run complete when it does, not an interval later."""
        time.sleep(seconds)

    @abstractmethod
    def ledger(self, run: str, *, problems: Problems | None = None) -> Iterator[Outcome]:
        """Every counted outcome of the run, one per chunk, in no set order, streamed.

        A record that cannot be read is skipped and described in ``problems``
        (or, without it, in one warning logged at the end).

        Raises:
            RunDataError: the run's spec cannot be read.
        """

    @abstractmethod
    def events(self, run: str) -> Iterator[RunEvent]:
        """The run's recent events, oldest first (a bounded window, for reports)."""

    @abstractmethod
    def set_control(self, run: str, control: str) -> None:
        """Steer a run: ``running`` (resume), ``paused`` or ``cancelled``.

        Workers honour it within a lease. Results stay in any case.

        Raises:
            RunNotFound: no such run.
        """

    @abstractmethod
    def retry(self, run: str, *, dead: bool = True, errors: bool = True) -> RetryReport:
        """Re-queue the chunks whose outcome is dead and/or holds parameter errors.

        Their old outcomes leave the count (they stay in the run's history);
        every other outcome is kept. A late result from before the retry is a
        duplicate.

        Raises:
            RunNotFound: no such run.
        """

    @abstractmethod
    def delete(self, run: str) -> bool:
        """Remove everything the broker holds for ``run`` (tasks, ledger, spec).

        Workers still holding one of its chunks record nothing for it and move
        on. Returns False if there was no such run.
        """

    @abstractmethod
    def consumer(self, name: str, *, lease_seconds: float, prefetch: int) -> Consumer:
        """A consumer named ``name`` (unique per process), holding at most ``prefetch`` chunks."""

    @abstractmethod
    def close(self) -> None:
        """Close connections."""
