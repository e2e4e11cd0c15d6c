"""The run-spec and ledger fields of runs that reuse results (``ttg.reuse``), checked.

``RunSpec.reuse`` names the runs reused and the index ranges left to compute;
``Outcome.src`` names, for a reused chunk, where each parameter's result came from.
Both are read back from brokers: every field is checked here before it is believed.
"""

from __future__ import annotations

from typing import Any

from ttg import decode
from ttg.decode import DecodeError
from ttg.errors import UsageError
from ttg.limits import MAX_PARAMS, MAX_WORKER_CHARS, RUN_ID, check_run_id

__all__ = ["MAX_IDENTITY_CHARS", "MAX_REUSED_RUNS", "Source", "compute_ranges", "run_of", "sources"]

#: Longest compute identity a spec may hold.
MAX_IDENTITY_CHARS = 600
#: Most reused runs one run may name.
MAX_REUSED_RUNS = 16


def compute_ranges(reuse: Any) -> tuple[tuple[int, int], ...]:
    """The ``compute`` ranges of a spec's ``reuse`` field, checked.

    Raises:
        UsageError: the field is not ``{"from": [RUN, ...], "compute": [[lo, hi], ...]}``.
    """
    if not isinstance(reuse, dict) or set(reuse) - {"from", "compute", "partial", "any_version"}:
        raise UsageError(f"reuse {decode.preview(reuse, 80)}: expected from and compute")
    runs = reuse.get("from")
    if not isinstance(runs, list) or not 1 <= len(runs) <= MAX_REUSED_RUNS:
        raise UsageError(f"reuse names 1 to {MAX_REUSED_RUNS} runs")
    for r in runs:
        check_run_id(r)
    ranges = reuse.get("compute")
    if not isinstance(ranges, list):
        raise UsageError("reuse: compute is not a list of ranges")
    out = []
    for pair in ranges:
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(x) is int for x in pair)):
            raise UsageError(f"reuse: {decode.preview(pair, 40)} is not a range [lo, hi]")
        out.append((pair[0], pair[1]))
    return tuple(out)


#: One reused parameter's source in an outcome's ``src``: a run of ``count`` consecutive
#: parameters of the chunk that came from one outcome: (count, run, chunk, attempt,
#: worker, finished_at).
Source = tuple[int, str, int, int, str, float]


def sources(chunk: int, d: Any) -> tuple[Source, ...]:
    if d is None:
        return ()
    if not isinstance(d, list) or len(d) > MAX_PARAMS:
        raise DecodeError(f"outcome of chunk {chunk}: its sources are not a list")
    out = []
    for s in d:
        if not isinstance(s, list) or len(s) != 6:
            raise DecodeError(f"outcome of chunk {chunk}: a source is not a 6-list")
        out.append((
            decode.as_int(s[0], "a source's count", 1, MAX_PARAMS),
            run_of(s[1]),
            decode.as_int(s[2], "a source's chunk", 0, MAX_PARAMS),
            decode.as_int(s[3], "a source's attempt", 0, MAX_PARAMS),
            decode.as_str(s[4], "a source's worker", MAX_WORKER_CHARS),
            decode.as_float(s[5], "a source's finish time"),
        ))  # fmt: skip
    return tuple(out)


def run_of(v: Any) -> str:
    """A run id read back (``DecodeError`` if it is not one)."""
    if not isinstance(v, str) or not RUN_ID.fullmatch(v):
        raise DecodeError(f"{decode.preview(v, 80)} is not a run id")
    return v
