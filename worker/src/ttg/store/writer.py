"""The worker's side of the results store: caps, then one Parquet object per chunk.

A worker calls ``ResultsWriter.persist`` with the outcomes it is about to
record, and records what it returns: each outcome of a run with a results
store comes back holding a reference to its object (name, rows, sha256), which
is durable in the store by then; the results themselves leave the outcome, so
the ledger never holds them. ``settled`` then deletes the object of an outcome
the ledger did not count (a duplicate, or a run deleted meanwhile).

Caps, in every store (``broker`` included): a result whose JSON text is longer
than the cap is that parameter's error, naming its size; so is every result of
a chunk past the chunk's cap. Before this, a huge result in the broker was
whatever the broker made of it: Redis refuses a script argument over 512 MB and
RabbitMQ a message over 128 MiB, so the worker retried the chunk forever.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from typing import Any

from ttg.errors import StoreError
from ttg.jsontext import compact
from ttg.run import Delivery, ObjectRef, Outcome, Recorded, Status
from ttg.store import BROKER, open_store
from ttg.store.chunks import encode, object_name

log = logging.getLogger(__name__)

#: Largest result, bytes of its JSON text, kept in the broker's ledger.
MAX_RESULT_BYTES_BROKER = 1 << 20
#: Largest sum of one chunk's results kept in the broker's ledger (half RabbitMQ's
#: default message cap; Redis holds the ledger in memory).
MAX_CHUNK_BYTES_BROKER = 64 << 20
#: Largest result, bytes of its JSON text, in a results store.
MAX_RESULT_BYTES_STORE = 64 << 20
#: Largest sum of one chunk's results in a results store (one object, built in memory).
MAX_CHUNK_BYTES_STORE = 1 << 30
#: A store failing this long makes the worker not ready (/readyz answers 503 and why).
NOT_READY_AFTER_SECONDS = 10.0
#: Objects written but not yet settled that a worker remembers (so a retried write reuses them).
MAX_REMEMBERED = 10_000
#: Objects of one batch written at once.
WRITE_THREADS = 8

_Key = tuple[str, int, int, int]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _texts(o: Outcome, lo: int) -> list[str | None]:
    """Each result's JSON text; None where its parameter failed."""
    failed = {p[0] for p in o.param_errors}
    values = o.result if o.result is not None else json.loads(o.result_json or "[]")
    texts: list[str | None] = []
    for k, v in enumerate(values):
        texts.append(None if lo + k in failed else compact(v))
    return texts


def capped(o: Outcome, lo: int, *, in_broker: bool) -> tuple[Outcome, list[str | None] | None]:
    """``o`` with every result over the caps replaced by its parameter's error.

    Returns the outcome and its results' JSON texts (None when the broker keeps
    the results and nothing was over: the common case is not encoded twice).
    """
    per_result, per_chunk = (
        (MAX_RESULT_BYTES_BROKER, MAX_CHUNK_BYTES_BROKER)
        if in_broker
        else (MAX_RESULT_BYTES_STORE, MAX_CHUNK_BYTES_STORE)
    )
    if o.status is Status.DEAD:
        return o, None
    if in_broker and o.result_json is not None and len(o.result_json) <= per_result:
        return o, None  # no result can be longer than all of them together
    texts = _texts(o, lo)
    where = "kept in the broker" if in_broker else "in a results store"
    over: list[tuple[int, str]] = []
    total = 0
    for k, text in enumerate(texts):
        if text is None:
            continue
        size = len(text.encode()) if not text.isascii() else len(text)
        if size > per_result:
            over.append((lo + k, f"result is {size:,} bytes of JSON, over the cap of "
                                 f"{_mib(per_result)} for a result {where}"))  # fmt: skip
        elif total + size > per_chunk:
            why = f"the chunk's results pass {_mib(per_chunk)}, the cap of a chunk {where}"
            over.append((lo + k, f"{why}, at this result ({size:,} bytes)"))
        else:
            total += size
            continue
        texts[k] = None
    if not over:
        return o, texts
    errors = tuple(sorted((*o.param_errors, *over), key=lambda p: p[0]))
    result = None
    if o.result is not None:
        result = list(o.result)
        for i, _ in over:
            result[i - lo] = None
    result_json = "[" + ",".join("null" if t is None else t for t in texts) + "]"
    first = errors[0]
    return (
        dataclasses.replace(
            o,
            status=Status.ERRORS,
            param_errors=errors,
            error=f"parameter {first[0]}: {first[1]}",
            result=result,
            result_json=result_json,
        ),
        texts,
    )


class ResultsWriter:
    """Writes the outcomes of a worker's runs to their results stores (one per worker)."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        #: Objects written for deliveries not yet settled: a retried ``persist`` (the
        #: store or the broker failed halfway) reuses them instead of writing again.
        self._written: dict[_Key, ObjectRef] = {}
        self._failing_since: float | None = None
        self._last_error = ""
        self._pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="ttg-store")
        self._lock = threading.Lock()

    @staticmethod
    def _key(d: Delivery) -> _Key:
        return (d.run, d.chunk, d.round, d.attempt)

    def persist(self, items: Sequence[tuple[Delivery, Outcome]]) -> list[tuple[Delivery, Outcome]]:
        """``items`` ready for the ledger: results capped, and those of a store written there.

        Returns once every object is durable; an outcome of a store run comes back
        with ``ref`` set and without its results.

        Raises:
            StoreError: a store failed (retry the call: what was written is reused).
        """
        out: list[tuple[Delivery, Outcome]] = []
        refs: dict[int, ObjectRef] = {}
        writes: list[tuple[int, Delivery, Outcome, list[str | None]]] = []
        for d, given in items:
            in_broker = d.spec.results == BROKER
            o, texts = capped(given, d.lo, in_broker=in_broker)
            written = self._written.get(self._key(d))
            if written is not None:
                refs[len(out)] = written
            elif not in_broker and o.status is not Status.DEAD:
                writes.append((len(out), d, o, texts if texts is not None else _texts(o, d.lo)))
            out.append((d, o))
        try:
            # Several objects at once: each write waits on its fsync (or its upload), not the CPU.
            if len(writes) > 1:
                refs.update(self._pool.map(lambda w: (w[0], self._write(*w[1:])), writes))
            else:
                refs.update((w[0], self._write(*w[1:])) for w in writes)
        except StoreError as e:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            self._last_error = str(e)
            raise
        self._failing_since = None
        return [
            (d, dataclasses.replace(o, result=None, result_json=None, ref=refs[i]))
            if i in refs
            else (d, o)
            for i, (d, o) in enumerate(out)
        ]

    def _write(self, d: Delivery, o: Outcome, texts: list[str | None]) -> ObjectRef:
        store = open_store(d.spec.results)
        meta: dict[str, Any] = {
            "run": d.run, "chunk": d.chunk, "round": d.round, "attempt": d.attempt,
            "worker": self.worker,
        }  # fmt: skip
        data = encode(d.spec, d.chunk, texts, {p[0]: p[1] for p in o.param_errors}, meta)
        name = object_name(d.run, d.chunk, d.round, d.attempt)
        store.put(name, data)
        ref = ObjectRef(name, len(texts), sha256(data).hexdigest())
        with self._lock:
            if len(self._written) >= MAX_REMEMBERED:
                self._written.clear()
            self._written[self._key(d)] = ref
        return ref

    def settled(
        self, items: Sequence[tuple[Delivery, Outcome]], recorded: Sequence[Recorded]
    ) -> None:
        """After the ledger answered: delete the objects it did not count. Never raises.

        An object whose deletion fails stays behind, never counted; ``ttg verify``
        removes it later (a stray).
        """
        for (d, o), r in zip(items, recorded, strict=True):
            self._written.pop(self._key(d), None)
            if o.ref is None or r not in (Recorded.DUPLICATE, Recorded.GONE, Recorded.REFUSED):
                continue
            try:
                open_store(d.spec.results).delete(o.ref.name)
            except StoreError as e:
                log.warning(
                    "cannot delete the object of an outcome not counted (%s): %s",
                    r.value,
                    e,
                    extra={"run": d.run, "chunk": d.chunk, "worker": self.worker},
                )

    @property
    def problem(self) -> str | None:
        """Why the worker is not ready: a store failing for ``NOT_READY_AFTER_SECONDS``."""
        since = self._failing_since
        if since is None or time.monotonic() - since < NOT_READY_AFTER_SECONDS:
            return None
        return f"results store failing for {time.monotonic() - since:.0f} s: {self._last_error}"
