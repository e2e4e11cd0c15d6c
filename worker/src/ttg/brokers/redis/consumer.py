"""The Redis consumer: one worker's session, over a client of its own.

Liveness is a lease per run, not message idle time: a chunk that takes ten
times the lease stays with its live worker. A background thread renews this
consumer's lease (3/4 of ``lease_seconds``) in every run it serves, every 1/8
lease; live workers look for expired leases every 1/8 lease, so a dead
worker's chunks are claimed within 7/8 of the lease (1.75 s at the default
2 s) of its death.

A broker hiccup is not a worker death. When a renewal fails, this consumer
takes no new work until its lease is renewed again, and claims nothing from
others until a whole lease after its last failed renewal: a broker that
refused everyone's writes for a second must not make live workers steal each
other's chunks (and count deliveries towards the dead-letter limit) once it
answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rex

from ttg import decode
from ttg.broker import DECLINE_SECONDS, Consumer
from ttg.brokers.redis import decode as rdecode
from ttg.brokers.redis.client import (
    GENERATION,
    GROUP,
    RUNS,
    Scripts,
    is_data_error,
    key,
    make_client,
    translated,
)
from ttg.brokers.redis.marks import MarkWriter
from ttg.decode import DecodeError, Throttle
from ttg.endpoint import TLS
from ttg.errors import RunDataError
from ttg.run import RUN_ID, Delivery, LongParam, Outcome, Recorded, RunSpec

log = logging.getLogger(__name__)

#: A lease lives this fraction of ``lease_seconds`` after its last renewal...
LEASE_TTL_FRACTION = 0.75
#: ...it is renewed, and live workers look for expired ones, every lease / this.
CHECKS_PER_LEASE = 8
#: Most tasks one promotion step moves.
MOVE_BATCH = 100
#: An idle worker looks for new runs this often, seconds.
IDLE_POLL_SECONDS = 0.05
#: Runs are rescanned at least this often even if nothing says they changed.
RESCAN_SECONDS = 5.0
#: Longest reason of a decline kept in its event.
MAX_WHY_CHARS = 500
#: A run whose keys Redis refused to read (WRONGTYPE, a script failing on garbage) is
#: left alone this long before it is tried again.
BAD_RUN_SECONDS = 30.0
#: One log line per skipped run (unreadable, unsupported, garbage) at most this often.
SKIP_LOG_SECONDS = 300.0

_RECORDED = {1: Recorded.COUNTED, 0: Recorded.DUPLICATE, 2: Recorded.COUNTED}


class RedisConsumer(Consumer):
    """Heartbeat thread, fetch, record, reclaim; serves every live run."""

    def __init__(
        self, url: str, tls: TLS, name: str, *, lease_seconds: float, prefetch: int
    ) -> None:
        self.name = name
        self.client: Any = make_client(url, tls)
        self.scripts = Scripts(self.client)
        self.lease_ms = max(int(lease_seconds * 1000), 100)
        self.ttl_ms = int(self.lease_ms * LEASE_TTL_FRACTION)
        self.check_s = self.lease_ms / 1000 / CHECKS_PER_LEASE
        self.prefetch = prefetch
        self._stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        #: Runs this consumer serves (live, running, its lease written there) -> spec.
        self._serving: dict[str, RunSpec] = {}
        #: Runs with chunks in hand but no longer served (paused, say): the lease stays.
        self._holding: set[str] = set()
        #: Entry ids handed out and not yet settled -> their run.
        self._in_hand: dict[str, str] = {}
        self._generation: str | None = None
        self._next_rescan = 0.0
        self._next_maintenance = 0.0
        self._last_beat_ok = 0.0
        self._last_beat_failed = 0.0
        self._turn = 0
        self._lock = threading.Lock()
        #: Runs left alone until a time (monotonic): Redis refused to read their keys.
        self._bad: dict[str, float] = {}
        self._skip_log = Throttle(SKIP_LOG_SECONDS)
        #: Runs where this worker reported a long-running parameter (``running_long``).
        self._long_runs: set[str] = set()
        #: Begun marks without a round trip; a cluster client marks with begin.lua.
        self._marks = MarkWriter(self.client) if hasattr(self.client, "connection_pool") else None

    # -- liveness ---------------------------------------------------------------------

    @translated
    def start(self) -> None:
        self.client.ping()
        self._last_beat_ok = time.monotonic()
        self._stop.clear()
        self._beat_thread = threading.Thread(target=self._beat, name="ttg-lease", daemon=True)
        self._beat_thread.start()

    @property
    def connected(self) -> bool:
        # Renewed less than a lease-TTL ago: every run we serve still sees us alive.
        return time.monotonic() - self._last_beat_ok < self.ttl_ms / 1000

    def _renew(self, runs: Sequence[str]) -> None:
        for run in runs:
            try:
                self.scripts.beat(keys=[key(run, "leases")], args=[self.name, self.ttl_ms])
            except rex.ResponseError as e:
                # One run's garbage lease key must not cost every run our lease: that
                # run is left alone (the next rescan drops it), the others renewed.
                self._bad[run] = time.monotonic() + BAD_RUN_SECONDS
                self._next_rescan = 0.0
                self._skip(run, f"run {run}: its lease cannot be written: {str(e)[:200]}")

    def _beat(self) -> None:
        while not self._stop.wait(self.check_s):
            with self._lock:
                runs = sorted(set(self._serving) | self._holding)
            try:
                self._renew(runs)
                self.client.ping()  # also for a consumer serving no run: /readyz
                self._last_beat_ok = time.monotonic()
            except rex.RedisError as e:
                self._last_beat_failed = time.monotonic()
                log.warning("lease not renewed: %s", str(e).split("\n")[0])

    def _may_reclaim(self) -> bool:
        return time.monotonic() - self._last_beat_failed > self.lease_ms / 1000

    # -- fetching ---------------------------------------------------------------------

    @translated
    def fetch(self, timeout: float, limit: int) -> list[Delivery]:
        if not self.connected:
            # Cannot renew our lease: others may take our chunks; take nothing new.
            self._stop.wait(min(timeout, self.check_s))
            return []
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.check_s
            recovered = self._maintain(limit)
            if recovered:
                return recovered
        if not self._serving:
            self._stop.wait(min(timeout, IDLE_POLL_SECONDS))
            self._next_maintenance = 0.0
            return []
        out: list[Delivery] = []
        runs = list(self._serving)
        # Fair across runs: start from a different one each time; block on one only
        # when the others had nothing (one blocking read serves one slot of a cluster).
        self._turn = (self._turn + 1) % len(runs)
        order = runs[self._turn :] + runs[: self._turn]
        for i, run in enumerate(order):
            last = i == len(order) - 1
            block = None
            if last and not out:
                block = max(int(min(timeout, self.check_s) * 1000), 1)
            out += self._read(run, limit - len(out), block)
            if len(out) >= limit:
                break
        return out

    def _read(self, run: str, count: int, block: int | None) -> list[Delivery]:
        try:
            reply = self.client.xreadgroup(
                GROUP, self.name, {key(run, "tasks"): ">"}, count=count, block=block
            )
        except rex.ResponseError as e:
            if "NOGROUP" in str(e):
                self._forget(run)  # deleted under our feet
                return []
            self._set_aside(run, e)
            return []
        out = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                d = self._delivery(run, entry_id, fields, deliveries=1)
                if d is not None:
                    out.append(d)
        return out

    def _delivery(
        self, run: str, entry_id: str, fields: dict[str, str] | None, deliveries: int
    ) -> Delivery | None:
        """The delivery an entry stands for; None (and the entry recorded) if it is malformed."""
        spec = self._serving.get(run)
        if spec is None:
            spec = self._load_spec(run)
            if spec is None:
                return None
        try:
            chunk, earlier, rnd = rdecode.task(fields, spec.total_chunks)
        except DecodeError as e:
            # Described, never quoted whole: a 20 MB field is not logged by every worker.
            detail = f"malformed task message {entry_id} {decode.preview(fields)}: {e}"
            log.error(
                "%s: acknowledged and recorded as a problem of the run", detail, extra={"run": run}
            )
            self.scripts.malformed(
                keys=[key(run, "tasks"), key(run, "stats"), key(run, "events")],
                args=[GROUP, entry_id, self.name, detail[:500]],
            )
            return None
        self._in_hand[entry_id] = run
        return Delivery(spec, chunk, earlier + deliveries, entry_id, rnd)

    def _load_spec(self, run: str) -> RunSpec | None:
        """The run's spec; None (the run skipped, said once in a while) if it cannot be read."""
        text = self.client.get(key(run, "spec"))
        if text is None:
            return None
        try:
            return RunSpec.from_json(text, run)
        except RunDataError as e:
            self._skip(run, str(e))
            return None

    def _skip(self, run: str, why: str) -> None:
        if self._skip_log(run):
            shown = run if RUN_ID.fullmatch(run) else decode.preview(run, 80)
            log.error(
                "%s; this worker skips the run and serves the others", why, extra={"run": shown}
            )

    def _set_aside(self, run: str, e: rex.ResponseError) -> None:
        """Leave a run alone for a while: Redis refused to read its keys (garbage)."""
        self._bad[run] = time.monotonic() + BAD_RUN_SECONDS
        self._forget(run)
        self._skip(
            run, f"run {run}: redis refused to read its keys: {decode.one_line(str(e), 200)}"
        )

    # -- maintenance: new runs, due retries, dead workers' chunks ------------------------

    def _maintain(self, limit: int) -> list[Delivery]:
        self._rescan()
        recovered: list[Delivery] = []
        for run in list(self._serving):
            try:
                self.scripts.promote(
                    keys=[key(run, "delayed"), key(run, "tasks"), key(run, "stats")],
                    args=[MOVE_BATCH],
                )
                if len(recovered) < limit:
                    recovered += self._reclaim(run, limit - len(recovered))
            except rex.ResponseError as e:
                self._set_aside(run, e)
        return recovered

    def _rescan(self) -> None:
        """Learn which runs to serve: when the generation moved, and every RESCAN_SECONDS."""
        gen = self.client.get(GENERATION)
        now = time.monotonic()
        if gen == self._generation and now < self._next_rescan:
            return
        self._generation, self._next_rescan = gen, now + RESCAN_SECONDS
        serving: dict[str, RunSpec] = {}
        for run in sorted(self.client.smembers(RUNS)):
            if not RUN_ID.fullmatch(run):
                self._skip(run, f"{RUNS} holds {decode.preview(run, 80)}, which is not a run id")
                continue
            if self._bad.get(run, 0) > now:
                continue
            try:
                control, total, completed = self.client.hmget(
                    key(run, "meta"), "control", "total", "completed_at"
                )
                if total is None or control != "running" or completed is not None:
                    continue
                spec = self._serving.get(run) or self._load_spec(run)
            except rex.ResponseError as e:
                self._set_aside(run, e)
                continue
            if spec is not None:
                serving[run] = spec
        added = [r for r in serving if r not in self._serving]
        # A lease in a run before the first read from it: nobody may take what we read.
        self._renew(added)
        with self._lock:
            self._serving = serving
            self._holding = set(self._in_hand.values()) - set(serving)

    def _forget(self, run: str) -> None:
        with self._lock:
            self._serving.pop(run, None)
            self._holding.discard(run)
        for entry_id in [e for e, r in self._in_hand.items() if r == run]:
            del self._in_hand[entry_id]

    def _reclaim(self, run: str, limit: int) -> list[Delivery]:
        tasks = key(run, "tasks")
        try:
            consumers = self.client.xinfo_consumers(tasks, GROUP)
        except rex.ResponseError:
            return []  # deleted meanwhile
        out: list[Delivery] = []
        for c in consumers:
            if len(out) >= limit:
                break
            if c["name"] == self.name:
                held = sum(1 for r in self._in_hand.values() if r == run)
                if c["pending"] > held:
                    out += self._adopt(run, limit - len(out))
                continue
            if c["pending"] == 0 and c.get("idle", 0) < 10 * self.lease_ms:
                continue  # an idle consumer with nothing pending costs nothing
            if not self._may_reclaim():
                continue
            claimed = self.scripts.reclaim(
                keys=[key(run, n) for n in ("tasks", "leases", "stats", "events", "begun")],
                args=[GROUP, c["name"], self.name, limit - len(out)],
            )
            for entry_id, flat, deliveries in claimed:
                fields = dict(zip(flat[::2], flat[1::2], strict=False))
                chunk = rdecode.chunk_of(fields)
                log.warning(
                    "reclaimed chunk %s from dead worker %s",
                    chunk,
                    c["name"],
                    extra={"run": run, "chunk": chunk, "worker": self.name},
                )
                d = self._delivery(run, entry_id, fields, deliveries=int(deliveries))
                if d is not None:
                    out.append(d)
        return out

    def _adopt(self, run: str, limit: int) -> list[Delivery]:
        """Take up entries in our own pending list that nobody here works on.

        A read retried after a dropped connection can leave entries pending for
        us that we never saw, and a delivery we abandoned stays there too;
        nobody else would claim them while our lease is alive.
        """
        tasks = key(run, "tasks")
        pending = self.client.xpending_range(
            tasks, GROUP, min="-", max="+", count=limit, consumername=self.name, idle=self.lease_ms
        )
        lost = [p["message_id"] for p in pending if p["message_id"] not in self._in_hand]
        if not lost:
            return []
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        begun = self._begun(run, lost)
        out = []
        for entry_id in lost:
            # As for a dead worker's (reclaim.lua): only a delivery begun here counts.
            count = counts[entry_id] + 1 if begun[entry_id] else counts[entry_id]
            for got_id, fields in self.client.xclaim(
                tasks, GROUP, self.name, self.lease_ms, [entry_id], retrycount=count
            ):
                d = self._delivery(run, got_id, fields, deliveries=count)
                if d is not None:
                    out.append(d)
        with contextlib.suppress(rex.ResponseError):
            self.client.hdel(key(run, "begun"), *lost)
        return out

    def _begun(self, run: str, ids: list[str]) -> dict[str, bool]:
        """Which of our entries ``ids`` were begun; all of them if the marks cannot be read."""
        try:
            marks = self.client.hmget(key(run, "begun"), ids)
        except rex.ResponseError:
            return dict.fromkeys(ids, True)  # garbage in the key: count, as before marks
        return {i: m is not None for i, m in zip(ids, marks, strict=True)}

    # -- beginning ----------------------------------------------------------------------------

    def running_long(self, params: Sequence[LongParam]) -> None:
        by_run: dict[str, list[list[Any]]] = {}
        for p in params:
            by_run.setdefault(p.run, []).append(p.to_list())
        pipe = self.client.pipeline(transaction=False)
        for run in sorted(set(by_run) | self._long_runs):
            if run in by_run:
                pipe.hset(key(run, "long"), self.name, json.dumps(by_run[run]))
            else:
                pipe.hdel(key(run, "long"), self.name)
        try:
            pipe.execute()
        except rex.RedisError as e:
            log.debug("long-running parameters not reported: %s", e)
            return
        self._long_runs = set(by_run)

    @translated
    def begin_many(self, deliveries: Sequence[Delivery]) -> None:
        if self._marks is None:
            for d in deliveries:
                self.begin(d)
            return
        by_run: dict[str, list[str]] = {}
        for d in deliveries:
            by_run.setdefault(d.run, []).append(d.handle)
        for run, handles in by_run.items():
            self._marks.mark(key(run, "begun"), *handles)

    @translated
    def begin(self, delivery: Delivery) -> None:
        run = delivery.run
        if self._marks is not None:
            # No round trip: a refused mark (a full broker) goes unnoticed and the
            # compute goes on unmarked, as with begin.lua's code 2 below.
            self._marks.mark(key(run, "begun"), delivery.handle)
            return
        code = self.scripts.begin(
            keys=[key(run, "tasks"), key(run, "begun")],
            args=[GROUP, delivery.handle, self.name],
        )
        if code == 2 and self._skip_log(f"begin {run}"):
            # A full broker (or garbage in the key): the compute goes on unmarked.
            log.warning(
                "the broker refused to mark chunk %s begun; a death now would not count it",
                delivery.chunk,
                extra={"run": run},
            )

    # -- settling ---------------------------------------------------------------------------

    @translated
    def complete(self, items: Sequence[tuple[Delivery, Outcome]]) -> list[Recorded]:
        by_run: dict[str, list[int]] = {}
        for i, (d, _) in enumerate(items):
            by_run.setdefault(d.run, []).append(i)
        out: list[Recorded] = [Recorded.GONE] * len(items)
        for run, indexes in by_run.items():
            args: list[Any] = [GROUP, self.name, len(indexes)]
            for i in indexes:
                d, o = items[i]
                # The short fields travel as one argument: each argument costs the
                # client's encoder more than the script's split (record.lua).
                head = f"{d.handle} {d.chunk} {d.round} {o.status} {o.params} {len(o.param_errors)}"
                args += [
                    head,
                    f'{{"w":{json.dumps(o.worker)},"a":{o.attempt},',
                    (o.error or "")[:500],
                    o.to_json(),
                ]
            try:
                codes = self.scripts.record(
                    keys=[
                        key(run, n)
                        for n in ("tasks", "ledger", "stats", "meta", "rounds", "events", "begun")
                    ],
                    args=args,
                )
            except rex.ResponseError as e:
                # Garbage in one of the run's keys refuses every outcome of it, for good:
                # retrying would hold its chunks (and this worker) hostage. The worker
                # gives them back; this consumer leaves the run alone for a while.
                if not is_data_error(e):
                    raise
                self._set_aside(run, e)
                for i in indexes:
                    out[i] = Recorded.REFUSED
                continue
            for i in indexes:
                self._in_hand.pop(items[i][0].handle, None)
            if codes == -1:
                continue  # the run was deleted: GONE
            for i, code in zip(indexes, codes, strict=True):
                out[i] = _RECORDED[int(code)]
        return out

    @translated
    def retry(self, delivery: Delivery, error: str, *, delay: float) -> None:
        run = delivery.run
        self.scripts.retry(
            keys=[
                key(run, n)
                for n in ("tasks", "delayed", "stats", "ledger", "meta", "events", "begun")
            ],
            args=[
                GROUP,
                delivery.handle,
                delivery.chunk,
                int(delay * 1000),
                delivery.attempt,
                delivery.round,
                self.name,
                error[:500],
            ],
        )
        self._in_hand.pop(delivery.handle, None)

    @translated
    def release(self, delivery: Delivery, why: str | None = None) -> None:
        run = delivery.run
        self.scripts.release(
            keys=[key(run, n) for n in ("tasks", "stats", "meta", "events", "begun")],
            args=[
                GROUP,
                delivery.handle,
                delivery.chunk,
                delivery.attempt - 1,
                delivery.round,
                self.name,
                *([why[:MAX_WHY_CHARS]] if why else []),
            ],
        )
        self._in_hand.pop(delivery.handle, None)

    def decline(self, delivery: Delivery, why: str) -> None:
        self.release(delivery, why)
        self._bad[delivery.run] = time.monotonic() + DECLINE_SECONDS
        self._forget(delivery.run)

    def abandon(self, delivery: Delivery) -> None:
        # Pending for us and no longer in hand: adopted again after a lease of silence.
        self._in_hand.pop(delivery.handle, None)

    def close(self) -> None:
        self._stop.set()
        if self._marks is not None:
            self._marks.close()
        if self._beat_thread:
            self._beat_thread.join(timeout=2)
        with self._lock:
            # Forgotten here, so a second close() touches nothing: a closed cluster
            # client cannot even route a command (AttributeError, not a RedisError).
            runs = set(self._serving) | self._holding
            self._serving, self._holding = {}, set()
        with contextlib.suppress(rex.RedisError):
            # Nothing is pending for us any more: let nobody wait out our lease.
            for run in runs:
                self.client.zrem(key(run, "leases"), self.name)
        with contextlib.suppress(rex.RedisError):
            self.client.close()
