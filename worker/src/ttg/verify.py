"""Status and verification reports, the same for every backend, in one vocabulary.

The vocabulary (docs/contract.md), the same in text, ``--json`` and the report:

- chunks: ``total_chunks``; ``finished`` (with an outcome) = ``done`` (every
  parameter ok) + ``errors`` (some parameters failed, the rest kept) + ``dead``
  (no results);
- parameters: ``total_params``; ``done_params`` ok, ``param_errors`` failed
  (their compute raised), ``params_dead`` (in dead chunks);
- events: ``redelivered``, ``failed`` (failed attempts: each retry, and each
  outcome with failures), ``duplicates``, ``malformed``.

``verify`` does not trust counters: it reads the whole ledger and checks it
against the run's spec (every chunk 0..n-1 has exactly one counted outcome,
each covering its whole index range), then checks the counters against the
ledger, then, for the default compute, the sum of all results against the
closed form. "Exactly once holds" (``verified``) is kept apart from "every
parameter succeeded": a run that finished with failures is exactly-once all
the same, and is a success (``ok``) only when the caller allows failures.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ttg import compute, failures, provenance
from ttg import space as spaces
from ttg.broker import CANNOT_RUN, Broker
from ttg.decode import Problems
from ttg.rate import RateMeter
from ttg.run import HANG_FACTOR, InFlight, Outcome, Progress, RunSpec, Status
from ttg.tables import JSON

if TYPE_CHECKING:
    # Imported by ``verify`` when it runs: ``ttg status`` needs this module, not the store check.
    from ttg.store.check import StoreCheck

#: Chunk ids listed in a report when some are missing.
MISSING_SAMPLE = 20
#: Error groups a verify report lists (the most frequent first).
ERROR_GROUPS = 20


@dataclass
class RecentFailure:
    """A recent error, with the parameter it names (its grid point, its table row)."""

    error: str
    index: int | None = None
    param: JSON = None


@dataclass
class StatusReport:
    """A run's progress now: what ``ttg status --json`` prints (docs/contract.md)."""

    ts: float
    run: str
    state: str
    control: str
    total_chunks: int
    total_params: int
    seeded_chunks: int
    #: Chunks with an outcome: done + errors + dead.
    finished: int
    #: Chunks whose every parameter is ok.
    done: int
    #: Parameters ok.
    done_params: int
    #: Chunks recorded dead (no results).
    dead: int
    #: Chunks holding parameter errors (their other parameters are ok).
    errors: int
    #: Parameters whose compute raised.
    param_errors: int
    #: Parameters in dead chunks (known once the run is complete; verify counts them always).
    params_dead: int | None
    duplicates: int
    redelivered: int
    #: Failed attempts (events): retries, and outcomes holding failures.
    failed: int
    malformed: int
    queue_depth: int
    workers: int | None
    in_flight: list[InFlight]
    recent_errors: list[str]
    recent_failures: list[RecentFailure]
    warnings: list[str]
    progress: float
    rate_chunks_s: float | None
    eta_s: float | None
    seeded_at: float | None
    complete: bool
    ok: bool
    #: Records of the run that could not be read (each one line), newest reading first.
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, stable names."""
        # asdict deep-copies value by value; ``in_flight`` (hundreds of flat records in a
        # busy run, on every ``status --watch`` line) is converted directly.
        out = asdict(replace(self, in_flight=[]))
        out["in_flight"] = [f.to_dict() for f in self.in_flight]
        return out

    def __getitem__(self, key: str) -> Any:
        """``report["done"]``: the JSON object's field, for code written against the dict
        reports of earlier versions (attributes are the typed way)."""
        return self.to_dict()[key]


@dataclass
class VerifyReport(StatusReport):
    """What ``ttg verify --json`` prints: the status, and what reading the ledger found."""

    missing: int = 0
    missing_sample: list[int] = field(default_factory=list)
    closed_form: str = "not-applicable"
    #: Parameters without a result: failed + dead (None until every chunk has an outcome).
    failed_params: int | None = None
    #: Exactly once holds: every chunk has one counted outcome and nothing disagrees.
    verified: bool = False
    #: Failures grouped by exception type and message, most frequent first.
    error_groups: list[failures.ErrorGroup] = field(default_factory=list)
    #: Distinct errors beyond those listed in ``error_groups``.
    more_error_groups: int = 0
    #: Where the run keeps its results (``broker``, or a results store's URL).
    results: str = "broker"
    #: Counted chunks' objects read and checked (a results store).
    objects_checked: int = 0
    #: Objects that can never count, removed (``ttg.store.reader``).
    strays_removed: int = 0
    #: Objects of chunks not counted yet, left alone.
    pending_objects: int = 0
    #: Files in the run's folder TTG did not write, left alone.
    foreign_objects: int = 0
    #: The certificate written (``verify --certificate``).
    certificate: str | None = None
    #: Parameters taken from other runs (``ttg seed --reuse``), their sources checked.
    reused_params: int = 0


def _recent(p: Progress, spec: RunSpec | None) -> list[RecentFailure]:
    out = []
    seen = set()
    for text in p.recent_errors:
        index, message = failures.split(text)
        if message in seen:
            continue
        seen.add(message)
        param = None
        if spec is not None and index is not None and 0 <= index < spec.total_params:
            param = spec.parameter_space.value(index)
        out.append(RecentFailure(message, index, param))
    return out


def status_report(
    p: Progress,
    rate: float | None = None,
    spec: RunSpec | None = None,
    meter: RateMeter | None = None,
) -> StatusReport:
    """The status of a run from its counters; ``spec`` names failing parameters by value.

    With a ``meter`` fed by earlier readings, the rate and ETA are its (windowed,
    so long chunks do not read as a collapsing rate); the ETA is unknown (None)
    while no worker serves the run.
    """
    remaining = p.total_chunks - p.finished
    eta = None
    if meter is not None:
        rate = meter.update(p.finished)
        eta = meter.eta(remaining) if p.workers != 0 or remaining == 0 else None
        eta = None if eta is None else round(eta, 1)
    elif rate:
        eta = round(remaining / rate, 1)
    elif remaining == 0:
        eta = 0.0
    warnings = []
    if p.workers == 0 and p.state in ("seeding", "running"):
        warnings.append(f"no live worker: {remaining} chunks wait")
    declined = sorted({e for e in p.recent_errors if CANNOT_RUN in e})
    if declined and remaining:
        warnings += [f"{e}; its chunks wait for a worker that can" for e in declined[:3]]
    for f in p.in_flight:
        if f.likely_hang:
            warnings.append(
                f"parameter {f.param} (chunk {f.chunk}, worker {f.worker}) has run "
                f"{f.param_s:.0f} s, over {HANG_FACTOR}x the run's median parameter time "
                f"({f.median_s:.3g} s): a likely hang (ttg seed --param-timeout bounds it)"
            )
    if p.malformed:
        warnings.append(f"{p.malformed} task messages could not be read (see recent_errors)")
    if p.problems:
        warnings.append("some of the run's records could not be read (see problems)")
    return StatusReport(
        ts=round(time.time(), 3),
        run=p.run,
        state=p.state,
        control=p.control,
        total_chunks=p.total_chunks,
        total_params=p.total_params,
        seeded_chunks=p.seeded_chunks,
        finished=p.finished,
        done=p.done,
        done_params=p.done_params,
        dead=p.dead,
        errors=p.errors,
        param_errors=p.param_errors,
        params_dead=(p.total_params - p.done_params - p.param_errors if p.complete else None),
        duplicates=p.duplicates,
        redelivered=p.redelivered,
        failed=p.failed,
        malformed=p.malformed,
        queue_depth=p.queue_depth,
        workers=p.workers,
        in_flight=list(p.in_flight),
        recent_errors=list(p.recent_errors),
        recent_failures=_recent(p, spec),
        warnings=warnings,
        problems=list(p.problems),
        progress=round(p.ratio, 4),
        rate_chunks_s=round(rate, 2) if rate is not None else None,
        eta_s=eta,
        seeded_at=p.seeded_at,
        complete=p.complete,
        ok=p.complete and not p.failures,
    )


@dataclass
class _Tally:
    """What one pass over a ledger found."""

    seen: bytearray
    problems: list[str] = field(default_factory=list)
    ok_chunks: int = 0
    error_chunks: int = 0
    dead_chunks: int = 0
    ok_params: int = 0
    param_errors: int = 0
    dead_params: int = 0
    result_sum: int = 0
    summable: bool = True
    groups: failures.ErrorGroups = field(default_factory=failures.ErrorGroups)


def _scan(spec: RunSpec, outcomes: Iterable[Outcome]) -> _Tally:
    total = spec.total_chunks
    t = _Tally(seen=bytearray(total))
    for o in outcomes:
        if not 0 <= o.chunk < total:
            t.problems.append(f"ledger has chunk {o.chunk}, outside 0..{total - 1}")
            continue
        if t.seen[o.chunk]:
            t.problems.append(f"chunk {o.chunk} is counted twice")
            continue
        t.seen[o.chunk] = 1
        lo, hi = spec.bounds(o.chunk)
        t.groups.add_chunk(str(o.status), o.error, o.param_errors, hi - lo, o.chunk)
        if o.status is Status.DEAD:
            t.dead_chunks += 1
            t.dead_params += hi - lo
            continue
        if o.status is Status.ERRORS:
            t.error_chunks += 1
        else:
            t.ok_chunks += 1
        t.param_errors += len(o.param_errors)
        t.ok_params += o.params - len(o.param_errors)
        if o.result is None and o.ref is not None:
            t.summable = False  # its object is missing or altered: the store check said so
        elif o.params != hi - lo or not isinstance(o.result, list) or len(o.result) != hi - lo:
            t.problems.append(f"chunk {o.chunk} result covers {o.params} of {hi - lo} parameters")
        elif o.status is Status.OK and o.param_errors:
            t.problems.append(f"chunk {o.chunk} is ok but lists parameter errors")
        elif t.summable and not o.param_errors:
            try:
                t.result_sum += sum(o.result)
            except TypeError:
                t.summable = False
    return t


def _groups(spec: RunSpec, t: _Tally) -> list[failures.ErrorGroup]:
    """The most frequent error groups, each example named by its parameter's value."""
    top = t.groups.top(ERROR_GROUPS)
    space = spec.parameter_space
    for g in top:
        ex = g.example
        if ex is not None and ex.index is None and ex.chunk is not None:
            ex.index = spec.bounds(ex.chunk)[0]  # a dead chunk: its first parameter
        if ex is not None and ex.index is not None and 0 <= ex.index < spec.total_params:
            ex.param = space.value(ex.index)
    return top


def verify(
    broker: Broker, run: str, *, allow_failed: bool = False, check: StoreCheck | None = None
) -> VerifyReport:
    """Check invariants 1 and 2 (and the closed form) for ``run`` from its ledger.

    ``verified`` is true when every chunk has exactly one counted outcome, the
    counters agree with the ledger and the closed form matches where there is
    one; ``ok`` when verified and — unless ``allow_failed`` — no chunk is dead
    or has parameter errors. A run with a results store has every counted object
    checked too (``check``: pass one to gather a certificate's leaves).
    """
    spec = broker.spec(run)
    progress = broker.progress(run)
    from ttg.store.check import StoreCheck  # noqa: PLC0415 - see the imports above

    check = check or StoreCheck(spec)
    unreadable = Problems()
    t = _scan(spec, check.outcomes(broker.ledger(run, problems=unreadable)))
    # Records that cannot be read are problems: the run is not what its ledger says.
    problems = [f"unreadable: {line}" for line in (*progress.problems, *unreadable.lines())]
    problems += t.problems + check.finish()
    missing = [c for c in range(spec.total_chunks) if not t.seen[c]]
    if (progress.done, progress.errors, progress.dead) != (
        t.ok_chunks,
        t.error_chunks,
        t.dead_chunks,
    ):
        problems.append(
            f"counters say done={progress.done} errors={progress.errors} dead={progress.dead}, "
            f"ledger holds {t.ok_chunks} ok, {t.error_chunks} with errors, {t.dead_chunks} dead"
        )
    if progress.done_params != t.ok_params:
        problems.append(
            f"counters say {progress.done_params} parameters done, ledger holds {t.ok_params}"
        )
    complete = not missing
    chunk_failures = t.dead_chunks + t.error_chunks
    if complete and chunk_failures == 0 and t.ok_params != spec.total_params:
        problems.append(f"results cover {t.ok_params} parameters, the run has {spec.total_params}")
    expected = compute.closed_form_total(spaces.base_of(spec.parameter_space), spec.compute)
    closed_form = "not-applicable"
    if expected is not None and complete and chunk_failures == 0 and t.summable:
        closed_form = "match" if t.result_sum == expected else "mismatch"
        if closed_form == "mismatch":
            problems.append(f"sum of results {t.result_sum} != closed form {expected}")
    status = status_report(progress, spec=spec)
    prov = provenance.Provenance()
    if spec.reuse is not None:
        prov = provenance.check(broker, broker.ledger(run))
        problems += prov.problems
        status.warnings = [*status.warnings, *prov.warnings]
    verified = complete and not problems
    return VerifyReport(
        **{
            **vars(status),
            "complete": complete,
            "params_dead": t.dead_params,
            "ok": verified and (allow_failed or chunk_failures == 0),
            "problems": problems,
        },
        missing=len(missing),
        missing_sample=missing[:MISSING_SAMPLE],
        failed_params=spec.total_params - t.ok_params if complete else None,
        closed_form=closed_form,
        verified=verified,
        error_groups=_groups(spec, t),
        more_error_groups=max(0, len(t.groups) - ERROR_GROUPS),
        reused_params=prov.reused_params,
        **check.fields(),
    )
