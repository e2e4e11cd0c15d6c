"""Compute functions: what a worker does with each parameter.

A compute function is named ``module:function``, takes one parameter value and
returns a JSON-serialisable result. The default, ``ttg.compute:square``, is a
deterministic placeholder whose run total has a closed form, so a whole run can
be verified end to end from its ledger alone.

Trust: the broker is the trust boundary. Whoever can publish a run chooses the
function every worker calls, with any parameter values: so a worker runs only
functions its operator allows (``TTG_COMPUTE_ALLOW``: exact functions, or
every function *defined* under a module prefix; ``check_allowed`` by name
before anything is imported, ``load`` by what the name turns out to be), and
``ttg seed`` refuses anything else before it reaches a worker.

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
import re
import time
import traceback
import types
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttg.decode import preview
from ttg.errors import UsageError
from ttg.jsontext import compact
from ttg.space import AnySpace, RangeSpace

#: The compute a run gets when nobody names one.
DEFAULT_COMPUTE = "ttg.compute:square"
#: What every allowlist allows: exactly the default compute, nothing else of its module.
DEFAULT_ALLOW = (DEFAULT_COMPUTE,)
#: The module part of a program compute's name: ``exec:PROGRAM``.
EXEC = "exec"
#: Longest name of a compute.
MAX_NAME_CHARS = 300
#: What may follow ``exec:``: a program's name or path, no space, comma or control character.
_PROGRAM = re.compile(r"[^\s,:\x00-\x1f\x7f]{1,255}")
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
    """Split a compute's name: ``module:function``, or ``exec:PROGRAM`` (a program compute).

    Returns:
        ``(module, function)``, or ``("exec", PROGRAM)``.

    Raises:
        UsageError: the name is neither.
    """
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise UsageError(f"compute {_shown(name)}: expected module:function")
    module_name, sep, attr = name.partition(":")
    if module_name == EXEC:
        if not _PROGRAM.fullmatch(attr):
            raise UsageError(f"compute {_shown(name)}: expected exec:PROGRAM")
        return module_name, attr
    if not sep or not _is_module(module_name) or not attr.isidentifier():
        raise UsageError(f"compute {_shown(name)}: expected module:function")
    return module_name, attr


def _is_module(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _shown(name: object) -> str:
    return preview(name, 80)


def parse_allow(text: str) -> tuple[str, ...]:
    """``TTG_COMPUTE_ALLOW``: comma-separated entries, ``DEFAULT_ALLOW`` always included.

    An entry is a module prefix (``mylab``: every function *defined* in ``mylab``
    or a module below it), one function (``mylab.sim:energy``: exactly that
    one), or one program (``exec:PROGRAM``: program computes running exactly
    that program).

    Raises:
        ValueError: an entry is none of these.
    """
    extra = tuple(p.strip() for p in text.split(",") if p.strip())
    for entry in extra:
        if ":" in entry:
            try:
                check_name(entry)
            except UsageError:
                raise ValueError(
                    f"{entry!r} is not a module, module:function or exec:PROGRAM"
                ) from None
        elif not _is_module(entry):
            raise ValueError(f"{entry!r} is not a module name")
    return tuple(dict.fromkeys(DEFAULT_ALLOW + extra))


def _prefix_allows(module_name: str, allow: Sequence[str]) -> bool:
    return any(
        ":" not in p and (module_name == p or module_name.startswith(p + ".")) for p in allow
    )


def check_allowed(name: str, allow: Sequence[str]) -> None:
    """Refuse, by its name alone (nothing is imported), a compute the allowlist does not name.

    ``module:function`` passes when ``allow`` lists exactly that entry, or a prefix
    of its module (then only a public name: a module's ``_private`` helpers are not
    its API). ``exec:PROGRAM`` passes only when ``allow`` lists exactly that entry.
    Importing may still refuse it (``load``): a name can point to something the
    module did not define.

    Raises:
        UsageError: it is not allowed (or not a compute's name).
    """
    why = _refusal(name, tuple(allow)) if isinstance(name, str) else _refusal_of(name, allow)
    if why is not None:
        raise UsageError(why)


@functools.lru_cache(maxsize=256)
def _refusal(name: str, allow: tuple[str, ...]) -> str | None:
    """``_refusal_of``, remembered: a worker asks it of every chunk it is handed."""
    return _refusal_of(name, allow)


def _refusal_of(name: str, allow: Sequence[str]) -> str | None:
    """Why ``check_allowed`` refuses ``name``; None if it is allowed."""
    try:
        module_name, attr = check_name(name)
    except UsageError as e:
        return str(e)
    if name in allow:
        return None
    if module_name == EXEC:
        return f"compute {name!r} is not allowed: TTG_COMPUTE_ALLOW must list {name!r}"
    if not _prefix_allows(module_name, allow):
        return (
            f"compute {name!r} is not allowed: TTG_COMPUTE_ALLOW ({', '.join(allow)}) "
            f"must list {name!r} or a module prefix of it"
        )
    if attr.startswith("_"):
        return (
            f"compute {name!r} is not allowed: a private name is allowed only by "
            f"listing {name!r} itself in TTG_COMPUTE_ALLOW"
        )
    return None


def load(name: str, allow: Sequence[str]) -> ComputeFn:
    """Import ``module:function`` (once per process) if the allowlist lets it run.

    Checks the name first (``check_allowed``: importing a module runs its code),
    then what it names. Accepted is a plain Python function (``def`` or
    ``lambda``) *defined* in an allowed module, i.e. its ``__module__`` is the
    module the allowlist entry names (a ``module:function`` entry) or under an
    allowed prefix. Refused: classes, builtins, ``functools.partial`` objects,
    bound methods, callable instances, and any function a module imported from
    elsewhere (``from subprocess import check_output`` does not make
    ``check_output`` the module's): each would let whoever can publish a run call
    code the operator never allowed. Wrap such a callable in a ``def``.

    Raises:
        UsageError: not allowed, not importable, or not an allowed function.
    """
    return _load(name, tuple(allow))


@functools.cache
def _load(name: str, allow: tuple[str, ...]) -> ComputeFn:
    check_allowed(name, allow)
    module_name, attr = check_name(name)
    if module_name == EXEC:
        raise UsageError(f"compute {name!r} is a program: it is run, not imported")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise UsageError(
            f"compute {name!r}: cannot import {module_name!r} ({describe(e)})"
        ) from None
    # The module's own namespace, not getattr: a module-level __getattr__ could hand
    # back anything under any name.
    fn = vars(module).get(attr)
    if fn is None:
        raise UsageError(f"compute {name!r}: {module_name} has no function {attr!r}")
    if not isinstance(fn, types.FunctionType):
        kind = "class" if isinstance(fn, type) else type(fn).__name__
        raise UsageError(
            f"compute {name!r} is a {kind}, not a function defined in {module_name}: "
            "only plain functions may be computes (wrap it in a def)"
        )
    # Where the function was defined: the named module (or one below it, for a
    # package re-exporting its own function) for an exact entry, else under a prefix.
    defined_in = getattr(fn, "__module__", None)
    home = module_name if name in allow else None
    if not isinstance(defined_in, str) or not (
        (home is not None and _prefix_allows(defined_in, (home,)))
        or _prefix_allows(defined_in, allow)
    ):
        raise UsageError(
            f"compute {name!r} is not allowed: the function is defined in "
            f"{defined_in!r}, not in an allowed module ({', '.join(allow)})"
        )
    return fn


def describe(e: BaseException) -> str:
    """One line naming the error: ``ValueError: bad input``."""
    text = "".join(traceback.format_exception_only(e)).strip().replace("\n", " ")
    return text[:MAX_ERROR_CHARS]


#: Innermost frames kept of a parameter's traceback, and its longest text.
TRACEBACK_FRAMES = 8
TRACEBACK_CHARS = 2000


def traceback_text(e: BaseException) -> str:
    """The innermost frames of ``e``'s traceback (file:line, function, source), bounded.

    The frame of ``run_chunk`` itself is left out: it is the same in every traceback.
    """
    frames = traceback.extract_tb(e.__traceback__)[1:][-TRACEBACK_FRAMES:]
    lines = [
        f"{f.filename}:{f.lineno} in {f.name}" + (f"\n    {f.line}" if f.line else "")
        for f in frames
    ]
    text = "\n".join([*lines, describe(e)])
    return text if len(text) <= TRACEBACK_CHARS else "…" + text[-(TRACEBACK_CHARS - 1) :]


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
    #: (parameter index, error text, permanent?, traceback)
    errors: list[tuple[int, str, bool, str]] = field(default_factory=list)
    started_at: float = 0.0
    seconds: float = 0.0
    #: ``results`` as JSON text, when the compute process sent it so (checked).
    results_json: str | None = None

    @property
    def transient(self) -> bool:
        """Some parameter failed in a way worth retrying."""
        return any(not permanent for _, _, permanent, _ in self.errors)

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
    errors: list[tuple[int, str, bool, str]] = []
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
            errors.append((index, describe(e), is_permanent(e, fn), traceback_text(e)))
            index += 1
    return ChunkResult(results, errors, started, time.perf_counter() - clock)


def encode_results(results: list[Any], lo: int) -> tuple[str, list[tuple[int, str]]]:
    """The JSON text of ``results``; a value that cannot be serialised becomes a parameter error.

    Returns:
        The JSON array, and ``(parameter index, error)`` for each value replaced by null.
    """
    try:
        return compact(results), []
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
    return compact(clean), bad
