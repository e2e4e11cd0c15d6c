"""The readers' side of the results store: fetch, check, sweep and delete a run's objects.

``resolved`` turns the outcomes a ledger gives (each holding a reference to its
object) back into outcomes with their results, one object at a time (memory
stays that of one chunk): ``ttg results``, ``ttg verify`` and ``ttg report`` read
a run through it and otherwise work as for a broker run. Every object is checked
against what the ledger recorded (its sha256 and its rows, one per parameter of
the chunk, in index order); one that is missing or altered is named with its
chunk.

``sweep`` removes strays: objects of a chunk whose counted outcome is another
object (a duplicate whose worker died before deleting it, an outcome replaced by
``ttg retry``, or on RabbitMQ, where the ledger decides which outcome counts
when it is read). Such an object can never be counted, so removing it is safe
while the run goes on; objects of chunks without a counted outcome yet are left
alone (a worker may be about to record them). After ``ttg verify`` the run's
folder holds each parameter exactly once.
"""

from __future__ import annotations

import dataclasses
import json
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import sha256

from ttg.errors import StoreError
from ttg.run import Outcome, RunSpec
from ttg.store import BROKER, ObjectNotFound, ObjectStore, open_store
from ttg.store.chunks import OBJECT_NAME, BadObject, chunk_of, decode, run_prefix


class DamagedResults(StoreError):
    """A counted chunk's object is missing or is not what the ledger recorded."""

    #: "The answer is no" (like a failed verify): retrying will not bring it back.
    exit_code = 1


def store_of(spec: RunSpec) -> ObjectStore | None:
    """The run's results store, or None when its results are in the broker."""
    return None if spec.results == BROKER else open_store(spec.results)


def _token(name: str) -> int:
    m = OBJECT_NAME.fullmatch(name.rsplit("/", 1)[-1].removeprefix("chunk-"))
    return int(m["token"], 16) + 2 if m else 0


def _is_object_of(name: str, run: str, chunk: int) -> bool:
    folder, _, base = name.rpartition("/")
    return folder + "/" == run_prefix(run) and base.startswith("chunk-") and chunk_of(base) == chunk


def fetch(store: ObjectStore, spec: RunSpec, o: Outcome) -> tuple[str, bytes]:
    """The chunk's results as a JSON array, checked against the ledger; and the object's bytes.

    Raises:
        DamagedResults: the object is missing, or its digest, rows or indexes differ.
        StoreError: the store failed.
    """
    if o.ref is None:
        raise ValueError(f"chunk {o.chunk} has no object")
    if not _is_object_of(o.ref.name, spec.run, o.chunk):
        # The ledger is untrusted input: never follow a name out of the chunk's own objects.
        raise DamagedResults(
            f"chunk {o.chunk}: the ledger names {o.ref.name[:200]!r}, not an object of it"
        )
    where = f"chunk {o.chunk}: object {store.location(o.ref.name)}"
    try:
        data = store.get(o.ref.name)
    except ObjectNotFound:
        raise DamagedResults(f"{where} is missing") from None
    if sha256(data).hexdigest() != o.ref.sha256:
        raise DamagedResults(f"{where} was altered: its sha256 is not the ledger's")
    lo, hi = spec.bounds(o.chunk)
    try:
        if o.ref.rows != hi - lo:
            raise BadObject(f"the ledger records {o.ref.rows} rows, the chunk has {hi - lo}")
        texts = decode(spec, o.chunk, data)
    except BadObject as e:
        raise DamagedResults(f"{where} {e}") from None
    return "[" + ",".join("null" if t is None else t for t in texts) + "]", data


def resolved(
    spec: RunSpec, outcomes: Iterable[Outcome], *, problems: list[str] | None = None
) -> Iterator[Outcome]:
    """``outcomes`` with their results read from the run's store (as they are for a broker run).

    Args:
        spec: the run's spec (where its store is).
        outcomes: its counted outcomes, as the ledger gives them.
        problems: where a missing or altered object is reported (its outcome then
            comes without results); None: such an object raises ``DamagedResults``.

    Raises:
        DamagedResults: (``problems`` None) an object is missing or altered.
        StoreError: the store failed.
    """
    store = store_of(spec)
    for o in outcomes:
        if store is None or o.ref is None:
            yield o
            continue
        try:
            text, _ = fetch(store, spec, o)
        except DamagedResults as e:
            if problems is None:
                raise
            problems.append(str(e))
            yield o
            continue
        yield dataclasses.replace(o, result=json.loads(text), result_json=text)


@dataclass
class Tally:
    """What ``CountedObjects`` saw and what ``sweep`` did with the rest of the folder."""

    #: Objects of chunks that have no counted outcome yet (left alone).
    pending: int = 0
    #: Objects that can never be counted, removed.
    strays_removed: int = 0
    #: Files in the run's folder that TTG did not write (left alone, reported).
    foreign: int = 0


class CountedObjects:
    """Which object each chunk's counted outcome names: 8 bytes per chunk (invariant 10)."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        #: Per chunk: 0 no counted outcome; 1 counted without an object (dead); else token + 2.
        self._tokens = array("Q", bytes(8 * spec.total_chunks))

    def see(self, outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
        """Pass ``outcomes`` through, noting each counted chunk's object."""
        for o in outcomes:
            if 0 <= o.chunk < self.spec.total_chunks:
                token = _token(o.ref.name) if o.ref is not None else 0
                self._tokens[o.chunk] = token or 1
            yield o

    def sweep(self, store: ObjectStore) -> Tally:
        """Remove the run's objects that can never be counted; count the rest.

        Raises:
            StoreError: the store failed.
        """
        t = Tally()
        for name, _ in store.list(run_prefix(self.spec.run)):
            base = name.rsplit("/", 1)[-1]
            # A file store's write in progress, or left by a worker killed mid-write
            # (".chunk-...parquet.<hex>.tmp"): a stray as soon as its chunk is counted.
            temp = base.startswith(".") and base.endswith(".tmp")
            chunk = chunk_of(base[1:].rsplit(".", 2)[0] if temp else base)
            if chunk is None or not 0 <= chunk < self.spec.total_chunks:
                t.foreign += 1
                continue
            counted = self._tokens[chunk]
            if counted == 0:
                t.pending += 1
            elif temp or counted != _token(name):
                store.delete(name)
                t.strays_removed += 1
        return t


def delete_run(spec: RunSpec) -> bool:
    """Remove every object of the run from its store. False when it keeps results in the broker.

    Raises:
        StoreError: the store failed (nothing is forgotten: run it again).
    """
    store = store_of(spec)
    if store is None:
        return False
    store.delete_folder(run_prefix(spec.run))
    return True
