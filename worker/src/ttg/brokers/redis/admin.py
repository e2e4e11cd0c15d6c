"""The Redis admin side: seeding, steering, progress, the ledger, deletion."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis.exceptions as rex

from ttg import decode
from ttg.broker import Broker, RetryReport, Reused, SeedReport, reused_chunks
from ttg.brokers.redis import decode as rdecode
from ttg.brokers.redis.client import (
    GENERATION,
    GROUP,
    RUN_KEYS,
    RUNS,
    Scripts,
    complete_channel,
    key,
    make_client,
    safe_url,
    translate,
    translated,
)
from ttg.brokers.redis.consumer import RedisConsumer
from ttg.decode import DecodeError, Problems
from ttg.endpoint import TLS
from ttg.errors import RunConflict, RunNotFound, UsageError
from ttg.run import CONTROLS, RUN_ID, InFlight, Outcome, Progress, RunEvent, RunSpec

log = logging.getLogger(__name__)

#: Reused chunks' outcomes recorded per seeding step (one Lua call each).
REUSED_BATCH = 50
#: Chunks published per seeding step (one Lua call each).
SEED_BATCH = 2000
#: How many in-flight chunks ``progress`` lists.
IN_FLIGHT_SHOWN = 50
#: Events ``progress`` reads back for the recent distinct errors.
RECENT_EVENTS = 200
#: Distinct recent errors ``progress`` reports.
RECENT_ERRORS = 20
#: Chunks re-queued per ``retry`` step (one Lua call each).
REQUEUE_BATCH = 500


def _count_leases_source() -> str:
    # Live consumers of a run, in the server's clock (a script: TIME is the run's node's).
    return (
        "local now = redis.call('TIME') "
        "return redis.call('ZCOUNT', KEYS[1], now[1] * 1000 + math.floor(now[2] / 1000), '+inf')"
    )


class RedisBroker(Broker):
    """Runs kept in one Redis (7.x; 6.2 works, for the embedded demo server) or a Redis Cluster."""

    def __init__(self, url: str, tls: TLS) -> None:
        self.url = url
        self.tls = tls
        self.client: Any = make_client(url, tls)
        self.scripts = Scripts(self.client)
        self._count_leases = self.client.register_script(_count_leases_source())
        self._specs: dict[str, RunSpec] = {}
        self._problems: list[str] = []
        #: Subscribed to runs' completion channels (``wait_progress``), once needed.
        self._pubsub: Any = None

    def where(self) -> str:
        return safe_url(self.url)

    @translated
    def ping(self) -> None:
        self.client.ping()

    def _bump(self) -> None:
        """Tell every worker that the set of runs, or a run's control, changed."""
        self.client.incr(GENERATION)

    @translated
    def seed(
        self,
        spec: RunSpec,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        reused: Reused | None = None,
    ) -> SeedReport:
        run, total = spec.run, spec.total_chunks
        if self.client.set(key(run, "spec"), spec.to_json(), nx=True):
            self.client.hset(
                key(run, "meta"),
                mapping={
                    "total": total,
                    "control": "running",
                    "seeded_at": int(time.time() * 1000),
                },
            )
        stored = self.spec(run)
        if stored != spec:
            raise RunConflict(f"run {run!r} exists with different parameters; pick a new run id")
        # The group exists before the first task does, so no worker can miss one.
        with contextlib.suppress(rex.ResponseError):  # BUSYGROUP: created before
            self.client.xgroup_create(key(run, "tasks"), GROUP, id="0", mkstream=True)
        if not self.client.sismember(RUNS, run):
            self.client.sadd(RUNS, run)
            self._bump()
        cursor = int(self.client.hget(key(run, "meta"), "cursor") or 0)
        start = cursor
        tasks = spec.task_chunks
        while cursor < tasks:
            stop = min(cursor + SEED_BATCH, tasks)
            cursor = int(
                self.scripts.seed(keys=[key(run, "meta"), key(run, "tasks")], args=[cursor, stop])
            )
            if on_progress:
                on_progress(cursor, total)
        if cursor < total:
            cursor = self._seed_reused(
                spec, cursor, reused_chunks(spec, reused, cursor), on_progress
            )
        return SeedReport(run, total, spec.total_params, cursor, cursor - start)

    def _seed_reused(
        self,
        spec: RunSpec,
        cursor: int,
        outcomes: Iterator[Outcome],
        on_progress: Callable[[int, int], None] | None,
    ) -> int:
        """Record reused chunks' outcomes from ``cursor`` on, a batch per step (seed_reused.lua)."""
        keys = [key(spec.run, "meta"), key(spec.run, "ledger"), key(spec.run, "stats")]
        total = spec.total_chunks
        while cursor < total:
            batch = list(itertools.islice(outcomes, REUSED_BATCH))
            if not batch or batch[0].chunk != cursor:
                break  # another seeder moved the cursor: its run of this loop finishes it
            args: list[Any] = [cursor, batch[-1].chunk + 1]
            for o in batch:
                args += [o.chunk, o.params, o.to_json()]
            cursor = int(self.scripts.seed_reused(keys=keys, args=args))
            if on_progress:
                on_progress(cursor, total)
        return cursor

    @translated
    def spec(self, run: str) -> RunSpec:
        cached = self._specs.get(run)
        if cached is None:
            text = self.client.get(key(run, "spec"))
            if text is None:
                raise RunNotFound(f"no run {run!r} on {self.where()}")
            cached = self._specs[run] = RunSpec.from_json(text, run)
        return cached

    @translated
    def runs(self) -> list[str]:
        members = self.client.smembers(RUNS)
        valid = sorted(r for r in members if RUN_ID.fullmatch(r))
        self._problems = []
        if len(valid) < len(members):
            bad = sorted(set(members) - set(valid))
            self._problems.append(
                f"{RUNS} holds {len(bad)} names that are not run ids, ignored: "
                + ", ".join(decode.preview(b, 40) for b in bad[:3])
            )
        return valid

    def problems(self) -> list[str]:
        return list(self._problems)

    @translated
    def progress(self, run: str) -> Progress:
        spec = self.spec(run)
        tasks = key(run, "tasks")
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(key(run, "stats"))
        pipe.hgetall(key(run, "meta"))
        pipe.xlen(tasks)
        pipe.zcard(key(run, "delayed"))
        pipe.xpending_range(tasks, GROUP, min="-", max="+", count=IN_FLIGHT_SHOWN)
        pipe.xrevrange(key(run, "events"), count=RECENT_EVENTS)
        pipe.hgetall(key(run, "long"))
        stats, meta, length, delayed, pending, events, long = pipe.execute()
        if not meta:
            self._specs.pop(run, None)
            raise RunNotFound(f"no run {run!r} on {self.where()}")
        problems = Problems()
        m = rdecode.meta(meta, problems)
        if m.total is not None and m.total != spec.total_chunks:
            problems.add(f"meta total {m.total} is not the spec's {spec.total_chunks} chunks")
        s = rdecode.stats(stats, problems)
        workers = int(self._count_leases(keys=[key(run, "leases")]))
        pipe = self.client.pipeline(transaction=False)
        for p in pending:
            pipe.xrange(tasks, min=p["message_id"], max=p["message_id"])
        entries = pipe.execute() if pending else []
        longs = rdecode.long_params(run, long, spec.total_chunks, problems)
        in_flight = []
        now = time.time()
        for p, e in zip(pending, entries, strict=True):
            chunk = rdecode.chunk_of(e[0][1]) if e else None
            if chunk is not None:
                f = InFlight(
                    chunk, p["consumer"], p["times_delivered"], p["time_since_delivered"] / 1000
                )
                in_flight.append(f.with_long(longs.get((f.worker, chunk)), now))
        recent: list[str] = []
        for entry_id, fields in events:
            try:
                event = rdecode.event(fields)
            except DecodeError as err:
                problems.add(f"event {entry_id}: {err}")
                continue
            detail = event.detail
            # A released event with a reason is a worker declining the run (cannot run it).
            shown = event.kind in ("failed", "malformed", "released")
            if detail and shown and detail not in recent:
                recent.append(detail)
                if len(recent) >= RECENT_ERRORS:
                    break
        return Progress(
            run=run,
            total_chunks=spec.total_chunks,
            total_params=spec.total_params,
            seeded_chunks=min(m.cursor, spec.total_chunks),
            done=s.get("done", 0),
            done_params=s.get("done_params", 0),
            dead=s.get("dead", 0),
            errors=s.get("errors", 0),
            param_errors=s.get("param_errors", 0),
            duplicates=s.get("duplicates", 0),
            redelivered=s.get("redelivered", 0),
            failed=s.get("failed", 0),
            malformed=s.get("malformed", 0),
            retried=s.get("retried", 0),
            retried_params=s.get("retried_params", 0),
            queue_depth=length + delayed,
            workers=workers,
            control=m.control,
            seeded_at=m.seeded_at,
            in_flight=in_flight,
            recent_errors=recent,
            problems=problems.lines(),
        )

    def ledger(self, run: str, *, problems: Problems | None = None) -> Iterator[Outcome]:
        own = problems is None
        found = Problems() if problems is None else problems
        try:
            total = self.spec(run).total_chunks
            for chunk, text in self.client.hscan_iter(key(run, "ledger"), count=1000):
                try:
                    yield rdecode.ledger_entry(chunk, text, total)
                except DecodeError as e:
                    found.add(f"ledger entry {decode.preview(chunk, 30)}: {e}")
        except rex.RedisError as e:
            translate(e)
        if own and found:
            log.warning("run %s: %s", run, "; ".join(found.lines()))

    def events(self, run: str) -> Iterator[RunEvent]:
        try:
            self.spec(run)
            last = "-"
            while True:
                batch = self.client.xrange(key(run, "events"), min=last, count=1000)
                for entry_id, f in batch:
                    if entry_id == last:
                        continue
                    with contextlib.suppress(DecodeError):  # progress reports them
                        yield rdecode.event(f)
                if len(batch) < 1000:
                    return
                last = batch[-1][0]
        except rex.RedisError as e:
            translate(e)

    @translated
    def set_control(self, run: str, control: str) -> None:
        if control not in CONTROLS:
            raise UsageError(f"control {control!r} is not one of {', '.join(CONTROLS)}")
        self.spec(run)
        self.client.hset(key(run, "meta"), "control", control)
        self._bump()

    @translated
    def retry(self, run: str, *, dead: bool = True, errors: bool = True) -> RetryReport:
        self.spec(run)
        wanted = {s for s, on in (("dead", dead), ("errors", errors)) if on}
        # Find the candidates by scanning the ledger; the script checks each again.
        chunks = [
            int(chunk)
            for chunk, text in self.client.hscan_iter(key(run, "ledger"), count=1000)
            if str(chunk).isascii() and str(chunk).isdigit() and _status_of(text) in wanted
        ]
        n_dead = n_errors = 0
        round_ = 0
        if chunks:
            round_ = int(self.client.hincrby(key(run, "meta"), "round", 1))
            keys = [
                key(run, n)
                for n in ("ledger", "stats", "tasks", "rounds", "meta", "history", "events")
            ]
            for i in range(0, len(chunks), REQUEUE_BATCH):
                d, e = self.scripts.requeue(
                    keys=keys,
                    args=[round_, int(dead), int(errors), *chunks[i : i + REQUEUE_BATCH]],
                )
                n_dead, n_errors = n_dead + int(d), n_errors + int(e)
            self._bump()
        return RetryReport(run, n_dead, n_errors, round_)

    @translated
    def delete(self, run: str) -> bool:
        deleted = self.client.delete(*(key(run, n) for n in RUN_KEYS))
        known = self.client.srem(RUNS, run)
        self._specs.pop(run, None)
        self._bump()
        return bool(deleted or known)

    def consumer(self, name: str, *, lease_seconds: float, prefetch: int) -> RedisConsumer:
        return RedisConsumer(
            self.url, self.tls, name, lease_seconds=lease_seconds, prefetch=prefetch
        )

    def wait_progress(self, run: str, seconds: float) -> None:
        # record.lua publishes when it records a run's last outcome; the subscription is
        # kept from the first wait on. Any failure here is the plain wait's: a watcher
        # never fails for it.
        deadline = time.monotonic() + seconds
        channel = complete_channel(run)
        try:
            if self._pubsub is None:
                self._pubsub = self.client.pubsub()
            if channel not in self._pubsub.channels:  # replies are str (decode_responses)
                self._pubsub.subscribe(channel)
                # Once confirmed, it hears every later completion; one before is in the
                # run's meta (record.lua sets completed_at in the same step).
                heard = self._heard(channel, "subscribe", deadline)
                if heard != "subscribe" or self.client.hexists(key(run, "meta"), "completed_at"):
                    return
            self._heard(channel, "message", deadline)
        except rex.RedisError as e:
            log.debug("waiting for run %s to complete: %s", run, e)
            self._close_pubsub()
            time.sleep(max(0.0, deadline - time.monotonic()))

    def _heard(self, channel: str, kind: str, deadline: float) -> str | None:
        """The type of the next pubsub message on ``channel`` that is a publication or
        ``kind``; None at the deadline."""
        while (left := deadline - time.monotonic()) > 0:
            msg = self._pubsub.get_message(timeout=left)
            if msg is not None and msg["channel"] == channel and msg["type"] in ("message", kind):
                return str(msg["type"])
        return None

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(rex.RedisError):
                self._pubsub.close()
            self._pubsub = None

    def close(self) -> None:
        self._close_pubsub()
        self.client.close()


def _status_of(text: str) -> str:
    """The status of an outcome's JSON without decoding its results ("" if it has none)."""
    at = text.find('"s":"')
    end = text.find('"', at + 5) if at >= 0 else -1
    return text[at + 5 : end] if end >= 0 else ""
