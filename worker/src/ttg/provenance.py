"""Where a reused result came from, checked (``ttg verify`` of a run that reuses results).

Each reused parameter names its source: the run, chunk, attempt, worker and time of
the outcome that computed it (``Outcome.src``). Verification reads the source runs'
ledgers once each and checks that every source outcome is still the one counted
there. A source outcome replaced (``ttg retry`` of that chunk) is a problem: the claim
no longer holds. A source run deleted (``ttg delete --force``) is a warning: the
results are intact in this run's ledger, only their provenance cannot be traced.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ttg.broker import Broker
from ttg.errors import RunDataError, RunNotFound
from ttg.run import Outcome

#: Problems named one by one before the rest are counted.
MAX_LISTED = 5


@dataclass
class Provenance:
    """What checking a run's reused results found."""

    #: Parameters the run took from other runs.
    reused_params: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check(broker: Broker, outcomes: Iterable[Outcome]) -> Provenance:
    """Check the sources of the reused chunks among ``outcomes`` (a run's ledger)."""
    out = Provenance()
    # source run -> its chunk -> {(worker, attempt, time): parameters}: bounded by the
    # source runs' chunks, never by parameters.
    wanted: dict[str, dict[int, dict[tuple[str, int, float], int]]] = defaultdict(dict)
    for o in outcomes:
        for count, run, chunk, attempt, worker, t in o.src:
            who = (worker, attempt, round(t, 3))
            per = wanted[run].setdefault(chunk, {})
            per[who] = per.get(who, 0) + count
            out.reused_params += count
    bad: list[str] = []
    for run, chunks in sorted(wanted.items()):
        params = sum(n for per in chunks.values() for n in per.values())
        try:
            held = {o.chunk: (o.worker, o.attempt, round(o.finished_at, 3)) for o in
                    broker.ledger(run) if o.chunk in chunks}  # fmt: skip
        except RunNotFound:
            out.warnings.append(
                f"run {run}, the source of {params} reused parameters, is gone: "
                "their results are here, their provenance cannot be checked"
            )
            continue
        except RunDataError as e:
            bad.append(f"source run {run} cannot be read: {e}")
            continue
        for chunk, per in sorted(chunks.items()):
            for (worker, attempt, t), n in per.items():
                if held.get(chunk) != (worker, attempt, t):
                    bad.append(
                        f"{n} reused parameters came from run {run} chunk {chunk} (worker "
                        f"{worker}, attempt {attempt}), which that run no longer counts"
                    )
    out.problems = bad[:MAX_LISTED]
    if len(bad) > MAX_LISTED:
        out.problems.append(f"... and {len(bad) - MAX_LISTED} more reused sources that differ")
    return out
