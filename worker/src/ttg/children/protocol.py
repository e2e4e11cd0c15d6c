"""The JSON-lines protocol between the worker and a compute child.

One request line per chunk, worker to child::

    {"run": RUN, "lo": LO, "hi": HI, "spec": {...}}   # "spec" only the first time per run

Results come back in batches, then one closing line per request::

    ["ok", FIRST, [RESULT, ...]]        # parameters FIRST, FIRST+1, ... computed
    [INDEX, null, "ERROR", PERMANENT, "TRACEBACK"]   # raised (PERMANENT: true/false)
    ["at", INDEX]                       # INDEX has been computing for a while
    ["end", SECONDS]                    # the request is done; SECONDS of computing
    ["fatal", "ERROR"]                  # the compute cannot run here at all (not allowed...)

A child holds computed results back for up to ``child.FLUSH_SECONDS`` (one
write, one wake-up of the worker, for many fast parameters) and says which
parameter has been running longer than that (``at``), so that a time limit
blames the right one. A request marked ``"careful": true`` gets a line per
parameter as soon as it is computed: the supervisor asks for that after a crash
lost what a child held back, to find the parameter that crashed it.

JSON only, never pickle: the worker must not unpickle what user code wrote.
Every line from a child is untrusted (user code shares its process) and is
checked before it is believed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ttg.jsontext import compact

#: Longest traceback kept from a child (``compute.TRACEBACK_CHARS``).
TRACEBACK_CHARS = 2000
#: Longest line a child may send (a parameter's result included).
MAX_LINE_BYTES = 64 * 1024 * 1024
#: Longest a computed result waits in a child before it is written; also how long a
#: parameter runs before the child says it is on it (``At``). A time limit is
#: enforced that much late at most: silence shorter than that is no overrun.
FLUSH_SECONDS = 0.05
#: A line of several results longer than this is sent in parts.
SPLIT_BYTES = 4 * 1024 * 1024


class ProtocolError(Exception):
    """A child sent something that is not a line of this protocol."""


class Unencodable(Exception):
    """A result that JSON cannot carry."""


@dataclass(frozen=True)
class Computed:
    """Parameters ``first``, ``first + 1``... computed: their results."""

    first: int
    results: list[Any]
    #: The results' JSON text as the child wrote it (checked: it decoded to ``results``).
    raw: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Failed:
    index: int
    error: str
    permanent: bool
    #: The innermost frames (``compute.traceback_text``), '' where there is none.
    traceback: str = ""


@dataclass(frozen=True)
class At:
    """Parameter ``index`` has been computing for at least ``child.FLUSH_SECONDS``."""

    index: int


@dataclass(frozen=True)
class End:
    seconds: float


@dataclass(frozen=True)
class Fatal:
    error: str


Reply = Computed | Failed | At | End | Fatal


def computed(first: int, results: list[Any]) -> bytes:
    """The line of consecutive results from parameter ``first`` on.

    Raises:
        Unencodable: one of them is not JSON-serialisable.
    """
    try:
        return b'["ok",%d,%s]\n' % (first, compact(results).encode())
    except (TypeError, ValueError, RecursionError) as e:
        raise Unencodable(f"{type(e).__name__}: {e}") from None


def at(index: int) -> bytes:
    return b'["at",%d]\n' % index


def failed(index: int, error: str, permanent: bool, traceback: str = "") -> bytes:
    return json.dumps([index, None, error, permanent, traceback]).encode() + b"\n"


def end(seconds: float) -> bytes:
    return json.dumps(["end", seconds]).encode() + b"\n"


def fatal(error: str) -> bytes:
    return json.dumps(["fatal", error]).encode() + b"\n"


def parse(line: bytes) -> Reply:
    """One reply line, checked.

    Raises:
        ProtocolError: it is not a reply line.
    """
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    return reply(msg, line)


def parse_many(lines: list[bytes]) -> list[Reply]:
    """Several reply lines, checked, decoded in one pass (the worker's hot path).

    Raises:
        ProtocolError: one of them is not a reply line.
    """
    if len(lines) == 1:
        return [parse(lines[0])]
    try:
        msgs = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, RecursionError):
        return [parse(line) for line in lines]  # finds the bad one (or several lines in one)
    if not isinstance(msgs, list) or len(msgs) != len(lines):
        return [parse(line) for line in lines]
    return [reply(msg, line) for msg, line in zip(msgs, lines, strict=True)]


def reply(msg: Any, line: bytes = b"") -> Reply:
    """A decoded reply line, checked.

    Raises:
        ProtocolError: it is not a reply line.
    """
    if isinstance(msg, list) and msg:
        head = msg[0]
        if head == "ok" and len(msg) == 3 and _index(msg[1]) and isinstance(msg[2], list):
            # The text after the second comma is the list's: "ok" and an int hold none.
            start = line.find(b",", line.find(b",") + 1) + 1
            end = line.rfind(b"]")
            return Computed(msg[1], msg[2], line[start:end] if 0 < start < end else None)
        if _index(head):
            if (
                len(msg) in (4, 5)
                and msg[1] is None
                and isinstance(msg[2], str)
                and isinstance(msg[3], bool)
            ):
                tb = msg[4] if len(msg) == 5 and isinstance(msg[4], str) else ""
                return Failed(head, msg[2][:500], msg[3], tb[-TRACEBACK_CHARS:])
        elif head == "at" and len(msg) == 2 and _index(msg[1]):
            return At(msg[1])
        elif head == "end" and len(msg) == 2 and isinstance(msg[1], int | float):
            return End(float(msg[1]))
        elif head == "fatal" and len(msg) == 2 and isinstance(msg[1], str):
            return Fatal(msg[1][:500])
    raise ProtocolError(f"not a reply line: {line[:80]!r}")


def _index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
