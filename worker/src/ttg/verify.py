"""Status and verification reports, the same for every backend.

``verify`` does not trust counters: it reads the whole ledger and checks it
against the run's spec (every chunk 0..n-1 has exactly one counted outcome,
each covering its whole index range), then checks the counters against the
ledger, then, for the default compute, the sum of all results against the
closed form. A run that finished with failures (dead chunks, parameter
errors) is reported as such and is not a success unless the caller allows it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ttg import compute
from ttg.broker import Broker
from ttg.decode import Problems
from ttg.run import Outcome, Progress, RunSpec, Status
from ttg.store.check import StoreCheck

#: Chunk ids listed in a report when some are missing.
MISSING_SAMPLE = 20


def status_report(p: Progress, rate: float | None = None) -> dict[str, Any]:
    """The fields every ``--json`` report shares (docs/contract.md)."""
    remaining = p.total_chunks - p.finished
    eta = None
    if rate:
        eta = round(remaining / rate, 1)
    elif remaining == 0:
        eta = 0.0
    warnings = []
    if p.workers == 0 and p.state in ("seeding", "running"):
        warnings.append(f"no live worker: {remaining} chunks wait")
    if p.malformed:
        warnings.append(f"{p.malformed} task messages could not be read (see recent_errors)")
    if p.problems:
        warnings.append("some of the run's records could not be read (see problems)")
    return {
        "ts": round(time.time(), 3),
        "run": p.run,
        "state": p.state,
        "control": p.control,
        "total_chunks": p.total_chunks,
        "total_params": p.total_params,
        "seeded_chunks": p.seeded_chunks,
        "done": p.done,
        "done_params": p.done_params,
        "dead": p.dead,
        "errors": p.errors,
        "param_errors": p.param_errors,
        "duplicates": p.duplicates,
        "redelivered": p.redelivered,
        "failed": p.failed,
        "malformed": p.malformed,
        "queue_depth": p.queue_depth,
        "workers": p.workers,
        "in_flight": [asdict(f) for f in p.in_flight],
        "recent_errors": p.recent_errors,
        "warnings": warnings,
        "problems": list(p.problems),
        "progress": round(p.ratio, 4),
        "rate_chunks_s": round(rate, 2) if rate is not None else None,
        "eta_s": eta,
        "seeded_at": p.seeded_at,
        "complete": p.complete,
        "ok": p.complete and not p.failures,
    }


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
    result_sum: int = 0
    summable: bool = True


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
        if o.status is Status.DEAD:
            t.dead_chunks += 1
            continue
        lo, hi = spec.bounds(o.chunk)
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


def verify(
    broker: Broker, run: str, *, allow_failed: bool = False, check: StoreCheck | None = None
) -> dict[str, Any]:
    """Check invariants 1 and 2 (and the closed form) for ``run`` from its ledger.

    ``ok`` is true only when every chunk has exactly one counted outcome, the
    counters agree with the ledger, the closed form matches where there is
    one, and — unless ``allow_failed`` — no chunk is dead or has parameter errors.
    A run with a results store has every counted object checked too (``check``:
    pass one to gather a certificate's leaves).
    """
    spec = broker.spec(run)
    progress = broker.progress(run)
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
    failures = t.dead_chunks + t.error_chunks
    if complete and failures == 0 and t.ok_params != spec.total_params:
        problems.append(f"results cover {t.ok_params} parameters, the run has {spec.total_params}")
    expected = compute.closed_form_total(spec.parameter_space, spec.compute)
    closed_form = "not-applicable"
    if expected is not None and complete and failures == 0 and t.summable:
        closed_form = "match" if t.result_sum == expected else "mismatch"
        if closed_form == "mismatch":
            problems.append(f"sum of results {t.result_sum} != closed form {expected}")
    report = status_report(progress)
    failed_params = spec.total_params - t.ok_params if complete else None
    report.update(
        complete=complete,
        missing=len(missing),
        missing_sample=missing[:MISSING_SAMPLE],
        failed_params=failed_params,
        closed_form=closed_form,
        problems=problems,
        verified=complete and not problems,
        ok=complete and not problems and (allow_failed or failures == 0),
    )
    report.update(check.fields())
    return report
