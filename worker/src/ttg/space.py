"""Parameter spaces: how parameter index i maps to a parameter value.

Messages never carry parameter values, only index ranges, so a run of 10^7
parameters seeds in O(chunks) and every message is a few bytes. A space is
recorded in the run's spec as a JSON object and rebuilt by each worker.

The forms (the same in ``--space`` and in Python):

- ``range:START:STOP[:STEP]`` / ``ttg.arange``: ``START + i*STEP`` below ``STOP``
  (above it for a negative step), like Python's ``range``, floats allowed;
- ``linspace:START:STOP:NUM`` / ``ttg.linspace``: NUM evenly spaced numbers from
  START to STOP, both included;
- ``logspace:START:STOP:NUM`` / ``ttg.logspace``: ``10**x`` for x in
  ``linspace:START:STOP:NUM`` (the bounds are base-10 exponents, as in numpy);
- ``grid:NAME=AXIS;NAME=AXIS`` / ``ttg.grid``: the cartesian product of named
  axes, last axis fastest; an axis is a list ``v1,v2,...`` or one of the forms
  above;
- ``--space-file FILE`` / ``ttg.table``: a table, one parameter per row (CSV with
  a header, or JSONL of objects).

No float drift: value ``i`` of a float range is ``START + i*STEP`` computed in
decimal from the numbers as written, then rounded once to a float (the tenth
value of ``range:0:1:0.1`` is 0.9, not 0.9000000000000001), and the count is
computed the same way (``range:2.5:4.0:0.01`` has 150 values, never 151).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, Protocol

from ttg.errors import UsageError
from ttg.tables import JSON, TableSpace, json_value, read_table, table

__all__ = [
    "AnySpace", "Axis", "GridSpace", "RangeSpace", "Reordered", "Space", "TableSpace", "arange",
    "from_spec", "grid", "linspace", "logspace", "parse", "read_table", "table",
]  # fmt: skip

#: Keywords of the one-dimensional forms; a value starting with one of them must parse.
FORMS = ("range", "linspace", "logspace")
#: Most values a linspace or logspace may have (their spec holds only the bounds).
MAX_NUM = 10**9
#: Most values one grid axis may have (a grid's spec lists every value of every axis).
MAX_AXIS_VALUES = 1_000_000


class Space(Protocol):
    """A finite, indexable parameter space."""

    @property
    def size(self) -> int: ...

    #: Names of the fields of a dict-valued space (grid axes, table columns); () for scalars.
    @property
    def names(self) -> tuple[str, ...]: ...

    def value(self, index: int) -> JSON: ...

    def values(self, lo: int, hi: int) -> Iterator[JSON]: ...

    def to_spec(self) -> dict[str, JSON]: ...


@dataclass(frozen=True)
class RangeSpace:
    """Integers ``start, start+step, ...`` below ``stop`` (like ``range``)."""

    start: int
    stop: int
    step: int = 1

    def __post_init__(self) -> None:
        if self.step == 0:
            raise UsageError("range step must not be 0")
        if self.size == 0:
            raise UsageError(f"range {self.start}:{self.stop}:{self.step} is empty")

    @property
    def size(self) -> int:
        # len(range(...)) would raise OverflowError past 2**63; the bound is checked by RunSpec.
        if self.step > 0:
            return max(0, (self.stop - self.start + self.step - 1) // self.step)
        return max(0, (self.start - self.stop - self.step - 1) // -self.step)

    @property
    def names(self) -> tuple[str, ...]:
        return ()

    def value(self, index: int) -> int:
        return self.start + index * self.step

    def values(self, lo: int, hi: int) -> Iterator[int]:
        return iter(range(self.value(lo), self.value(lo) + (hi - lo) * self.step, self.step))

    def to_spec(self) -> dict[str, JSON]:
        return {"kind": "range", "start": self.start, "stop": self.stop, "step": self.step}


def _decimal(v: float | int | str, what: str) -> Decimal:
    """``v`` as the decimal it was written as (a float by its shortest repr)."""
    if isinstance(v, bool):
        raise UsageError(f"{what}: {v!r} is not a number")
    try:
        d = Decimal(repr(v) if isinstance(v, float) else str(v).strip())
    except InvalidOperation:
        raise UsageError(f"{what}: {v!r} is not a number") from None
    if not d.is_finite():
        raise UsageError(f"{what}: {v!r} is not a finite number")
    return d


def _number(d: Decimal) -> int | float:
    """An integral decimal written without a point stays an int; anything else is a float."""
    return int(d) if d == d.to_integral_value() and d.as_tuple().exponent == 0 else float(d)


@dataclass(frozen=True)
class Axis:
    """A one-dimensional numeric space: a float ``range``, a ``linspace`` or a ``logspace``.

    Also an axis of a grid. Bounds are kept as the decimal strings they were
    written as, so a spec read back gives the same values bit for bit.
    """

    kind: str
    start: str
    stop: str
    #: The step of a range; the count of a linspace or logspace.
    step: str

    def __post_init__(self) -> None:
        what = f"{self.kind}:{self.start}:{self.stop}:{self.step}"
        if self.kind not in FORMS:
            raise UsageError(f"{what}: unknown form {self.kind!r}")
        for v in (self.start, self.stop, self.step):
            _decimal(v, what)
        if self.kind == "range":
            if _decimal(self.step, what) == 0:
                raise UsageError(f"{what}: the step must not be 0")
        else:
            num = _decimal(self.step, what)
            if num != num.to_integral_value() or not 1 <= num <= MAX_NUM:
                raise UsageError(f"{what}: NUM must be a whole number from 1 to {MAX_NUM}")
        if self.size == 0:
            raise UsageError(f"{what} is empty")

    @property
    def size(self) -> int:
        if self.kind != "range":
            return int(Decimal(self.step))
        start, stop, step = (Decimal(x) for x in (self.start, self.stop, self.step))
        with localcontext() as ctx:
            ctx.prec = 60
            n = math.ceil((stop - start) / step)
        return max(n, 0)

    @property
    def names(self) -> tuple[str, ...]:
        return ()

    def value(self, index: int) -> int | float:
        if not 0 <= index < self.size:
            raise IndexError(index)
        start, stop, step = (Decimal(x) for x in (self.start, self.stop, self.step))
        with localcontext() as ctx:
            ctx.prec = 60
            if self.kind == "range":
                return _number(start + index * step)
            x = start if step == 1 else start + (stop - start) * index / (step - 1)
            if step > 1 and index == int(step) - 1:
                x = stop  # the last value is STOP itself, not STOP +- an ulp
            return float(x if self.kind == "linspace" else Decimal(10) ** x)

    def values(self, lo: int, hi: int) -> Iterator[int | float]:
        return (self.value(i) for i in range(lo, hi))

    def to_list(self) -> list[int | float]:
        return list(self.values(0, self.size))

    def to_spec(self) -> dict[str, JSON]:
        return {"kind": self.kind, "start": self.start, "stop": self.stop, "step": self.step}


def arange(start: float, stop: float | None = None, step: float = 1) -> RangeSpace | Axis:
    """Numbers ``start + i*step`` below ``stop``, like ``range`` with floats (``numpy.arange``).

    ``arange(5)`` is 0..4. Integers give a ``RangeSpace`` of ints; otherwise
    each value is computed in decimal, so ``arange(0, 1, 0.1)`` has ten values
    ending in 0.9 exactly.
    """
    if stop is None:
        start, stop = 0, start
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop, step)):
        return RangeSpace(int(start), int(stop), int(step))
    return Axis("range", *(str(_decimal(v, "arange")) for v in (start, stop, step)))


def linspace(start: float, stop: float, num: int) -> Axis:
    """``num`` evenly spaced floats from ``start`` to ``stop``, both ends included.

    As ``numpy.linspace``; the last value is ``stop`` exactly.
    """
    return Axis("linspace", str(_decimal(start, "linspace")), str(_decimal(stop, "linspace")),
                str(_decimal(num, "linspace")))  # fmt: skip


def logspace(start: float, stop: float, num: int) -> Axis:
    """``10**x`` for ``num`` evenly spaced x from ``start`` to ``stop`` (exponents, base 10)."""
    return Axis("logspace", str(_decimal(start, "logspace")), str(_decimal(stop, "logspace")),
                str(_decimal(num, "logspace")))  # fmt: skip


@dataclass(frozen=True)
class GridSpace:
    """The cartesian product of named value lists.

    Index order is row-major in the order the axes are given: the last axis
    varies fastest, as in ``itertools.product``. ``value(i)`` is a dict
    ``{axis: value}``.
    """

    axes: tuple[tuple[str, tuple[JSON, ...]], ...]

    def __post_init__(self) -> None:
        if not self.axes:
            raise UsageError("grid needs at least one axis")
        names = [name for name, _ in self.axes]
        if len(set(names)) != len(names):
            raise UsageError(f"grid axis names repeat: {names}")
        for name, vals in self.axes:
            if not vals:
                raise UsageError(f"grid axis {name!r} has no values")
            for v in vals:
                json_value(v, f"grid axis {name!r}")

    @property
    def size(self) -> int:
        return math.prod(len(vals) for _, vals in self.axes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def value(self, index: int) -> dict[str, JSON]:
        out: dict[str, JSON] = {}
        for name, vals in reversed(self.axes):
            index, k = divmod(index, len(vals))
            out[name] = vals[k]
        return {name: out[name] for name, _ in self.axes}

    def values(self, lo: int, hi: int) -> Iterator[dict[str, JSON]]:
        return (self.value(i) for i in range(lo, hi))

    def to_spec(self) -> dict[str, JSON]:
        return {"kind": "grid", "axes": [[name, list(vals)] for name, vals in self.axes]}


def grid(**axes: Iterable[object] | RangeSpace | Axis) -> GridSpace:
    """The cartesian product of the named axes, last axis fastest (``itertools.product``).

    Each axis is a list (or any iterable, e.g. a numpy array), a ``range``, or
    ``arange``/``linspace``/``logspace``. ``grid(omega=[0.5, 1], zeta=linspace(0, 1, 5))``.
    """
    out = []
    for name, axis in axes.items():
        if isinstance(axis, (RangeSpace, Axis)):
            vals: tuple[JSON, ...] = _materialize(name, axis)
        elif isinstance(axis, (str, bytes, Mapping)) or not isinstance(axis, Iterable):
            raise UsageError(
                f"grid axis {name!r}: give a list of values, not {type(axis).__name__}"
            )
        else:
            vals = tuple(json_value(v, f"grid axis {name!r}") for v in axis)
        out.append((name, vals))
    return GridSpace(tuple(out))


@dataclass(frozen=True)
class Reordered:
    """A run's space seen in the order its chunks take it, when it reuses results.

    A run that reuses another's results computes only part of its space: those
    indices (``compute``, sorted disjoint ``[lo, hi)`` ranges) come first, at
    positions ``0 .. computed-1``, and the reused rest follows in index order. Chunks
    are contiguous in positions, so workers, ledgers and exports need nothing new;
    ``index(p)`` gives back the run's own index of position ``p`` (docs/contract.md,
    "Sweeps that grow").
    """

    base: RangeSpace | Axis | GridSpace | TableSpace
    compute: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        gaps, at, starts, done = [], 0, [], 0
        for lo, hi in self.compute:
            if not at <= lo < hi <= self.base.size:
                raise UsageError(f"reuse: range [{lo}, {hi}) is not sorted or out of bounds")
            if lo > at:
                gaps.append((at, lo))
            starts.append(done)
            done += hi - lo
            at = hi
        if at < self.base.size:
            gaps.append((at, self.base.size))
        object.__setattr__(self, "_gaps", tuple(gaps))
        object.__setattr__(self, "_starts", tuple(starts))
        object.__setattr__(self, "_gap_starts", tuple(itertools.accumulate(
            (b - a for a, b in gaps[:-1]), initial=done)))  # fmt: skip
        object.__setattr__(self, "_computed", done)

    @property
    def computed(self) -> int:
        """Parameters left to compute: positions ``0 .. computed-1``."""
        computed: int = self.__dict__["_computed"]
        return computed

    @property
    def size(self) -> int:
        return self.base.size

    @property
    def names(self) -> tuple[str, ...]:
        return self.base.names

    def _at(self, pos: int) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...], int]:
        if pos < self.computed:
            return self.compute, self.__dict__["_starts"], bisect.bisect_right(
                self.__dict__["_starts"], pos) - 1  # fmt: skip
        starts = self.__dict__["_gap_starts"]
        return self.__dict__["_gaps"], starts, bisect.bisect_right(starts, pos) - 1

    def index(self, pos: int) -> int:
        """The run's own index of position ``pos``."""
        ranges, starts, k = self._at(pos)
        return ranges[k][0] + pos - starts[k]

    def value(self, index: int) -> JSON:
        return self.base.value(self.index(index))

    def values(self, lo: int, hi: int) -> Iterator[JSON]:
        while lo < hi:
            ranges, starts, k = self._at(lo)
            a = ranges[k][0] + lo - starts[k]
            b = min(ranges[k][1], a + hi - lo)
            yield from self.base.values(a, b)
            lo += b - a

    def indices(self, lo: int, hi: int) -> Iterator[int]:
        """``index(p)`` for p in ``[lo, hi)``."""
        while lo < hi:
            ranges, starts, k = self._at(lo)
            a = ranges[k][0] + lo - starts[k]
            b = min(ranges[k][1], a + hi - lo)
            yield from range(a, b)
            lo += b - a

    def to_spec(self) -> dict[str, JSON]:
        return self.base.to_spec()


AnySpace = RangeSpace | Axis | GridSpace | TableSpace | Reordered


def base_of(space: AnySpace) -> RangeSpace | Axis | GridSpace | TableSpace:
    """The space itself, in its own order (a reused run's ``Reordered`` unwrapped)."""
    return space.base if isinstance(space, Reordered) else space


def indices(space: AnySpace, lo: int, hi: int) -> Iterable[int]:
    """The run's own indices of positions ``[lo, hi)`` (the same numbers but when reordered)."""
    return space.indices(lo, hi) if isinstance(space, Reordered) else range(lo, hi)


def from_spec(spec: Mapping[str, Any]) -> AnySpace:
    """Rebuild a space from the JSON object ``to_spec`` produced.

    Raises:
        UsageError: the object is not a space this version knows.
    """
    kind = spec.get("kind")
    try:
        if kind == "range":
            if all(isinstance(spec.get(k, 1), int) for k in ("start", "stop", "step")):
                return RangeSpace(int(spec["start"]), int(spec["stop"]), int(spec.get("step", 1)))
            return Axis("range", str(spec["start"]), str(spec["stop"]), str(spec["step"]))
        if kind in ("linspace", "logspace"):
            return Axis(str(kind), str(spec["start"]), str(spec["stop"]), str(spec["step"]))
        if kind == "grid":
            return GridSpace(tuple((str(name), tuple(vals)) for name, vals in spec["axes"]))
        if kind == "table":
            return TableSpace(
                tuple(str(c) for c in spec["columns"]), tuple(tuple(r) for r in spec["rows"])
            )
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"parameter space {kind!r} is not valid: {e}") from None
    raise UsageError(f"unknown parameter space kind {kind!r}")


def parse(text: str) -> AnySpace:
    """Parse the ``--space`` flag: one of the forms in the module docstring.

    Grid list values are read as JSON where they parse (numbers, true, null,
    quoted strings) and as plain strings otherwise.

    Raises:
        UsageError: the text is not one of those forms, or a value that starts
            like a form does not parse as one (naming the axis).
    """
    kind, _, rest = text.partition(":")
    if kind in FORMS:
        return _form(text, f"--space {text!r}")
    if kind == "grid":
        axes = []
        for axis in filter(None, (a.strip() for a in rest.split(";"))):
            name, eq, vals = axis.partition("=")
            name = name.strip()
            if not eq or not name:
                raise UsageError(f"--space {text!r}: expected grid:NAME=v1,v2;NAME=...")
            axes.append((name, _axis(name, vals.strip())))
        return GridSpace(tuple(axes))
    raise UsageError(
        f"--space {text!r}: expected range:..., linspace:..., logspace:... or grid:..."
    )


def _looks_like_form(raw: str) -> bool:
    head = raw.strip().lower()
    return any(head.startswith((f"{f}:", f"{f}(")) for f in (*FORMS, "arange"))


def _axis(name: str, raw: str) -> tuple[JSON, ...]:
    if _looks_like_form(raw):
        return _materialize(name, _form(raw, f"--space grid axis {name!r}"))
    return tuple(_grid_value(v) for v in raw.split(","))


def _materialize(name: str, axis: RangeSpace | Axis) -> tuple[JSON, ...]:
    if axis.size > MAX_AXIS_VALUES:
        raise UsageError(
            f"grid axis {name!r} has {axis.size} values, more than the {MAX_AXIS_VALUES} "
            "a grid axis may have"
        )
    return tuple(axis.values(0, axis.size))


def _form(text: str, where: str) -> RangeSpace | Axis:
    """``range:START:STOP[:STEP]``, ``linspace:START:STOP:NUM`` or ``logspace:...``.

    Raises:
        UsageError: naming ``where`` (the flag, the grid axis) and the text.
    """
    kind, _, rest = text.strip().partition(":")
    parts = [p.strip() for p in rest.split(":")]
    try:
        if kind == "range" and len(parts) in (2, 3):
            nums = [_decimal(p, repr(text)) for p in parts]
            if all(n == n.to_integral_value() and "." not in p for n, p in zip(nums, parts)):  # noqa: B905 - same length
                return RangeSpace(*(int(n) for n in nums))
            return Axis("range", parts[0], parts[1], parts[2] if len(parts) == 3 else "1")
        if kind in ("linspace", "logspace") and len(parts) == 3:
            for p in parts:
                _decimal(p, repr(text))
            return Axis(kind, *parts)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    shape = "START:STOP[:STEP]" if kind == "range" else "START:STOP:NUM"
    raise UsageError(f"{where}: expected {kind}:{shape}, got {text!r}")


def _grid_value(raw: str) -> JSON:
    raw = raw.strip()
    if not raw:
        raise UsageError('grid values must not be empty (write "" for an empty string)')
    try:
        value = json.loads(raw)
    except RecursionError:
        raise UsageError(f"grid value {raw[:40]!r}…: nested too deep") from None
    except ValueError:
        return raw
    return json_value(value, f"grid value {raw!r}")
