"""Redis Streams backend.

Layout of one run ``R`` (a hash tag per run keeps its keys in one slot)::

    ttg:{R}:spec     string  the RunSpec as JSON, written once
    ttg:{R}:cursor   string  next chunk id to publish (seeding is resumable)
    ttg:{R}:tasks    stream  one entry per chunk to do: c=chunk, a=earlier deliveries;
                             consumer group "ttg"; entries are deleted when acknowledged
    ttg:{R}:delayed  zset    "chunk:attempts" -> due time (ms), retries waiting for backoff
    ttg:{R}:ledger   hash    chunk -> outcome JSON (result or dead letter), first wins
    ttg:{R}:stats    hash    done, done_params, dead, duplicates, redelivered, failed
    ttg:runs         set     every run id;   ttg:runs:live  set  runs not yet complete
    ttg:hb:<consumer> string one per worker, expires after the lease unless renewed

Liveness is the heartbeat key, not message idle time: a chunk that takes ten
times the lease stays with its live worker. A dead worker's key expires 3/4 of a
lease after its last renewal, and live workers look every 1/8 lease, so its
chunks are claimed within 7/8 of the lease (1.75 s at the default 2 s) of its
death. Every state change is one Lua script, so a crash between two commands
cannot lose or double a chunk.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, NoReturn, TypeVar

import redis
import redis.exceptions as rex

from ttg.broker import Broker, Consumer, SeedReport
from ttg.errors import (
    BrokerConnectionError,
    BrokerError,
    RunConflict,
    RunNotFound,
    UsageError,
)
from ttg.run import Delivery, InFlight, Outcome, Progress, RunSpec

log = logging.getLogger(__name__)

#: Consumer group every worker joins, in every run's task stream.
GROUP = "ttg"
#: Chunks published per seeding step (one Lua call each).
SEED_BATCH = 2000
#: Most tasks one reclaim or promotion step moves.
MOVE_BATCH = 100
#: How many in-flight chunks ``progress`` lists.
IN_FLIGHT_SHOWN = 50
#: A heartbeat key lives this fraction of the lease after its last renewal...
HEARTBEAT_TTL_FRACTION = 0.75
#: ...it is renewed, and live workers look for expired ones, every lease / this.
CHECKS_PER_LEASE = 8

RUNS = "ttg:runs"
LIVE_RUNS = "ttg:runs:live"

T = TypeVar("T")


def _key(run: str, name: str) -> str:
    return f"ttg:{{{run}}}:{name}"


def _heartbeat_key(consumer: str) -> str:
    return f"ttg:hb:{consumer}"


def _run_of(stream_key: str) -> str:
    return stream_key[stream_key.index("{") + 1 : stream_key.index("}")]


def _translate(e: rex.RedisError) -> NoReturn:
    if isinstance(e, rex.ConnectionError | rex.TimeoutError):
        raise BrokerConnectionError(f"redis: {e}") from None
    raise BrokerError(f"redis: {e}") from None


def _translated(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn redis-py exceptions into TTG's own at the backend boundary."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except rex.RedisError as e:
            _translate(e)

    return wrapper


class _Scripts:
    """The Lua scripts, registered once per client (EVALSHA, reloaded after a restart)."""

    def __init__(self, client: redis.Redis) -> None:
        def load(name: str) -> Any:
            source = resources.files("ttg.brokers").joinpath(f"redis_{name}.lua").read_text()
            return client.register_script(source)

        self.seed = load("seed")
        self.record = load("record")
        self.retry = load("retry")
        self.promote = load("promote")
        self.release = load("release")
        self.reclaim = load("reclaim")


def connect(url: str) -> RedisBroker:
    """Open a ``RedisBroker`` at ``url`` and check that it answers."""
    broker = RedisBroker(url)
    broker.ping()
    return broker


class RedisBroker(Broker):
    """Runs kept in one Redis (7.x; 6.2 works, for the embedded demo server)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            # decode_responses=True makes every reply a str, which redis-py's
            # annotations (bytes | str | ...) cannot express: typed as Any here.
            self.client: Any = redis.Redis.from_url(
                url,
                decode_responses=True,
                # Above the longest blocking read (a fraction of the lease).
                socket_timeout=10,
                socket_connect_timeout=3,
                health_check_interval=15,
            )
        except ValueError as e:
            raise UsageError(f"broker URL {url!r}: {e}") from None
        self.scripts = _Scripts(self.client)
        self._specs: dict[str, RunSpec] = {}

    @_translated
    def ping(self) -> None:
        self.client.ping()

    @_translated
    def seed(
        self, spec: RunSpec, *, on_progress: Callable[[int, int], None] | None = None
    ) -> SeedReport:
        run, total = spec.run, spec.total_chunks
        self.client.set(_key(run, "spec"), spec.to_json(), nx=True)
        stored = self.spec(run)
        if stored != spec:
            raise RunConflict(f"run {run!r} exists with different parameters; pick a new run id")
        # The group exists before the first task does, so no worker can miss one.
        with contextlib.suppress(rex.ResponseError):  # BUSYGROUP: created before
            self.client.xgroup_create(_key(run, "tasks"), GROUP, id="0", mkstream=True)
        self.client.sadd(RUNS, run)
        if self.client.hlen(_key(run, "ledger")) < total:
            self.client.sadd(LIVE_RUNS, run)
        cursor = int(self.client.get(_key(run, "cursor")) or 0)
        start = cursor
        while cursor < total:
            stop = min(cursor + SEED_BATCH, total)
            cursor = int(
                self.scripts.seed(
                    keys=[_key(run, "cursor"), _key(run, "tasks")], args=[cursor, stop]
                )
            )
            if on_progress:
                on_progress(cursor, total)
        return SeedReport(run, total, spec.total_params, cursor, cursor - start)

    @_translated
    def spec(self, run: str) -> RunSpec:
        cached = self._specs.get(run)
        if cached is None:
            text = self.client.get(_key(run, "spec"))
            if text is None:
                raise RunNotFound(f"no run {run!r} in {self.url_without_password()}")
            cached = self._specs[run] = RunSpec.from_json(text)
        return cached

    def url_without_password(self) -> str:
        kw = self.client.connection_pool.connection_kwargs
        if "path" in kw:
            return f"unix://{kw['path']}"
        return f"redis://{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"

    @_translated
    def runs(self) -> list[str]:
        return sorted(self.client.smembers(RUNS))

    @_translated
    def progress(self, run: str) -> Progress:
        spec = self.spec(run)
        tasks = _key(run, "tasks")
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(_key(run, "stats"))
        pipe.get(_key(run, "cursor"))
        pipe.xlen(tasks)
        pipe.zcard(_key(run, "delayed"))
        pipe.xpending_range(tasks, GROUP, min="-", max="+", count=IN_FLIGHT_SHOWN)
        stats, cursor, length, delayed, pending = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        for p in pending:
            pipe.xrange(tasks, min=p["message_id"], max=p["message_id"])
        entries = pipe.execute()
        in_flight = [
            InFlight(
                int(e[0][1]["c"]),
                p["consumer"],
                p["times_delivered"],
                p["time_since_delivered"] / 1000,
            )
            for p, e in zip(pending, entries, strict=True)
            if e
        ]
        s = {k: int(v) for k, v in stats.items()}
        return Progress(
            run=run,
            total_chunks=spec.total_chunks,
            total_params=spec.total_params,
            seeded_chunks=int(cursor or 0),
            done=s.get("done", 0),
            done_params=s.get("done_params", 0),
            dead=s.get("dead", 0),
            duplicates=s.get("duplicates", 0),
            redelivered=s.get("redelivered", 0),
            failed=s.get("failed", 0),
            queue_depth=length + delayed,
            in_flight=in_flight,
        )

    def ledger(self, run: str) -> Iterator[Outcome]:
        try:
            for chunk, text in self.client.hscan_iter(_key(run, "ledger"), count=1000):
                yield Outcome.from_json(int(chunk), text)
        except rex.RedisError as e:
            _translate(e)

    @_translated
    def delete(self, run: str) -> bool:
        names = ("spec", "cursor", "tasks", "delayed", "ledger", "stats")
        pipe = self.client.pipeline(transaction=True)
        pipe.srem(LIVE_RUNS, run)
        pipe.srem(RUNS, run)
        pipe.delete(*(_key(run, n) for n in names))
        known = pipe.execute()[1]
        self._specs.pop(run, None)
        return bool(known)

    def consumer(self, name: str, *, lease_seconds: float, prefetch: int) -> RedisConsumer:
        return RedisConsumer(self, name, lease_seconds=lease_seconds, prefetch=prefetch)

    def close(self) -> None:
        self.client.close()


class RedisConsumer(Consumer):
    """One worker's session: heartbeat thread, fetch, record, reclaim."""

    def __init__(
        self, broker: RedisBroker, name: str, *, lease_seconds: float, prefetch: int
    ) -> None:
        self.broker = broker
        self.client = broker.client
        self.scripts = broker.scripts
        self.name = name
        self.lease_ms = max(int(lease_seconds * 1000), 100)
        self.ttl_ms = int(self.lease_ms * HEARTBEAT_TTL_FRACTION)
        self.check_s = self.lease_ms / 1000 / CHECKS_PER_LEASE
        self.prefetch = prefetch
        self._hb_key = _heartbeat_key(name)
        self._stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        #: Entry ids handed out and not yet completed, failed or released -> their run.
        self._in_hand: dict[str, str] = {}
        self._live: list[str] = []
        self._next_maintenance = 0.0

    # -- liveness ---------------------------------------------------------------

    @_translated
    def start(self) -> None:
        self.client.set(self._hb_key, str(time.time()), px=self.ttl_ms)
        self._hb_thread = threading.Thread(target=self._beat, name="ttg-heartbeat", daemon=True)
        self._hb_thread.start()

    def _beat(self) -> None:
        # Several renewals per key lifetime, so a few lost ones never let it expire.
        while not self._stop.wait(self.check_s):
            try:
                self.client.set(self._hb_key, str(time.time()), px=self.ttl_ms)
            except rex.RedisError as e:
                log.warning("heartbeat not renewed: %s", e)

    # -- fetching ---------------------------------------------------------------

    @_translated
    def fetch(self, timeout: float) -> list[Delivery]:
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.check_s
            recovered = self._maintain()
            if recovered:
                return recovered
        if not self._live:
            self._stop.wait(min(timeout, self.check_s))
            return []
        reply = self.client.xreadgroup(
            GROUP,
            self.name,
            {_key(run, "tasks"): ">" for run in self._live},
            count=self.prefetch,
            # Never block past the next look for dead workers' chunks.
            block=max(int(min(timeout, self.check_s) * 1000), 1),
        )
        out = []
        for stream, entries in reply or []:
            run = _run_of(stream)
            for entry_id, fields in entries:
                out.append(self._delivery(run, entry_id, fields, deliveries=1))
        return out

    def _delivery(
        self, run: str, entry_id: str, fields: dict[str, str], deliveries: int
    ) -> Delivery:
        spec = self.broker.spec(run)
        chunk = int(fields["c"])
        lo, hi = spec.bounds(chunk)
        self._in_hand[entry_id] = run
        return Delivery(run, chunk, lo, hi, int(fields["a"]) + deliveries, entry_id)

    def _maintain(self) -> list[Delivery]:
        """Refresh the live runs, promote due retries, reclaim dead workers' chunks."""
        self._live = sorted(self.client.smembers(LIVE_RUNS))
        now_ms = int(time.time() * 1000)
        recovered: list[Delivery] = []
        for run in self._live:
            self.scripts.promote(
                keys=[_key(run, "delayed"), _key(run, "tasks"), _key(run, "stats")],
                args=[now_ms, MOVE_BATCH],
            )
            if len(recovered) < self.prefetch:
                recovered += self._reclaim(run, self.prefetch - len(recovered))
        return recovered

    def _reclaim(self, run: str, limit: int) -> list[Delivery]:
        tasks = _key(run, "tasks")
        consumers = self.client.xinfo_consumers(tasks, GROUP)
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
            claimed = self.scripts.reclaim(
                keys=[tasks, _heartbeat_key(c["name"]), _key(run, "stats")],
                args=[GROUP, c["name"], self.name, limit - len(out)],
            )
            for entry_id, flat, deliveries in claimed:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                log.warning(
                    "reclaimed chunk %s of run %s from dead worker %s", fields["c"], run, c["name"]
                )
                out.append(self._delivery(run, entry_id, fields, deliveries=int(deliveries)))
        return out

    def _adopt(self, run: str, limit: int) -> list[Delivery]:
        """Take up entries delivered to this very consumer whose reply never arrived.

        A read retried after a dropped connection can leave entries in our own
        pending list that we never saw; nobody else would ever claim them, since
        our heartbeat is alive.
        """
        tasks = _key(run, "tasks")
        pending = self.client.xpending_range(
            tasks, GROUP, min="-", max="+", count=limit, consumername=self.name, idle=self.lease_ms
        )
        lost = [p for p in pending if p["message_id"] not in self._in_hand]
        if not lost:
            return []
        ids = [p["message_id"] for p in lost]
        counts = {p["message_id"]: p["times_delivered"] for p in lost}
        out = []
        for entry_id, fields in self.client.xclaim(tasks, GROUP, self.name, self.lease_ms, ids):
            if fields:
                out.append(self._delivery(run, entry_id, fields, deliveries=counts[entry_id] + 1))
        return out

    # -- outcomes ---------------------------------------------------------------

    @_translated
    def complete(self, delivery: Delivery, outcome: Outcome) -> bool:
        return self._record(delivery, outcome, failed=0) != 0

    def _record(self, d: Delivery, outcome: Outcome, *, failed: int) -> int:
        run = d.run
        result = int(
            self.scripts.record(
                keys=[
                    _key(run, "tasks"),
                    _key(run, "ledger"),
                    _key(run, "stats"),
                    LIVE_RUNS,
                    _key(run, "spec"),
                ],
                args=[
                    GROUP,
                    d.handle,
                    d.chunk,
                    outcome.to_json(),
                    outcome.status,
                    outcome.params,
                    self.broker.spec(run).total_chunks,
                    run,
                    outcome.worker,
                    outcome.attempt,
                    failed,
                ],
            )
        )
        self._in_hand.pop(d.handle, None)
        if result < 0:
            raise RunNotFound(f"run {run!r} was deleted while chunk {d.chunk} was computed")
        return result

    @_translated
    def fail(self, delivery: Delivery, error: str, *, max_deliveries: int, delay: float) -> str:
        if delivery.attempt >= max_deliveries:
            self._record(delivery, Outcome.dead(delivery, self.name, error), failed=1)
            return "dead"
        run = delivery.run
        due_ms = int((time.time() + delay) * 1000)
        self.scripts.retry(
            keys=[
                _key(run, "tasks"),
                _key(run, "delayed"),
                _key(run, "stats"),
                _key(run, "ledger"),
                _key(run, "spec"),
            ],
            args=[GROUP, delivery.handle, delivery.chunk, due_ms, delivery.attempt],
        )
        self._in_hand.pop(delivery.handle, None)
        return "retry"

    @_translated
    def release(self, delivery: Delivery) -> None:
        run = delivery.run
        self.scripts.release(
            keys=[_key(run, "tasks"), _key(run, "stats"), _key(run, "spec")],
            args=[GROUP, delivery.handle, delivery.chunk, delivery.attempt - 1],
        )
        self._in_hand.pop(delivery.handle, None)

    def close(self) -> None:
        self._stop.set()
        if self._hb_thread:
            self._hb_thread.join(timeout=2)
        with contextlib.suppress(rex.RedisError):
            # Nothing is pending for us any more: let nobody wait out our lease.
            self.client.delete(self._hb_key)
