"""Compute functions: what a worker does with each parameter.

A compute function is named ``module:function``, takes one parameter value and
returns a JSON-serialisable result. The default, ``ttg.compute:square``, is a
deterministic placeholder whose run total has a closed form, so a whole run can
be verified end to end from its ledger alone.

Trust: the broker is the trust boundary. Whoever can publish a run chooses the
function every worker calls, so a worker imports only modules under the
prefixes its operator allows (``TTG_COMPUTE_ALLOW``), and ``ttg seed`` refuses
anything else before it reaches a worker.

Errors: a parameter whose compute raises gets that error recorded in its place;
the chunk's other results are kept. Whether an error is worth retrying is
decided by ``is_permanent``: explicit classes first (``PermanentError``,
``TransientError``), then the function's own ``permanent_errors`` attribute,
then ``PERMANENT_ERRORS``.
"""

from __future__ import annotations

import functools
import importlib
import json
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttg.errors import UsageError
from ttg.space import AnySpace, RangeSpace

#: The compute a run gets when nobody names one.
DEFAULT_COMPUTE = "ttg.compute:square"
#: Module prefixes a worker imports computes from unless its operator allows more.
DEFAULT_ALLOW = ("ttg.compute",)
#: Errors that say the parameter (or the code) is wrong: retrying gives the same answer.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    AttributeError,
    NotImplementedError,
    AssertionError,
)
#: Longest error text kept per parameter (a traceback's last line is what helps).
MAX_ERROR_CHARS = 500

ComputeFn = Callable[[Any], Any]


class PermanentError(Exception):
    """Raise (or subclass) in a compute function: this parameter never computes; no retry."""


class TransientError(Exception):
    """Raise (or subclass) in a compute function: worth retrying later (a flaky resource)."""


def square(value: Any) -> int:
    """The default compute: ``x*x`` for an integer, a stable 32-bit digest otherwise.

    Deterministic across processes and machines, so any two workers computing
    the same chunk produce the same result.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value * value
    return zlib.crc32(json.dumps(value, sort_keys=True).encode())


def closed_form_total(space: AnySpace, compute: str) -> int | None:
    """The exact sum of all results of a run, or None when there is no closed form.

    For ``square`` over ``range(start, stop, step)`` with n terms the sum of
    ``(start + k*step)**2`` for k < n is
    ``n*start**2 + 2*start*step*n(n-1)/2 + step**2*(n-1)n(2n-1)/6``.
    """
    if compute != DEFAULT_COMPUTE or not isinstance(space, RangeSpace):
        return None
    n, a, d = space.size, space.start, space.step
    return n * a * a + a * d * n * (n - 1) + d * d * (n - 1) * n * (2 * n - 1) // 6


def check_name(name: str) -> tuple[str, str]:
    """Split ``module:function``.

    Raises:
        UsageError: the name is not of that form.
    """
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"compute {name!r}: expected module:function")
    return module_name, attr


def parse_allow(text: str) -> tuple[str, ...]:
    """``TTG_COMPUTE_ALLOW``: comma-separated module prefixes (``ttg.compute`` always included)."""
    extra = tuple(p.strip() for p in text.split(",") if p.strip())
    for prefix in extra:
        if not all(part.isidentifier() for part in prefix.split(".")):
            raise ValueError(f"{prefix!r} is not a module name")
    return tuple(dict.fromkeys(DEFAULT_ALLOW + extra))


def check_allowed(name: str, allow: Sequence[str]) -> None:
    """Refuse a compute whose module is not under one of the ``allow`` prefixes.

    Raises:
        UsageError: it is not allowed (or not of the form module:function).
    """
    module_name, _ = check_name(name)
    if not any(module_name == p or module_name.startswith(p + ".") for p in allow):
        raise UsageError(
            f"compute {name!r} is not allowed: its module must be under "
            f"{', '.join(allow)} (TTG_COMPUTE_ALLOW)"
        )


@functools.cache
def load(name: str) -> ComputeFn:
    """Import ``module:function`` once per process.

    Call ``check_allowed`` first: importing a module runs its code.

    Raises:
        UsageError: the name is malformed, or the module or function is missing.
    """
    module_name, attr = check_name(name)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise UsageError(
            f"compute {name!r}: cannot import {module_name!r} ({describe(e)})"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"compute {name!r}: {module_name} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def describe(e: BaseException) -> str:
    """One line naming the error: ``ValueError: bad input``."""
    text = "".join(traceback.format_exception_only(e)).strip().replace("\n", " ")
    return text[:MAX_ERROR_CHARS]


def is_permanent(e: BaseException, fn: ComputeFn | None = None) -> bool:
    """Whether retrying the parameter is pointless (see the module docstring for the order)."""
    if isinstance(e, PermanentError):
        return True
    if isinstance(e, TransientError):
        return False
    own = getattr(fn, "permanent_errors", None)
    if own is not None:
        return isinstance(e, tuple(own))
    return isinstance(e, PERMANENT_ERRORS)


@dataclass
class ChunkResult:
    """What computing one chunk gave: a result per parameter, None where one raised."""

    results: list[Any]
    #: (parameter index, error text, permanent?)
    errors: list[tuple[int, str, bool]] = field(default_factory=list)
    started_at: float = 0.0
    seconds: float = 0.0

    @property
    def transient(self) -> bool:
        """Some parameter failed in a way worth retrying."""
        return any(not permanent for _, _, permanent in self.errors)

    def first_error(self) -> str | None:
        return f"parameter {self.errors[0][0]}: {self.errors[0][1]}" if self.errors else None


def run_chunk(fn: ComputeFn, space: AnySpace, lo: int, hi: int, work_ms: int) -> ChunkResult:
    """Compute every parameter of chunk ``[lo, hi)``; an error stays with its parameter.

    ``work_ms`` simulates a chunk's cost (benchmarks, demos, fault tests).
    """
    started, clock = time.time(), time.perf_counter()
    if work_ms:
        time.sleep(work_ms / 1000)
    results: list[Any] = []
    errors: list[tuple[int, str, bool]] = []
    values = space.values(lo, hi)
    index = lo
    while True:
        # One loop over the iterator; after an error it resumes with the next parameter,
        # so nothing is computed twice.
        try:
            for value in values:
                results.append(fn(value))
                index += 1
            break
        except Exception as e:
            results.append(None)
            errors.append((index, describe(e), is_permanent(e, fn)))
            index += 1
    return ChunkResult(results, errors, started, time.perf_counter() - clock)


def encode_results(results: list[Any], lo: int) -> tuple[str, list[tuple[int, str]]]:
    """The JSON text of ``results``; a value that cannot be serialised becomes a parameter error.

    Returns:
        The JSON array, and ``(parameter index, error)`` for each value replaced by null.
    """
    try:
        return json.dumps(results, separators=(",", ":")), []
    except (TypeError, ValueError, RecursionError):
        pass
    clean: list[Any] = []
    bad: list[tuple[int, str]] = []
    for offset, value in enumerate(results):
        try:
            json.dumps(value)
            clean.append(value)
        except (TypeError, ValueError, RecursionError) as e:
            clean.append(None)
            bad.append((lo + offset, f"result is not JSON-serialisable: {describe(e)}"))
    return json.dumps(clean, separators=(",", ":")), bad
