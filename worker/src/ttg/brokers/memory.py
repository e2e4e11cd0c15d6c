"""An in-memory backend: the broker contract in one process, for unit tests of the worker.

It passes the same conformance suite as the real backends, so the worker's
settle logic, retries and shutdown sequence are tested against the contract
itself, without a broker process. It is not a product backend (it is not in
``BACKENDS``): nothing outlives the process.

``refuse_writes`` makes it refuse every write for a while, as a Redis at
``maxmemory`` or a RabbitMQ under a resource alarm does, so the worker's
handling of broker hiccups can be tested too.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttg.broker import Broker, Consumer, RetryReport, Reused, SeedReport, reused_chunks
from ttg.decode import Problems
from ttg.errors import BrokerError, RunConflict, RunNotFound, UsageError
from ttg.run import (
    CONTROLS,
    Delivery,
    InFlight,
    LongParam,
    Outcome,
    Progress,
    Recorded,
    RunEvent,
    RunSpec,
    Status,
)

#: Events kept per run.
EVENTS_KEPT = 1000
#: Distinct recent errors shown by ``progress``.
RECENT_ERRORS = 20


@dataclass
class _Held:
    consumer: str
    fields: dict[str, Any]
    deliveries: int
    since: float
    #: Its holder began computing it: only then does the holder's death count a delivery.
    begun: bool = False


@dataclass
class _Run:
    spec: RunSpec
    seeded_at: float
    cursor: int = 0
    control: str = "running"
    queue: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    delayed: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    held: dict[int, _Held] = field(default_factory=dict)
    ledger: dict[int, Outcome] = field(default_factory=dict)
    rounds: dict[int, int] = field(default_factory=dict)
    round: int = 0
    history: list[Outcome] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    events: deque[RunEvent] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))


class MemoryBroker(Broker):
    """Runs held in this process's memory, shared by every consumer made from it."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._runs: dict[str, _Run] = {}
        self._leases: dict[str, float] = {}
        #: (run, worker) -> chunk -> the parameter it said is running long.
        self._long: dict[tuple[str, str], dict[int, LongParam]] = {}
        self._ids = itertools.count(1)
        self._refuse_until = 0.0

    # -- faults -----------------------------------------------------------------------

    def refuse_writes(self, seconds: float) -> None:
        """Refuse every write (and lease renewal) for ``seconds``, as a full broker does."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds

    def inject(self, run: str, fields: dict[str, Any]) -> None:
        """Put a raw task message into a run's queue (a malformed one, say)."""
        with self._lock:
            self._run(run).queue.append((next(self._ids), fields))
            self._lock.notify_all()

    def _write(self) -> None:
        if time.monotonic() < self._refuse_until:
            raise BrokerError("memory: writes refused (out of memory)")

    def _run(self, run: str) -> _Run:
        r = self._runs.get(run)
        if r is None:
            raise RunNotFound(f"no run {run!r} in memory")
        return r

    # -- admin --------------------------------------------------------------------------

    def ping(self) -> None:
        pass

    def seed(
        self,
        spec: RunSpec,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        reused: Reused | None = None,
    ) -> SeedReport:
        with self._lock:
            self._write()
            r = self._runs.setdefault(spec.run, _Run(spec, time.time()))
            if r.spec != spec:
                raise RunConflict(f"run {spec.run!r} exists with different parameters")
            start = r.cursor
            for chunk in range(r.cursor, spec.task_chunks):
                r.queue.append((next(self._ids), {"c": chunk, "a": 0, "g": 0}))
            if spec.task_chunks < spec.total_chunks and r.cursor < spec.total_chunks:
                for o in reused_chunks(spec, reused, max(r.cursor, spec.task_chunks)):
                    if r.ledger.setdefault(o.chunk, o) is o:
                        self._count(r, o)
            r.cursor = spec.total_chunks
            self._lock.notify_all()
        if on_progress:
            on_progress(spec.total_chunks, spec.total_chunks)
        return SeedReport(
            spec.run, spec.total_chunks, spec.total_params, r.cursor, r.cursor - start
        )

    def spec(self, run: str) -> RunSpec:
        with self._lock:
            return self._run(run).spec

    def runs(self) -> list[str]:
        with self._lock:
            return sorted(self._runs)

    def wait_progress(self, run: str, seconds: float) -> None:
        def finished() -> bool:
            r = self._runs.get(run)
            return r is None or len(r.ledger) >= r.spec.total_chunks

        with self._lock:
            self._lock.wait_for(finished, timeout=seconds)

    def progress(self, run: str) -> Progress:
        with self._lock:
            r = self._run(run)
            now, wall = time.monotonic(), time.time()
            s = r.stats
            errors: list[str] = []
            for e in reversed(r.events):
                if e.detail and e.kind in ("failed", "malformed") and e.detail not in errors:
                    errors.append(e.detail)
                if len(errors) >= RECENT_ERRORS:
                    break
            return Progress(
                run=run,
                total_chunks=r.spec.total_chunks,
                total_params=r.spec.total_params,
                seeded_chunks=r.cursor,
                done=s["done"],
                done_params=s["done_params"],
                dead=s["dead"],
                errors=s["errors"],
                param_errors=s["param_errors"],
                duplicates=s["duplicates"],
                redelivered=s["redelivered"],
                failed=s["failed"],
                malformed=s["malformed"],
                retried=len(r.history),
                retried_params=sum(
                    o.params - len(o.param_errors) for o in r.history if o.status is not Status.DEAD
                ),
                queue_depth=len(r.queue) + len(r.delayed) + len(r.held),
                workers=sum(1 for t in self._leases.values() if t > now),
                control=r.control,
                seeded_at=r.seeded_at,
                in_flight=[
                    InFlight(
                        int(h.fields["c"]), h.consumer, h.deliveries, round(now - h.since, 3)
                    ).with_long(self._long.get((run, h.consumer), {}).get(int(h.fields["c"])), wall)
                    for h in r.held.values()
                ],
                recent_errors=errors,
            )

    def ledger(self, run: str, *, problems: Problems | None = None) -> Iterator[Outcome]:
        with self._lock:
            outcomes = list(self._run(run).ledger.values())
        yield from outcomes

    def events(self, run: str) -> Iterator[RunEvent]:
        with self._lock:
            events = list(self._run(run).events)
        yield from events

    def set_control(self, run: str, control: str) -> None:
        if control not in CONTROLS:
            raise UsageError(f"control {control!r} is not one of {', '.join(CONTROLS)}")
        with self._lock:
            self._write()
            self._run(run).control = control
            self._lock.notify_all()

    def retry(self, run: str, *, dead: bool = True, errors: bool = True) -> RetryReport:
        wanted = {Status.DEAD} if dead else set()
        if errors:
            wanted.add(Status.ERRORS)
        with self._lock:
            self._write()
            r = self._run(run)
            again = [o for o in r.ledger.values() if o.status in wanted]
            if again:
                r.round += 1
            for o in again:
                del r.ledger[o.chunk]
                r.history.append(o)
                self._uncount(r, o)
                r.rounds[o.chunk] = r.round
                r.queue.append((next(self._ids), {"c": o.chunk, "a": o.attempt, "g": r.round}))
                r.events.append(RunEvent(time.time(), "retry", o.chunk))
            self._lock.notify_all()
            n_dead = sum(1 for o in again if o.status is Status.DEAD)
            return RetryReport(run, n_dead, len(again) - n_dead, r.round)

    def delete(self, run: str) -> bool:
        with self._lock:
            return self._runs.pop(run, None) is not None

    def consumer(self, name: str, *, lease_seconds: float, prefetch: int) -> MemoryConsumer:
        return MemoryConsumer(self, name, lease_seconds=lease_seconds)

    def close(self) -> None:
        pass

    # -- the consumer's side (called with the lock held) ------------------------------

    @staticmethod
    def _count(r: _Run, o: Outcome) -> None:
        key = {Status.OK: "done", Status.ERRORS: "errors", Status.DEAD: "dead"}[o.status]
        r.stats[key] += 1
        r.stats["done_params"] += o.params - len(o.param_errors) if o.status != Status.DEAD else 0
        r.stats["param_errors"] += len(o.param_errors)

    @staticmethod
    def _uncount(r: _Run, o: Outcome) -> None:
        key = {Status.OK: "done", Status.ERRORS: "errors", Status.DEAD: "dead"}[o.status]
        r.stats[key] -= 1
        r.stats["done_params"] -= o.params - len(o.param_errors) if o.status != Status.DEAD else 0
        r.stats["param_errors"] -= len(o.param_errors)

    def _parse(self, r: _Run, fields: dict[str, Any]) -> tuple[int, int, int] | None:
        """(chunk, earlier deliveries, round), or None after recording a malformed message."""
        try:
            chunk, earlier, rnd = int(fields["c"]), int(fields.get("a", 0)), int(fields.get("g", 0))
            if not 0 <= chunk < r.spec.total_chunks or earlier < 0 or rnd < 0:
                raise ValueError("out of range")
        except (KeyError, ValueError, TypeError) as e:
            r.stats["malformed"] += 1
            r.events.append(
                RunEvent(time.time(), "malformed", detail=f"malformed task {fields}: {e}")
            )
            return None
        return chunk, earlier, rnd

    def _take(self, c: MemoryConsumer, limit: int) -> list[Delivery]:
        now = time.monotonic()
        out: list[Delivery] = []
        for r in self._runs.values():
            if r.control != "running":
                continue
            due = [t for t in r.delayed if t[0] <= now]
            for t in due:
                r.delayed.remove(t)
                r.queue.append((next(self._ids), t[1]))
                r.stats["redelivered"] += 1
            for task_id, h in list(r.held.items()):
                if len(out) >= limit:
                    break
                if h.consumer == c.name or self._leases.get(h.consumer, 0) > now:
                    continue
                # Its holder's lease ran out: a dead worker's chunk. It counts a
                # delivery only if the holder had begun it, not if it was read ahead.
                if h.begun:
                    h.deliveries += 1
                h.begun = False
                r.stats["redelivered"] += 1
                r.events.append(
                    RunEvent(time.time(), "redelivered", int(h.fields["c"]), c.name, h.consumer)
                )
                h.consumer, h.since = c.name, now
                parsed = self._parse(r, h.fields)
                if parsed is None:
                    del r.held[task_id]
                    continue
                chunk, earlier, rnd = parsed
                out.append(Delivery(r.spec, chunk, earlier + h.deliveries, task_id, rnd))
            while r.queue and len(out) < limit:
                task_id, fields = r.queue.popleft()
                parsed = self._parse(r, fields)
                if parsed is None:
                    continue
                r.held[task_id] = _Held(c.name, fields, 1, now)
                out.append(Delivery(r.spec, parsed[0], parsed[1] + 1, task_id, parsed[2]))
        return out

    def _record(self, name: str, d: Delivery, o: Outcome) -> Recorded:
        r = self._runs.get(d.run)
        if r is None:
            return Recorded.GONE
        r.held.pop(d.handle, None)
        if o.status is not Status.OK:
            r.stats["failed"] += 1
            r.events.append(RunEvent(time.time(), "failed", d.chunk, name, detail=o.error))
        prev = r.ledger.get(d.chunk)
        if prev is not None and prev.worker == o.worker and prev.attempt == o.attempt:
            return Recorded.COUNTED  # the same record sent again
        if prev is not None or d.round < r.rounds.get(d.chunk, 0):
            r.stats["duplicates"] += 1
            return Recorded.DUPLICATE
        r.ledger[d.chunk] = o
        self._count(r, o)
        return Recorded.COUNTED


class MemoryConsumer(Consumer):
    """A consumer of a ``MemoryBroker``; its lease is renewed by every call and a beat thread."""

    def __init__(self, broker: MemoryBroker, name: str, *, lease_seconds: float) -> None:
        self.broker = broker
        self.name = name
        self.lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._frozen = False
        self._thread: threading.Thread | None = None
        self._started = False

    def start(self) -> None:
        with self.broker._lock:
            self.broker._write()
            self.broker._leases[self.name] = time.monotonic() + self.lease_seconds
        self._started = True
        self._thread = threading.Thread(target=self._beat, daemon=True, name="ttg-memory-lease")
        self._thread.start()

    def freeze(self) -> None:
        """Stop renewing the lease, as a frozen or partitioned process would."""
        self._frozen = True

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 8):
            if self._frozen:
                continue
            with self.broker._lock:
                if time.monotonic() >= self.broker._refuse_until:
                    self.broker._leases[self.name] = time.monotonic() + self.lease_seconds

    @property
    def connected(self) -> bool:
        return self._started and self.broker._leases.get(self.name, 0) > time.monotonic()

    def fetch(self, timeout: float, limit: int) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self.broker._lock:
            while True:
                if self.connected:
                    got = self.broker._take(self, limit)
                    if got:
                        return got
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self.broker._lock.wait(min(left, self.lease_seconds / 8))

    def running_long(self, params: Sequence[LongParam]) -> None:
        with self.broker._lock:
            for key in [k for k in self.broker._long if k[1] == self.name]:
                del self.broker._long[key]
            for p in params:
                self.broker._long.setdefault((p.run, self.name), {})[p.chunk] = p

    def begin(self, delivery: Delivery) -> None:
        with self.broker._lock:
            r = self.broker._runs.get(delivery.run)
            held = r.held.get(delivery.handle) if r else None
            # A broker refusing writes leaves it unmarked and the compute goes on (as Redis).
            refused = time.monotonic() < self.broker._refuse_until
            if held is not None and held.consumer == self.name and not refused:
                held.begun = True

    def complete(self, items: Sequence[tuple[Delivery, Outcome]]) -> list[Recorded]:
        with self.broker._lock:
            self.broker._write()
            out = [self.broker._record(self.name, d, o) for d, o in items]
            self.broker._lock.notify_all()  # a watcher waits for the last outcome
            return out

    def retry(self, delivery: Delivery, error: str, *, delay: float) -> None:
        with self.broker._lock:
            self.broker._write()
            r = self.broker._run(delivery.run)
            r.held.pop(delivery.handle, None)
            r.stats["failed"] += 1
            r.events.append(
                RunEvent(time.time(), "failed", delivery.chunk, self.name, detail=error)
            )
            if delivery.chunk not in r.ledger:
                fields = {"c": delivery.chunk, "a": delivery.attempt, "g": delivery.round}
                r.delayed.append((time.monotonic() + delay, fields))
            self.broker._lock.notify_all()

    def release(self, delivery: Delivery) -> None:
        self._release(delivery, None)

    def decline(self, delivery: Delivery, why: str) -> None:
        self._release(delivery, why)

    def _release(self, delivery: Delivery, why: str | None) -> None:
        with self.broker._lock:
            self.broker._write()
            r = self.broker._run(delivery.run)
            r.held.pop(delivery.handle, None)
            fields = {"c": delivery.chunk, "a": delivery.attempt - 1, "g": delivery.round}
            r.queue.append((next(self.broker._ids), fields))
            r.events.append(
                RunEvent(time.time(), "released", delivery.chunk, self.name, detail=why)
            )
            self.broker._lock.notify_all()

    def abandon(self, delivery: Delivery) -> None:
        with self.broker._lock:
            r = self.broker._runs.get(delivery.run)
            held = r.held.get(delivery.handle) if r else None
            if held is not None:
                # Held by nobody with a lease: the next fetch of any consumer takes it.
                held.consumer = f"{self.name} (abandoned)"

    def close(self) -> None:
        self._stop.set()
        with self.broker._lock:
            self.broker._leases.pop(self.name, None)
            # Anything still held is redelivered at once, as RabbitMQ does on a closed channel.
            self.broker._lock.notify_all()
