"""What ``ttg verify`` adds for a run with a results store.

Every counted chunk's object is fetched and checked against the ledger (it
exists, its sha256 and rows match; a deleted or altered one is a problem naming
the chunk), its results go through the same checks as a broker run's (coverage,
the closed form), strays are swept (``ttg.store.reader``), and the leaves of the
run's certificate are gathered on the way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ttg.run import Outcome, RunSpec
from ttg.store.certificate import Leaves
from ttg.store.reader import CountedObjects, Tally, resolved, store_of


class StoreCheck:
    """Wraps the ledger a verify reads; a pass-through for a run whose results are in the broker."""

    def __init__(self, spec: RunSpec, *, certificate: bool = False) -> None:
        self.spec = spec
        self.store = store_of(spec)
        self.problems: list[str] = []
        self.checked = 0
        self.tally = Tally()
        self._counted = CountedObjects(spec) if self.store is not None else None
        self.leaves = Leaves(spec.total_chunks) if certificate else None

    def outcomes(self, outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
        """``outcomes`` with their results fetched and checked (raises ``StoreError``)."""
        if self._counted is None:
            yield from outcomes
            return
        seen = self._seen(self._counted.see(outcomes))
        yield from resolved(self.spec, seen, problems=self.problems)

    def _seen(self, outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
        for o in outcomes:
            if o.ref is not None:
                self.checked += 1
            if self.leaves is not None:
                self.leaves.see(o)
            yield o

    def finish(self) -> list[str]:
        """Sweep the run's strays once the ledger is read; the problems the store check found."""
        if self._counted is not None and self.store is not None:
            self.tally = self._counted.sweep(self.store)
        return self.problems

    def fields(self) -> dict[str, Any]:
        """The fields verify's report gains (docs/contract.md)."""
        return {
            "results": self.spec.results,
            "objects_checked": self.checked,
            "strays_removed": self.tally.strays_removed,
            "pending_objects": self.tally.pending,
            "foreign_objects": self.tally.foreign,
        }
