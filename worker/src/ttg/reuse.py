"""Sweeps that grow: match a new run's parameters against earlier runs' ``ok`` results.

A parameter is matched by value, never by index or chunk: each value's canonical
JSON (sorted keys, floats as ``repr``, so 0.1 from a range and from a linspace are
one value when equal) is hashed (blake2b, 16 bytes) and looked up in an index of
the reused runs' ``ok`` parameters. The index lives in a temporary SQLite file,
built once per seeding: flat memory at 10^6 parameters and more, a join instead
of 10^6 lookups from Python. The first reused run named that holds a value wins.

What is left to compute becomes the run's ``reuse.compute`` ranges (its spec); the
reused parameters are written at seeding as the outcomes of "reused chunks", each
parameter carrying its source (run, chunk, attempt, worker, time): see
docs/contract.md, "Sweeps that grow".
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sqlite3
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttg import space as spaces
from ttg.broker import Broker
from ttg.errors import RunNotFound, TTGError, UsageError
from ttg.jsontext import compact
from ttg.reusefields import MAX_REUSED_RUNS, Source
from ttg.run import Outcome, RunSpec, Status
from ttg.store.reader import resolved
from ttg.verify import verify

#: Rows inserted per SQLite call.
BATCH = 10_000
#: The worker name of a reused chunk's outcome (its parameters' own are in ``src``).
REUSED = "reused"


#: One encoder for every value (``json.dumps`` with options builds one per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def canonical(value: Any) -> bytes:
    """The JSON text two equal parameter values share, whatever produced them."""
    if type(value) is int:
        return str(value).encode()  # what the encoder writes, without its cost
    return _CANONICAL.encode(value).encode()


def key(value: Any) -> bytes:
    """A parameter value's 16-byte hash: what matching compares."""
    return hashlib.blake2b(canonical(value), digest_size=16).digest()


def halves(value: Any) -> tuple[int, int]:
    """``key(value)`` as two signed 64-bit integers (how SQLite keeps them best)."""
    a, b = _HALVES.unpack(key(value))
    return a, b


_HALVES = struct.Struct("<qq")


def _result_text(result: Any) -> str:
    return str(result) if type(result) is int else compact(result)


class Match:
    """The parameters of ``space`` that ``sources`` hold an ``ok`` result for.

    Args:
        space: The new run's space, in its own order.
        sources: Each reused run's spec and counted outcomes with their results
            (``ttg.store.reader.resolved``), in the order the runs were named.
    """

    def __init__(
        self, space: spaces.AnySpace, sources: Iterable[tuple[RunSpec, Iterable[Outcome]]]
    ):
        self._tmp = tempfile.TemporaryDirectory(prefix="ttg-reuse-")
        self.db = sqlite3.connect(Path(self._tmp.name) / "match.db")
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-32768;"
            # One row per source outcome; one per reusable value, first source first.
            "CREATE TABLE outs (o INTEGER PRIMARY KEY, run TEXT, chunk INTEGER,"
            " attempt INTEGER, worker TEXT, t REAL);"
            # A value's 16-byte hash as two 64-bit integers: the first is the rowid (SQLite's
            # fastest key); the second is compared on every match. A value whose first half
            # collides with another's is not indexed: computed again, never mistaken.
            "CREATE TABLE src (h INTEGER PRIMARY KEY, h2 INTEGER, o INTEGER, result TEXT);"
            "CREATE TABLE want (i INTEGER PRIMARY KEY, h INTEGER, h2 INTEGER);"
        )
        self._outs: dict[tuple[str, int, int, str, float], int] = {}
        #: Each source run's ``ok`` parameters seen.
        self.offered: dict[str, int] = {}
        #: Seconds per parameter of each chunk the reused runs computed (not reused).
        self.durations: list[float] = []
        for spec, outcomes in sources:
            self.offered[spec.run] = self._index(spec, outcomes)
        self._batched(
            "INSERT INTO want VALUES (?, ?, ?)",
            ((i, *halves(v)) for i, v in enumerate(spaces.base_of(space).values(0, space.size))),
        )
        self.size = space.size
        self.compute: list[list[int]] = []
        self.reused = 0
        for (i,) in self.db.execute(
            "SELECT w.i FROM want w WHERE NOT EXISTS "
            "(SELECT 1 FROM src s WHERE s.h = w.h AND s.h2 = w.h2) "
            "ORDER BY w.i"
        ):
            if self.compute and self.compute[-1][1] == i:
                self.compute[-1][1] = i + 1
            else:
                self.compute.append([i, i + 1])
        self.reused = self.size - sum(hi - lo for lo, hi in self.compute)

    def _batched(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH:
                self.db.executemany(sql, batch)
                batch.clear()
        self.db.executemany(sql, batch)

    def _index(self, spec: RunSpec, outcomes: Iterable[Outcome]) -> int:
        space, n = spec.parameter_space, 0

        def rows() -> Iterator[tuple[Any, ...]]:
            nonlocal n
            for o in outcomes:
                if o.status is Status.DEAD or not isinstance(o.result, list):
                    continue
                if not o.src and o.started_at is not None and o.params:
                    self.durations.append(max(0.0, o.finished_at - o.started_at) / o.params)
                lo, hi = spec.bounds(o.chunk)
                failed = {int(e[0]) for e in o.param_errors}
                srcs = o.sources()
                for p, value, result, src in zip(
                    range(lo, hi), space.values(lo, hi), o.result, srcs, strict=False
                ):
                    if p in failed:
                        continue
                    n += 1
                    # A result reused from a reused run keeps its first source.
                    who = (
                        src[1:] if src else (spec.run, o.chunk, o.attempt, o.worker, o.finished_at)
                    )
                    ref = self._outs.setdefault(who, len(self._outs))
                    yield (*halves(value), ref, _result_text(result))

        self._batched("INSERT OR IGNORE INTO src VALUES (?, ?, ?, ?)", rows())
        self.db.executemany(
            "INSERT OR IGNORE INTO outs VALUES (?, ?, ?, ?, ?, ?)",
            ((ref, *who) for who, ref in self._outs.items()),
        )
        return n

    def outcomes(self, spec: RunSpec, start: int) -> Iterator[Outcome]:
        """The reused chunks' outcomes of ``spec`` (seeded from this match), from chunk ``start``.

        Chunks ``spec.task_chunks ..`` hold the reused parameters in index order.
        """
        first = max(start, spec.task_chunks)
        lo = spec.bounds(first)[0] - spec.computed_params if first < spec.total_chunks else 0
        rows = self.db.execute(
            "SELECT o.run, o.chunk, o.attempt, o.worker, o.t, s.result FROM want w "
            "JOIN src s ON s.h = w.h AND s.h2 = w.h2 JOIN outs o ON o.o = s.o "
            "ORDER BY w.i LIMIT -1 OFFSET ?",
            (lo,),
        )
        now = round(time.time(), 3)
        for chunk in range(first, spec.total_chunks):
            a, b = spec.bounds(chunk)
            texts: list[str] = []
            src: list[Source] = []
            for run, c, attempt, worker, t, text in rows.fetchmany(b - a):
                texts.append(text)
                if src and src[-1][1:] == (run, c, attempt, worker, t):
                    src[-1] = (src[-1][0] + 1, *src[-1][1:])
                else:
                    src.append((1, run, c, attempt, worker, t))
            body = "[" + ",".join(texts) + "]"
            yield Outcome(
                chunk, Status.OK, b - a, REUSED, 0, now, result=json.loads(body),
                started_at=now, result_json=body, src=tuple(src),
            )  # fmt: skip

    def close(self) -> None:
        self.db.close()
        self._tmp.cleanup()

    def __enter__(self) -> Match:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def plan(
    broker: Broker,
    spec: RunSpec,
    runs: Sequence[str],
    *,
    partial: bool = False,
    any_version: bool = False,
    warnings: list[str] | None = None,
) -> tuple[RunSpec, Match | None]:
    """``spec`` made to reuse ``runs``' results, and the match that seeds its reused chunks.

    A run already seeded this way is taken as stored (None: nothing to match): seeding
    it again is a no-op, whatever became of the runs it reused. A run whose compute is
    not this one's (``ttg.identity``) gives nothing, said in ``warnings``, unless
    ``any_version``.

    Raises:
        UsageError: a run to reuse does not exist, is this run, computed something
            else, or is not complete and verified (unless ``partial``); or this run
            keeps its results in a results store (not supported yet).
    """
    if spec.results != "broker":
        raise UsageError("--reuse: a run with a results store cannot reuse results yet")
    if spec.run in runs:
        raise UsageError(f"run {spec.run} cannot reuse itself")
    if len(set(runs)) != len(runs) or not 1 <= len(runs) <= MAX_REUSED_RUNS:
        raise UsageError(f"--reuse names 1 to {MAX_REUSED_RUNS} distinct runs")
    warnings = [] if warnings is None else warnings
    with contextlib.suppress(RunNotFound):
        stored = broker.spec(spec.run)
        same = stored.reuse is not None and stored.reuse.get("from") == list(runs)
        if same and broker.progress(spec.run).seeded_chunks >= stored.total_chunks:
            return stored, None
    sources = []
    for run in runs:
        try:
            theirs = broker.spec(run)
        except RunNotFound:
            raise UsageError(f"--reuse {run}: no such run") from None
        if theirs.identity != spec.identity and not any_version:
            warnings.append(
                f"nothing reused from run {run}: it computed "
                f"{theirs.identity or theirs.compute + ' (unversioned)'}, this run "
                f"{spec.identity}, not the same compute (--reuse-any-version takes it anyway)"
            )
            continue
        if not partial:
            v = verify(broker, run)
            if not (v.complete and v.verified):
                raise UsageError(
                    f"--reuse {run}: it is not complete and verified (ttg verify --run {run}); "
                    "--reuse-partial takes whatever ok results it has"
                )
        sources.append((theirs, resolved(theirs, broker.ledger(run))))
    if not sources:
        return spec, None  # nothing to reuse: an ordinary run
    match = Match(spec.parameter_space, sources)
    reuse: dict[str, Any] = {"from": [s.run for s, _ in sources], "compute": match.compute}
    if partial:
        reuse["partial"] = True
    if any_version:
        reuse["any_version"] = True
    return dataclasses.replace(spec, reuse=reuse), match


@dataclass(frozen=True)
class Estimate:
    """What a run will cost, said before it is seeded (``ttg seed --dry-run``)."""

    run: str
    total_params: int
    reused: int
    total_chunks: int
    #: Chunks the workers compute (the rest hold reused results).
    compute_chunks: int
    workers: int
    #: Seconds per parameter in the reused runs' computed chunks (None: nothing to go by).
    param_seconds_median: float | None
    param_seconds_p95: float | None
    warnings: tuple[str, ...] = ()

    @property
    def to_compute(self) -> int:
        return self.total_params - self.reused

    def seconds(self, per_param: float | None) -> float | None:
        """Wall time of the parameters to compute at ``per_param`` each, on ``workers``."""
        return None if per_param is None else per_param * self.to_compute / self.workers

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run, "dry_run": True, "total_params": self.total_params,
            "reused": self.reused, "to_compute": self.to_compute,
            "total_chunks": self.total_chunks, "compute_chunks": self.compute_chunks,
            "workers": self.workers, "param_seconds_median": self.param_seconds_median,
            "param_seconds_p95": self.param_seconds_p95,
            "estimate_s": _round(self.seconds(self.param_seconds_median)),
            "estimate_p95_s": _round(self.seconds(self.param_seconds_p95)),
            "warnings": list(self.warnings),
        }  # fmt: skip


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank), None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def estimate(
    spec: RunSpec, match: Match | None, workers: int, warnings: Sequence[str] = ()
) -> Estimate:
    """The dry run's figures for ``spec`` (as ``plan`` made it) and its ``match``."""
    durations = match.durations if match is not None else []
    return Estimate(
        spec.run, spec.total_params, spec.total_params - spec.computed_params,
        spec.total_chunks, spec.task_chunks, workers, quantile(durations, 0.5),
        quantile(durations, 0.95), tuple(warnings),
    )  # fmt: skip


def reusers(broker: Broker, run: str) -> list[str]:
    """The runs that reuse ``run``'s results (their provenance names it), sorted."""
    out = []
    for other in broker.runs():
        try:
            spec = broker.spec(other)
        except TTGError:
            continue  # unreadable: it says nothing we could trust
        if spec.reuse is not None and run in spec.reuse.get("from", ()):
            out.append(other)
    return out


def refusal(run: str, lose: Sequence[str]) -> str:
    """Why ``run`` is not deleted while ``lose`` reuse its results."""
    return (
        f"run {run} is the source of results reused by {', '.join(lose)}: deleting it "
        "loses their provenance (their results stay); --force deletes it anyway"
    )
