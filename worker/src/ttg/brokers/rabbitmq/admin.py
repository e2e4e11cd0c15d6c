"""The RabbitMQ admin side: seeding, steering, progress, the ledger, deletion (one thread).

Each stream it reads (a run's meta, ledger and activity; ttg.runs) is tailed
once and kept open, so repeated ``progress`` calls read only what is new, and
a dropped connection is reopened on the next call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pika.exceptions as pex

from ttg.broker import Broker, RetryReport, Reused, SeedReport, reused_chunks
from ttg.brokers.rabbitmq import decode as qdecode
from ttg.brokers.rabbitmq.connection import (
    ADMIN_BLOCKED_TIMEOUT,
    ADMIN_HEARTBEAT,
    PIKA_ERRORS,
    RUNS,
    declare_run,
    open_connection,
    parameters,
    publish,
    publish_task,
    queue,
    task_headers,
    translate,
    translated,
)
from ttg.brokers.rabbitmq.consumer import RabbitMQConsumer
from ttg.brokers.rabbitmq.ledger import (
    STREAM_IDLE_SECONDS,
    LedgerFold,
    StreamTail,
    drain,
    read_stream,
)
from ttg.brokers.rabbitmq.seeder import WindowedSeeder, group_size
from ttg.decode import DecodeError, Problems
from ttg.endpoint import TLS
from ttg.errors import RunConflict, RunDataError, RunNotFound, UsageError
from ttg.run import CONTROLS, InFlight, Outcome, Progress, RunEvent, RunSpec, Status

log = logging.getLogger(__name__)

#: Reused chunks' outcomes per ledger message at seeding.
REUSED_BATCH = 50
#: Most events ``events`` returns (a report needs their shape, not every one).
EVENTS_READ = 100_000
#: A worker silent this long before a redelivery, and ever after, may be the one lost.
SILENT_WINDOW_SECONDS = 3.0
#: Activity snapshots older than this do not count as holding a chunk.
ACTIVITY_FRESH_SECONDS = 1.5


@dataclass
class _RunState:
    """What this process has read of one run, kept current by its stream tails.

    Each fold raises ``DecodeError`` (or ``RunDataError``) on garbage; the tail
    counts it among its problems and goes on.
    """

    run: str = ""
    spec: RunSpec | None = None
    #: Why the run's spec could not be read, if it could not.
    spec_error: RunDataError | None = None
    cursor: int = 0
    seeded_at: float | None = None
    fold: LedgerFold | None = None
    #: worker -> its latest activity snapshot that could be read
    activity: dict[str, qdecode.Snapshot] = field(default_factory=dict)
    #: worker -> its latest snapshot message, not read yet: a busy worker publishes many
    #: between two status reads, and only its last one is ever shown.
    unread_activity: dict[str, dict[str, Any]] = field(default_factory=dict)
    tails: dict[str, StreamTail] = field(default_factory=dict)

    def fold_meta(self, msg: dict[str, Any]) -> None:
        if "spec" in msg and self.spec is None and self.spec_error is None:
            try:
                self.spec = RunSpec.from_dict(msg["spec"], self.run or None)
            except RunDataError as e:
                self.spec_error = e
                raise
            self.seeded_at = qdecode.timestamp(msg.get("t"), "seeding time")
            self.fold = LedgerFold(self.spec.total_chunks)
        elif "cursor" in msg:
            self.cursor = max(self.cursor, qdecode.cursor(msg))

    def fold_ledger(self, msg: dict[str, Any]) -> None:
        if self.fold is not None:
            self.fold.add(msg)

    def fold_activity(self, msg: dict[str, Any]) -> None:
        self.unread_activity[qdecode.snapshot_worker(msg)] = msg

    def snapshots(self) -> dict[str, qdecode.Snapshot]:
        """Each worker's latest readable snapshot (what cannot be read is a problem)."""
        for worker, msg in self.unread_activity.items():
            try:
                self.activity[worker] = qdecode.snapshot(msg, self.run)
            except DecodeError as e:
                self.tails["activity"].problems.add(str(e))
        self.unread_activity.clear()
        return self.activity

    def problems(self) -> Problems:
        """Everything of the run that could not be read, from every stream read so far."""
        out = Problems()
        sources = [t.problems for t in self.tails.values()]
        if self.fold is not None:
            sources.append(self.fold.problems)
        for p in sources:
            for line in p.shown:
                out.add(line)
            out.count += p.count - len(p.shown)
        return out


class RabbitMQBroker(Broker):
    """Runs kept in one RabbitMQ node or cluster."""

    def __init__(self, url: str, tls: TLS) -> None:
        self.url = url
        self.tls = tls
        self.params = parameters(url, tls, ADMIN_HEARTBEAT, blocked_timeout=ADMIN_BLOCKED_TIMEOUT)
        self._conn = open_connection(self.params)
        self._reset()

    def _reset(self) -> None:
        """Forget everything read over a connection that is gone."""
        self._pub = self._conn.channel()
        self._pub.confirm_delivery()
        self._runs: dict[str, str] = {}  # run -> control
        self._runs_tail: StreamTail | None = None
        self._runs_problems = 0
        self._state: dict[str, _RunState] = {}
        #: A tail read before was not waited for (``_sync(wait=False)``): ``_drain`` does.
        self._undrained = False
        #: When ``wait_progress`` last saw the run complete, having read every tail up
        #: to then: a ``_drain`` right after has nothing to wait for.
        self._drained_at = -math.inf

    def _ensure_open(self) -> None:
        if not self._conn.is_open:
            self._conn = open_connection(self.params)
            self._reset()
        elif not self._pub.is_open:
            self._pub = self._conn.channel()
            self._pub.confirm_delivery()

    def _tail(self, run: str, stream: str, offset: Any = "first") -> StreamTail:
        state = self._state.setdefault(run, _RunState(run))
        tail = state.tails.get(stream)
        if tail is None:
            fold = {
                "meta": state.fold_meta,
                "ledger": state.fold_ledger,
                "activity": state.fold_activity,
            }[stream]
            tail = state.tails[stream] = StreamTail(
                self._conn, queue(run, stream), fold, offset=offset
            )
        return tail

    def _sync(
        self, run: str, stream: str, *, exact: bool, offset: Any = "first", wait: bool = True
    ) -> _RunState:
        """Bring the run's view of ``stream`` up to date (exactly on a tail's first read).

        With ``wait`` False a tail read before is left to the caller's ``_drain``.
        """
        self._read(self._tail(run, stream, offset), exact=exact, wait=wait)
        return self._state[run]

    def _read(self, tail: StreamTail, *, exact: bool, wait: bool) -> None:
        if exact or not tail.caught_up:
            tail.sync(self._pub)
        elif wait:
            tail.sync()
        else:
            self._undrained = True

    def _drain(self, done: Callable[[], bool]) -> None:
        """Fold what reached the tails left undrained, with one wait for all of them."""
        if self._undrained:
            self._undrained = False
            if time.monotonic() - self._drained_at < STREAM_IDLE_SECONDS:
                return
            tails = [t for state in self._state.values() for t in state.tails.values()]
            drain(self._conn, tails + ([self._runs_tail] if self._runs_tail else []), done)

    def _forget(self, run: str) -> None:
        state = self._state.pop(run, None)
        for tail in state.tails.values() if state else ():
            with contextlib.suppress(*PIKA_ERRORS):
                # A deleted stream's consumer was cancelled by the broker already.
                if tail.channel.is_open:
                    tail.channel.close()

    def _meta(self, run: str, *, exact: bool, wait: bool = True) -> _RunState:
        self._ensure_open()
        try:
            return self._sync(run, "meta", exact=exact, wait=wait)
        except (pex.UnroutableError, pex.ChannelClosedByBroker) as e:
            if isinstance(e, pex.ChannelClosedByBroker) and e.reply_code != 404:
                raise
            # No meta stream: no such run. (A 404 closes the publishing channel.)
            self._forget(run)
            self._ensure_open()
            return _RunState(run)

    @translated
    def ping(self) -> None:
        self._ensure_open()
        self._conn.process_data_events(time_limit=0)

    @translated
    def seed(
        self,
        spec: RunSpec,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        reused: Reused | None = None,
    ) -> SeedReport:
        run, total = spec.run, spec.total_chunks
        self._ensure_open()
        ch = self._conn.channel()
        ch.confirm_delivery()
        declare_run(ch, spec)
        state = self._meta(run, exact=True)
        if state.spec_error is not None:
            raise state.spec_error
        if state.spec is None:
            announce = {"spec": spec.to_dict(), "t": time.time()}
            publish(ch, queue(run, "meta"), announce)
            # Workers learn of runs, with their spec, from this one stream.
            publish(ch, RUNS, {"run": run, **announce})
            state = self._meta(run, exact=True)
        ch.close()
        if state.spec != spec:
            raise RunConflict(f"run {run!r} exists with different parameters; pick a new run id")
        start = state.cursor
        seeder = WindowedSeeder(
            self.params,
            run,
            start,
            spec.task_chunks,
            group=group_size(spec.chunk_size),
            on_progress=on_progress,
        )
        cursor = max(start, seeder.run_to_end())
        if cursor < total:
            cursor = self._seed_reused(
                spec, cursor, reused_chunks(spec, reused, cursor), on_progress
            )
        state.cursor = max(state.cursor, cursor)
        return SeedReport(run, total, spec.total_params, cursor, cursor - start)

    def _seed_reused(
        self,
        spec: RunSpec,
        cursor: int,
        outcomes: Iterator[Outcome],
        on_progress: Callable[[int, int], None] | None,
    ) -> int:
        """Record reused chunks' outcomes from ``cursor`` on: confirmed ledger messages, then
        the cursor past them. A rerun sends a batch again at most; the ledger recognises a
        record sent twice (same worker, attempt and round), so nothing counts twice."""
        self._ensure_open()
        ch = self._conn.channel()
        ch.confirm_delivery()
        try:
            while cursor < spec.total_chunks:
                batch = list(itertools.islice(outcomes, REUSED_BATCH))
                if not batch:
                    break
                texts = (f'{o.to_json()[:-1]},"c":{o.chunk}}}' for o in batch)
                publish(ch, queue(spec.run, "ledger"), ('{"o":[' + ",".join(texts) + "]}").encode())
                cursor = batch[-1].chunk + 1
                publish(ch, queue(spec.run, "meta"), {"cursor": cursor})
                if on_progress:
                    on_progress(cursor, spec.total_chunks)
        finally:
            ch.close()
        return cursor

    @translated
    def spec(self, run: str) -> RunSpec:
        state = self._state.get(run)
        if state is None or state.spec is None:
            state = self._meta(run, exact=True)
        if state.spec_error is not None:
            raise state.spec_error
        if state.spec is None:
            raise RunNotFound(f"no run {run!r} on this broker")
        return state.spec

    def _fold_run(self, msg: dict[str, Any]) -> None:
        # A run is listed when announced, whether or not its spec can be read: so
        # `ttg runs` shows it with its problem and `ttg delete` can remove it.
        m = qdecode.runs_message(msg)
        if m.kind == "deleted":
            self._runs.pop(m.run or "", None)
        elif m.kind == "control" and m.run in self._runs:
            self._runs[m.run] = m.control or "running"
        elif m.kind == "announce" and m.run is not None:
            self._runs.setdefault(m.run, "running")

    def _sync_runs(self, *, wait: bool = True) -> None:
        self._ensure_open()
        if self._runs_tail is None:
            self._pub.queue_declare(RUNS, durable=True, arguments={"x-queue-type": "stream"})
            self._runs_tail = StreamTail(self._conn, RUNS, self._fold_run)
        # Exact on the first read; incremental after (a barrier per call would be a
        # write per `ttg status --watch` tick).
        self._read(self._runs_tail, exact=False, wait=wait)
        if self._runs_tail.problems.count > self._runs_problems:
            # Garbage stays in a stream for good: reported by `ttg runs` (problems()),
            # not by every command that happens to read the list of runs.
            self._runs_problems = self._runs_tail.problems.count
            log.debug("%s: %s", RUNS, "; ".join(self._runs_tail.problems.lines()))

    def problems(self) -> list[str]:
        if self._runs_tail is None or not self._runs_tail.problems:
            return []
        return [f"{RUNS}: {line}" for line in self._runs_tail.problems.lines()]

    @translated
    def runs(self) -> list[str]:
        self._sync_runs()
        return sorted(self._runs)

    def _in_flight(self, state: _RunState, fold: LedgerFold) -> list[InFlight]:
        now = time.time()
        # A snapshot may outlive its worker by up to ACTIVITY_FRESH_SECONDS (RabbitMQ
        # requeues a dead worker's chunks at once); a chunk with an outcome is not in flight.
        return [
            InFlight(h.chunk, worker, h.attempt, round(now - h.since, 3)).with_long(
                snap.long.get(h.chunk), now
            )
            for worker, snap in sorted(state.snapshots().items())
            if now - snap.t < ACTIVITY_FRESH_SECONDS
            for h in snap.held
            if h.chunk < fold.total and fold.is_open(h.chunk)
        ]

    @translated
    def progress(self, run: str) -> Progress:
        spec = self.spec(run)
        # Each stream's first read is exact; later ones share one wait (a --watch tick).
        state = self._meta(run, exact=False, wait=False)
        self._sync(run, "ledger", exact=False, wait=False)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=3 * ACTIVITY_FRESH_SECONDS)
        self._sync(run, "activity", exact=False, offset=since, wait=False)
        self._sync_runs(wait=False)
        fold = state.fold or LedgerFold(spec.total_chunks)
        self._drain(lambda: fold.finished >= fold.total)
        try:
            # On the publishing channel: a 404 closes it, and _ensure_open opens another.
            tasks = self._pub.queue_declare(queue(run, "tasks"), passive=True).method
        except pex.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                self._forget(run)
                raise RunNotFound(f"no run {run!r} on this broker") from None
            raise
        in_flight = self._in_flight(state, fold)
        return Progress(
            run=run,
            total_chunks=spec.total_chunks,
            total_params=spec.total_params,
            seeded_chunks=state.cursor,
            done=fold.done,
            done_params=fold.done_params,
            dead=fold.dead,
            errors=fold.errors,
            param_errors=fold.param_errors,
            duplicates=fold.duplicates,
            redelivered=fold.redelivered,
            failed=fold.failed,
            malformed=fold.malformed,
            retried=fold.retried,
            retried_params=fold.retried_params,
            # Messages may carry several chunks (and hold none once their chunks are
            # done), so count chunks: seeded and without an outcome yet.
            queue_depth=max(0, state.cursor - fold.finished),
            workers=tasks.consumer_count,
            control=self._runs.get(run, "running"),
            seeded_at=state.seeded_at,
            in_flight=in_flight,
            recent_errors=list(fold.recent),
            problems=state.problems().lines(),
        )

    def wait_progress(self, run: str, seconds: float) -> None:
        # Outcomes fold as they arrive on the kept-open tails (the connection delivers
        # to every consumer of it), so the wait ends with the run's last outcome. A lost
        # connection makes it the plain wait: the next read reconnects, as after a sleep.
        state = self._state.get(run)
        fold = state.fold if state is not None else None
        tail = state.tails.get("ledger") if state is not None else None
        deadline = time.monotonic() + seconds
        followed = tail is not None and tail.caught_up and self._conn.is_open
        if fold is None or not followed or fold.finished >= fold.total:
            time.sleep(seconds)  # nothing to follow (or complete as read, not as shown)
            return
        try:
            while fold.finished < fold.total:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                # Returns once a delivery was dispatched (or at the deadline).
                self._conn.process_data_events(time_limit=left)
        except PIKA_ERRORS as e:
            log.debug("waiting for run %s to complete: %s", run, e)
            time.sleep(max(0.0, deadline - time.monotonic()))
            return
        self._drained_at = time.monotonic()

    def _exact_fold(self, run: str) -> LedgerFold:
        spec = self.spec(run)
        state = self._sync(run, "ledger", exact=True)
        return state.fold or LedgerFold(spec.total_chunks)

    def ledger(self, run: str, *, problems: Problems | None = None) -> Iterator[Outcome]:
        found = Problems() if problems is None else problems
        try:
            total = self.spec(run).total_chunks
            rounds = dict(self._exact_fold(run).rounds)
            messages = read_stream(self.params, queue(run, "ledger"), problems=found)
            yield from _winners(messages, total, rounds, found)
        except PIKA_ERRORS as e:
            translate(e)
        if problems is None and found:
            log.warning("run %s: %s", run, "; ".join(found.lines()))

    def events(self, run: str) -> Iterator[RunEvent]:
        try:
            total = self.spec(run).total_chunks
            events: list[RunEvent] = []
            for msg in read_stream(self.params, queue(run, "ledger")):
                if len(events) >= EVENTS_READ:
                    break
                try:
                    e = qdecode.event(msg, total)
                except DecodeError:
                    continue  # progress reports it
                if e is None:
                    continue
                chunks = [r.chunk for r in e.retried] if e.kind == "retry" else [e.chunk]
                for chunk in chunks:
                    events.append(
                        RunEvent(e.t, e.kind, chunk, e.worker, e.previous_worker, e.detail)
                    )
            yield from self._with_previous_holders(run, events)
        except PIKA_ERRORS as e:
            translate(e)

    def _with_previous_holders(self, run: str, events: list[RunEvent]) -> list[RunEvent]:
        """Name who held each redelivered chunk before, from the activity snapshots.

        RabbitMQ requeues a dead worker's chunks without saying whose they were;
        the activity stream (kept 10 minutes) does: the last worker seen holding
        the chunk before its redelivery. A chunk taken and lost between two
        snapshots is put down to the worker that fell silent last before the
        redelivery and never spoke again (a worker that reconnected keeps
        publishing snapshots, so it is not mistaken for a lost one).
        """
        wanted = {e.chunk for e in events if e.kind == "redelivered" and e.chunk is not None}
        if not wanted:
            return events
        #: chunk -> [(time, worker)] of the snapshots that showed it held
        seen: dict[int, list[tuple[float, str]]] = {}
        last_seen: dict[str, float] = {}
        for msg in read_stream(self.params, queue(run, "activity")):
            try:
                snap = qdecode.snapshot(msg, run)
            except DecodeError:
                continue
            t, worker = snap.t, snap.worker
            last_seen[worker] = max(t, last_seen.get(worker, 0.0))
            for held in snap.held:
                if held.chunk in wanted:
                    seen.setdefault(held.chunk, []).append((t, worker))
        out = []
        for event in events:
            e = event
            if e.kind == "redelivered" and e.previous_worker is None and e.chunk is not None:
                before = [w for t, w in seen.get(e.chunk, ()) if t <= e.t and w != e.worker]
                silent = sorted(
                    (t, w)
                    for w, t in last_seen.items()
                    if w != e.worker and e.t - SILENT_WINDOW_SECONDS <= t <= e.t
                )
                holder = before[-1] if before else silent[-1][1] if silent else None
                if holder is not None:
                    e = dataclasses.replace(e, previous_worker=holder)
            out.append(e)
        return out

    @translated
    def set_control(self, run: str, control: str) -> None:
        if control not in CONTROLS:
            raise UsageError(f"control {control!r} is not one of {', '.join(CONTROLS)}")
        self.spec(run)
        self._ensure_open()
        publish(self._pub, RUNS, {"run": run, "control": control})
        self._runs[run] = control

    @translated
    def retry(self, run: str, *, dead: bool = True, errors: bool = True) -> RetryReport:
        wanted = {s for s, on in (("dead", dead), ("errors", errors)) if on}
        spec = self.spec(run)
        fold = self._exact_fold(run)
        problems = Problems()
        messages = read_stream(self.params, queue(run, "ledger"), problems=problems)
        again = [
            o
            for o in _winners(messages, spec.total_chunks, dict(fold.rounds), problems)
            if o.status in wanted
        ]
        if problems:
            log.warning("run %s: %s", run, "; ".join(problems.lines()))
        if not again:
            return RetryReport(run, 0, 0, fold.max_round())
        round_ = fold.max_round() + 1
        self._ensure_open()
        # The ledger first: once a re-queued task can produce an outcome, every
        # reader already knows the chunk's old outcome no longer counts.
        publish(
            self._pub,
            queue(run, "ledger"),
            {
                "e": "retry",
                "g": round_,
                "t": time.time(),
                "c": [[o.chunk, str(o.status), o.params, len(o.param_errors)] for o in again],
            },
        )
        for o in again:
            publish_task(self._pub, queue(run, "tasks"), task_headers(o.chunk, o.attempt, round_))
        n_dead = sum(1 for o in again if o.status is Status.DEAD)
        return RetryReport(run, n_dead, len(again) - n_dead, round_)

    @translated
    def delete(self, run: str) -> bool:
        # A run whose announcement could not be read is not listed, but its queues
        # are still its own: deleted all the same.
        if run not in self.runs() and not self._exists(queue(run, "meta")):
            return False
        self._forget(run)
        ch = self._conn.channel()
        ch.confirm_delivery()
        for name in ("tasks", "retry", "dead", "ledger", "meta", "activity", "begun"):
            ch.queue_delete(queue(run, name))
        publish(ch, RUNS, {"deleted": run})
        ch.close()
        self._runs.pop(run, None)
        return True

    def _exists(self, name: str) -> bool:
        probe = self._conn.channel()  # a missing queue closes the channel it is asked on
        try:
            probe.queue_declare(name, passive=True)
        except pex.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return False
            raise
        with contextlib.suppress(*PIKA_ERRORS):
            probe.close()
        return True

    def consumer(self, name: str, *, lease_seconds: float, prefetch: int) -> RabbitMQConsumer:
        return RabbitMQConsumer(
            self.url, self.tls, name, lease_seconds=lease_seconds, prefetch=prefetch
        )

    def close(self) -> None:
        # Closing cancels the stream tails, and pika's cancel rejects what they
        # had buffered, which a stream answers by closing the connection: the
        # very thing we are doing anyway.
        with contextlib.suppress(*PIKA_ERRORS):
            if self._conn.is_open:
                self._conn.close()


def _winners(
    messages: Iterator[dict[str, Any]], total: int, rounds: dict[int, int], problems: Problems
) -> Iterator[Outcome]:
    """The counted outcome of each chunk: the first readable one of its final round."""
    seen = bytearray((total + 7) // 8)
    for msg in messages:
        try:
            batch = qdecode.outcomes(msg)
        except DecodeError as e:
            problems.add(str(e))
            continue
        for o in batch:
            try:
                chunk = qdecode.outcome_chunk(o, total)
                if qdecode.round_of(o) != rounds.get(chunk, 0):
                    continue
                byte, bit = divmod(chunk, 8)
                if seen[byte] & (1 << bit):
                    continue
                outcome = Outcome.from_dict(chunk, o)
            except DecodeError as e:
                problems.add(str(e))
                continue
            seen[byte] |= 1 << bit
            yield outcome
