"""Parameter spaces: how parameter index i maps to a parameter value.

Messages never carry parameter values, only index ranges, so a run of 10^7
parameters seeds in O(chunks) and every message is a few bytes. A space is
recorded in the run's spec as a small JSON object and rebuilt by each worker.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ttg.errors import UsageError


class Space(Protocol):
    """A finite, indexable parameter space."""

    @property
    def size(self) -> int: ...

    def value(self, index: int) -> Any: ...

    def values(self, lo: int, hi: int) -> Iterator[Any]: ...

    def to_spec(self) -> dict[str, Any]: ...


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

    def value(self, index: int) -> int:
        return self.start + index * self.step

    def values(self, lo: int, hi: int) -> Iterator[int]:
        return iter(range(self.value(lo), self.value(lo) + (hi - lo) * self.step, self.step))

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "range", "start": self.start, "stop": self.stop, "step": self.step}


@dataclass(frozen=True)
class GridSpace:
    """The cartesian product of named value lists.

    Index order is row-major in the order the axes are given: the last axis
    varies fastest, as in ``itertools.product``. ``value(i)`` is a dict
    ``{axis: value}``.
    """

    axes: tuple[tuple[str, tuple[Any, ...]], ...]

    def __post_init__(self) -> None:
        if not self.axes:
            raise UsageError("grid needs at least one axis")
        names = [name for name, _ in self.axes]
        if len(set(names)) != len(names):
            raise UsageError(f"grid axis names repeat: {names}")
        for name, vals in self.axes:
            if not vals:
                raise UsageError(f"grid axis {name!r} has no values")

    @property
    def size(self) -> int:
        return math.prod(len(vals) for _, vals in self.axes)

    def value(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, vals in reversed(self.axes):
            index, k = divmod(index, len(vals))
            out[name] = vals[k]
        return {name: out[name] for name, _ in self.axes}

    def values(self, lo: int, hi: int) -> Iterator[dict[str, Any]]:
        return (self.value(i) for i in range(lo, hi))

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "grid", "axes": [[name, list(vals)] for name, vals in self.axes]}


def from_spec(spec: Mapping[str, Any]) -> RangeSpace | GridSpace:
    """Rebuild a space from the JSON object ``to_spec`` produced."""
    kind = spec.get("kind")
    if kind == "range":
        return RangeSpace(int(spec["start"]), int(spec["stop"]), int(spec.get("step", 1)))
    if kind == "grid":
        return GridSpace(tuple((str(name), tuple(vals)) for name, vals in spec["axes"]))
    raise UsageError(f"unknown parameter space kind {kind!r}")


def parse(text: str) -> RangeSpace | GridSpace:
    """Parse the ``--space`` flag.

    Forms: ``range:START:STOP[:STEP]`` and ``grid:NAME=v1,v2;NAME=v1,v2``.
    Grid values are read as JSON where they parse (numbers, true, null,
    quoted strings) and as plain strings otherwise.

    Raises:
        UsageError: the text is not one of those forms.
    """
    kind, _, rest = text.partition(":")
    if kind == "range":
        parts = rest.split(":")
        if len(parts) not in (2, 3):
            raise UsageError(f"--space {text!r}: expected range:START:STOP[:STEP]")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise UsageError(f"--space {text!r}: range bounds must be integers") from None
        return RangeSpace(*nums)
    if kind == "grid":
        axes = []
        for axis in filter(None, (a.strip() for a in rest.split(";"))):
            name, eq, vals = axis.partition("=")
            if not eq or not name.strip():
                raise UsageError(f"--space {text!r}: expected grid:NAME=v1,v2;NAME=...")
            axes.append((name.strip(), tuple(_grid_value(v) for v in vals.split(","))))
        return GridSpace(tuple(axes))
    raise UsageError(f"--space {text!r}: expected range:... or grid:...")


def _grid_value(raw: str) -> Any:
    raw = raw.strip()
    if not raw:
        raise UsageError('grid values must not be empty (write "" for an empty string)')
    try:
        return json.loads(raw)
    except RecursionError:
        raise UsageError(f"grid value {raw[:40]!r}…: nested too deep") from None
    except ValueError:
        return raw
