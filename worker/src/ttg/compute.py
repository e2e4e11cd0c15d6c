"""Compute functions: what a worker does with each parameter.

A compute function is named ``module:function``, takes one parameter value and
returns a JSON-serialisable result. The default, ``ttg.compute:square``, is a
deterministic placeholder whose run total has a closed form, so a whole run can
be verified end to end from its ledger alone.
"""

from __future__ import annotations

import functools
import importlib
import json
import time
import zlib
from collections.abc import Callable
from typing import Any

from ttg.errors import UsageError
from ttg.space import GridSpace, RangeSpace

#: The compute a run gets when nobody names one.
DEFAULT_COMPUTE = "ttg.compute:square"

ComputeFn = Callable[[Any], Any]


def square(value: Any) -> int:
    """The default compute: ``x*x`` for an integer, a stable 32-bit digest otherwise.

    Deterministic across processes and machines, so any two workers computing
    the same chunk produce the same result.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value * value
    return zlib.crc32(json.dumps(value, sort_keys=True).encode())


def closed_form_total(space: RangeSpace | GridSpace, compute: str) -> int | None:
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


@functools.cache
def load(name: str) -> ComputeFn:
    """Import ``module:function`` once per process.

    Raises:
        UsageError: the name is malformed, or the module or function is missing.
    """
    module_name, attr = check_name(name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"compute {name!r}: cannot import {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"compute {name!r}: {module_name} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def run_chunk(
    fn: ComputeFn, space: RangeSpace | GridSpace, lo: int, hi: int, work_ms: int
) -> list[Any]:
    """Compute every parameter of chunk ``[lo, hi)``, all or nothing.

    ``work_ms`` simulates a chunk's cost (benchmarks, demos, fault tests). The
    result list is returned only when every parameter has been computed: a
    partial chunk is never produced, so it can never be acknowledged.
    """
    if work_ms:
        time.sleep(work_ms / 1000)
    return [fn(v) for v in space.values(lo, hi)]
