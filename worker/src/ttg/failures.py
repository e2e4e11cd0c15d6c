"""Errors grouped the way people read them: by exception type and message, with counts.

A chunk's outcome keeps each failing parameter's error as ``(index, message)``
or ``(index, message, traceback)``; a dead chunk keeps one reason, often
``parameter N: Type: message``. Grouped by that text, 402 parameters failing the
same way would be 402 groups (the ``parameter N:`` prefix differs): here the
prefix is stripped, so they are one group of 402, with one example parameter
(its index, its value, its traceback) to look at. ``ttg verify``, ``ttg status``
and ``ttg report`` all group through this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

from ttg.tables import JSON

#: Distinct errors tracked; any later new one is only counted (``ErrorGroups.untracked``).
MAX_DISTINCT = 1000
#: Longest error text kept per group.
TEXT_LIMIT = 500
#: Longest traceback kept per example (the producer caps it at 2,000 characters too).
TRACEBACK_LIMIT = 2000

_PREFIX = re.compile(r"^parameter (\d+): ")
_TYPE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)?):")

#: A parameter error as a ledger keeps it: (index, message) or (index, message, traceback).
ParamError = tuple[int, str] | tuple[int, str, str]


def split(text: str) -> tuple[int | None, str]:
    """``"parameter 17: ValueError: bad"`` -> ``(17, "ValueError: bad")``; else ``(None, text)``."""
    m = _PREFIX.match(text)
    if m is None:
        return None, text
    return int(m.group(1)), text[m.end() :]


def error_type(message: str) -> str:
    """The exception type a message starts with (``ValueError`` of ``ValueError: bad``), or ''."""
    m = _TYPE.match(message)
    return m.group(1) if m else ""


#: Longest parameter value shown beside an error.
PARAM_TEXT = 160


def param_text(param: JSON) -> str:
    """A parameter's value as people read it: ``omega=0.5, zeta=0.25`` for a grid point."""
    if isinstance(param, dict):
        text = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in param.items())
    else:
        text = json.dumps(param, default=str)
    return text if len(text) <= PARAM_TEXT else text[: PARAM_TEXT - 1] + "…"


#: Numbers inside a message (``x=101``, ``0.25``, ``1e-9``): errors that differ only there
#: are one group, shown with ``…`` where they differ.
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")


def shape(message: str) -> str:
    """``"unstable step for x=101"`` -> ``"unstable step for x=…"``: the group's key."""
    return _NUMBER.sub("…", message)


def traceback_of(e: Sequence[object]) -> str | None:
    """The traceback of a parameter error, when its producer kept one (the optional third item)."""
    return str(e[2])[:TRACEBACK_LIMIT] if len(e) > 2 and e[2] else None


def _message(text: str | None) -> str:
    """The text errors are grouped by: one line, no ``parameter N:`` prefix, bounded."""
    _, message = split(" ".join((text or "(no error text recorded)").split()))
    return message[:TEXT_LIMIT]


@dataclass
class Example:
    """One parameter that failed with a group's error: where to start looking."""

    index: int | None
    chunk: int | None
    #: The parameter's value (a grid point, a table row), when known.
    param: JSON = None
    traceback: str | None = None


@dataclass
class ErrorGroup:
    """Parameters that failed with one error.

    Attributes:
        kind: ``failed`` (the parameter's compute raised; the chunk's other
            results were kept) or ``dead`` (its whole chunk could not be computed).
        error: The message without its ``parameter N:`` prefix; where messages of the
            group differ only in numbers, ``…`` stands for them.
        type: The exception type it names, '' if none.
        params: Parameters that failed this way.
        chunks: Chunks they are in.
        example: The first such parameter seen.
    """

    kind: str
    error: str
    type: str
    params: int = 0
    chunks: int = 0
    example: Example | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ErrorGroups:
    """Distinct errors with counts and an example each, in memory bounded by ``MAX_DISTINCT``."""

    def __init__(self, max_distinct: int = MAX_DISTINCT) -> None:
        self.max_distinct = max_distinct
        self.groups: dict[tuple[str, str], ErrorGroup] = {}
        #: Parameters whose error came after the cap was reached: counted, not grouped.
        self.untracked = 0

    def add(
        self,
        kind: str,
        text: str | None,
        *,
        params: int = 1,
        chunk: int | None = None,
        index: int | None = None,
        traceback: str | None = None,
        new_chunk: bool = True,
    ) -> ErrorGroup | None:
        """Count ``params`` parameters failing with ``text``; the group, or None past the cap."""
        prefixed, _ = split(text or "")
        message = _message(text)
        key = (kind, shape(message))
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= self.max_distinct:
                self.untracked += params
                return None
            group = self.groups[key] = ErrorGroup(kind, message, error_type(message))
        elif group.error != message:
            group.error = key[1]  # the same error with other numbers in it
        group.params += params
        group.chunks += new_chunk
        at = index if index is not None else prefixed
        ex = group.example
        # The example is the lowest parameter seen (ledgers come in no set order), so the
        # same run always shows the same one.
        if ex is None or (at is not None and (ex.index is None or at < ex.index)):
            tb = traceback[:TRACEBACK_LIMIT] if traceback else None
            group.example = Example(at, chunk, traceback=tb)
        return group

    def add_chunk(
        self,
        status: str,
        error: str | None,
        errors: Sequence[Sequence[int | str]],
        params: int,
        chunk: int,
    ) -> None:
        """Fold one chunk outcome in: a dead chunk's reason, or each parameter's error."""
        if status == "dead":
            self.add("dead", error, params=params, chunk=chunk)
            return
        seen: set[str] = set()
        for e in errors:
            index, text = int(e[0]), str(e[1])
            key = shape(_message(text))
            self.add(
                "failed",
                text,
                chunk=chunk,
                index=index,
                traceback=traceback_of(e),
                new_chunk=key not in seen,
            )
            seen.add(key)

    def top(self, n: int) -> list[ErrorGroup]:
        """The ``n`` groups with the most parameters, most first."""
        return sorted(self.groups.values(), key=lambda g: (-g.params, g.kind, g.error))[:n]

    def __iter__(self) -> Iterator[ErrorGroup]:
        return iter(self.groups.values())

    def __len__(self) -> int:
        return len(self.groups)
