"""Bounds on what a run may be, and the checks of a run spec's and an outcome's fields.

Everything here is applied to input nobody vouched for: flags at ``ttg seed``,
and specs and ledger entries read back from a broker (DESIGN.md invariant 12).
A bound is one that keeps every reader's memory and every worker's arithmetic
safe, not a judgement on what a sweep should be.
"""

from __future__ import annotations

import re
from typing import Any

from ttg import decode
from ttg import space as spaces
from ttg.decode import DecodeError
from ttg.errors import UsageError

#: A run id names broker keys and queues, and Kubernetes objects in the chart.
RUN_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


#: Most parameters in a run (a signed 64-bit index).
MAX_PARAMS = 2**63 - 1
#: Most chunks in a run: readers keep a byte or a bit per chunk (100 MB at this bound).
MAX_CHUNKS = 10**8
#: Longest simulated cost of a chunk (one hour).
MAX_WORK_MS = 3_600_000
#: Most deliveries of a chunk before it is recorded dead.
MAX_DELIVERIES = 1000
#: Longest stored spec, in bytes of JSON.
MAX_SPEC_BYTES = 8 * 1024 * 1024
#: Deepest nesting in a parameter space's JSON (a grid value nests 4 levels below it).
MAX_SPACE_DEPTH = 36
#: Most features one spec may require.
MAX_REQUIRES = 32


#: Longest worker name read from a ledger.
MAX_WORKER_CHARS = 256
#: Most long-running parameters one worker reports per run (one per concurrency slot).
MAX_LONG_PARAMS = 256
#: Longest error text read from a ledger (the worker writes far less).
MAX_ERROR_CHARS = 20_000
#: Longest traceback of a parameter error (DESIGN.md: at most 2,000 characters are written).
MAX_TRACEBACK_CHARS = 20_000


def check_run_id(run: str) -> str:
    """Return ``run`` if it is a valid run id.

    Raises:
        UsageError: it is not ``[a-z0-9][a-z0-9-]{0,62}``.
    """
    if not isinstance(run, str) or not RUN_ID.fullmatch(run):
        raise UsageError(f"run id {decode.preview(run, 80)} must match [a-z0-9][a-z0-9-]{{0,62}}")
    return run


def check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, got {decode.preview(value, 40)}")
    if not lo <= value <= hi:
        raise UsageError(f"{name} must be in {lo}..{hi}, got {decode.preview(value, 40)}")


def run_named(d: Any) -> str | None:
    """The run a spec says it belongs to, if that is a valid run id (for messages)."""
    run = d.get("run") if isinstance(d, dict) else None
    return run if isinstance(run, str) and RUN_ID.fullmatch(run) else None


def space_of(spec: Any) -> spaces.AnySpace:
    """The parameter space of a spec's ``space``, checked as untrusted input.

    Raises:
        UsageError: it is not a space, or too deep, or too large.
    """
    if not isinstance(spec, dict):
        raise UsageError(f"space must be an object, got {decode.preview(spec, 80)}")
    try:
        decode.check_value(spec, "space", MAX_SPACE_DEPTH)
    except DecodeError as e:
        raise UsageError(str(e)) from None
    if spec.get("kind") == "range":
        for k in ("start", "stop", "step"):
            if k in spec:
                check_int(f"range {k}", spec[k], -MAX_PARAMS, MAX_PARAMS)
    try:
        space = spaces.from_spec(spec)
        size = space.size
    except OverflowError:
        raise UsageError(f"space has more than {MAX_PARAMS} parameters") from None
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"space {decode.preview(spec, 80)}: {type(e).__name__}: {e}") from None
    if size > MAX_PARAMS:
        raise UsageError(f"space has {size} parameters, more than {MAX_PARAMS}")
    return space


def param_errors(v: Any) -> tuple[tuple[int, str] | tuple[int, str, str], ...]:
    """``pe`` of a ledger entry: ``[index, message]`` or ``[index, message, traceback]`` each."""
    if v is None:
        return ()
    if not isinstance(v, list):
        raise DecodeError(f"parameter errors {decode.preview(v, 40)} are not a list")
    out: list[tuple[int, str] | tuple[int, str, str]] = []
    for p in v:
        if not isinstance(p, list) or len(p) not in (2, 3):
            raise DecodeError(f"parameter error {decode.preview(p, 60)} is not [index, message]")
        index = decode.as_int(p[0], "a parameter error's index", 0, MAX_PARAMS)
        message = decode.as_str(p[1], "a parameter error", MAX_ERROR_CHARS)
        if len(p) == 3:
            out.append((index, message, decode.as_str(p[2], "a traceback", MAX_TRACEBACK_CHARS)))
        else:
            out.append((index, message))
    return tuple(out)


#: Kubernetes quantity suffixes, as multipliers of bytes.
_QUANTITY_UNITS = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(|k|M|G|T|Ki|Mi|Gi|Ti)")
#: Smallest memory limit of a compute process (a Python child needs this much to start).
MIN_PARAM_MEMORY = 32 * 2**20
#: Longest time limit of a parameter (a week).
MAX_PARAM_TIMEOUT = 7 * 86400.0


def parse_quantity(text: str) -> int:
    """Bytes of a Kubernetes memory quantity: ``256Mi``, ``2Gi``, ``500M``, ``1.5G``, ``1000000``.

    Raises:
        UsageError: not a quantity, or below ``MIN_PARAM_MEMORY``.
    """
    m = _QUANTITY.fullmatch(text) if isinstance(text, str) and len(text) <= 32 else None
    if m is None:
        raise UsageError(
            f"memory {decode.preview(text, 40)}: expected a quantity such as 256Mi, 2Gi or 500M"
        )
    value = int(float(m.group(1)) * _QUANTITY_UNITS[m.group(2)])
    if value < MIN_PARAM_MEMORY:
        raise UsageError(f"memory {text}: at least 32Mi (a compute process needs that to start)")
    return value
