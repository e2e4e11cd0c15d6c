"""Reading untrusted data: bounded JSON, checked numbers and strings, safe previews.

Everything read from a broker (or a store, a child process, user code) may be
garbage: written by a newer version, by hand, by a bug, by an attacker who can
reach the broker. The backends' decode layers (``brokers/*/decode.py``) build
on these checks, so that garbage becomes a ``DecodeError`` they turn into a
reported problem of its run (DESIGN.md invariant 12), never a traceback.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

#: Longest JSON text decoded from a broker (a ledger batch of big results stays below).
MAX_JSON_BYTES = 64 * 1024 * 1024
#: Longest text of a preview in a log line or a problem description.
PREVIEW_CHARS = 120
#: Largest magnitude of an integer counter, index or bound (a signed 64-bit integer).
MAX_INT = 2**63 - 1
#: Distinct problems kept per read (the rest are counted).
PROBLEMS_SHOWN = 5

#: C0 and C1 control characters but tab and newline: what a terminal may interpret.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: A newline or tab, for text that must stay on one line.
_BREAKS = re.compile(r"[\t\n]")


class DecodeError(ValueError):
    """The data is not what it should be; the message says what, without quoting it whole."""


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not a number JSON can hold")


def loads(
    text: str | bytes, *, what: str, max_bytes: int = MAX_JSON_BYTES, allow_nan: bool = False
) -> Any:
    """JSON text decoded, or ``DecodeError``: too long, too deep, malformed, NaN/Infinity.

    ``allow_nan`` keeps the ``NaN``/``Infinity`` Python's encoder writes for a float
    result (a compute's own value); nowhere else is it a number.
    """
    if len(text) > max_bytes:
        raise DecodeError(f"{what}: {len(text)} bytes, more than {max_bytes}")
    try:
        if allow_nan:
            return json.loads(text)
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise DecodeError(f"{what}: JSON nested too deep") from None
    except DecodeError as e:
        raise DecodeError(f"{what}: {e}") from None
    except ValueError as e:  # includes UnicodeDecodeError and over-long integers
        raise DecodeError(f"{what}: not JSON ({str(e)[:PREVIEW_CHARS]})") from None


def check_value(value: Any, what: str, max_depth: int) -> None:
    """Refuse a JSON value nested deeper than ``max_depth``, or holding NaN or an infinity.

    Iterative, so a deep value costs no recursion; it stops at the first fault.

    Raises:
        DecodeError: what is wrong, and where.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if d > max_depth:
                raise DecodeError(f"{what} is nested deeper than {max_depth} levels")
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
        elif isinstance(v, float) and not math.isfinite(v):
            raise DecodeError(f"{what} holds {v}, which JSON cannot hold")


def as_dict(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise DecodeError(f"{what} is {type(v).__name__}, not an object")
    return v


def as_int(v: Any, what: str, lo: int = -MAX_INT, hi: int = MAX_INT, *, text: bool = False) -> int:
    """An integer in ``[lo, hi]``: a JSON integer, or with ``text`` a decimal string.

    Redis answers with strings (``text=True``); JSON has numbers. A bool, a
    float, NaN or a number out of range is refused.
    """
    if isinstance(v, bool):
        raise DecodeError(f"{what} is a boolean, not an integer")
    if isinstance(v, str) and text:
        if not (0 < len(v) <= 20) or not v.lstrip("-").isdigit() or not v.isascii():
            raise DecodeError(f"{what} {preview(v)} is not an integer")
        v = int(v)
    if not isinstance(v, int):
        raise DecodeError(f"{what} {preview(v)} is not an integer")
    if not lo <= v <= hi:
        raise DecodeError(f"{what} {preview(v)} is out of range {lo}..{hi}")
    return v


def as_float(v: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite number in ``[lo, hi]`` (a timestamp, a duration), from a number or a string."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise DecodeError(f"{what} {preview(v)} is not a number")
    try:
        f = float(v) if not isinstance(v, str) or len(v) <= 40 else math.nan
    except (ValueError, OverflowError):
        f = math.nan
    if not math.isfinite(f) or not lo <= f <= hi:
        raise DecodeError(f"{what} {preview(v)} is not a finite number in range")
    return f


def as_str(v: Any, what: str, max_chars: int = 1000) -> str:
    if not isinstance(v, str):
        raise DecodeError(f"{what} {preview(v)} is not a string")
    if len(v) > max_chars:
        raise DecodeError(f"{what} is {len(v)} characters long, more than {max_chars}")
    return v


def opt_str(v: Any, what: str, max_chars: int = 1000) -> str | None:
    return None if v is None else as_str(v, what, max_chars)


def printable(text: str, max_chars: int | None = None) -> str:
    """``text`` with control characters (terminal escape sequences) shown as ``\\xNN``.

    For anything read from a broker or user code that reaches an operator's
    terminal: an error message must not move the cursor, retitle the window
    or hide the lines before it. Newlines and tabs are kept; see ``one_line``.
    """
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + f"… ({len(text)} characters)"
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def one_line(text: str, max_chars: int | None = None) -> str:
    """``printable``, with newlines and tabs as spaces: for one-line messages."""
    return printable(_BREAKS.sub(" ", text), max_chars)


def preview(v: Any, limit: int = PREVIEW_CHARS) -> str:
    """A bounded, printable picture of any value, for log lines and problem texts.

    Costs O(limit), not O(size of ``v``): a 20 MB field is not copied to be shown.
    """
    if isinstance(v, str | bytes | bytearray):
        head = v[:limit]
        shown = repr(head)
        return shown if len(v) <= limit else f"{shown}… ({len(v)} {_unit(v)})"
    if isinstance(v, dict):
        parts, size = [], 0
        for i, (k, x) in enumerate(v.items()):
            if size > limit or i >= 8:
                parts.append(f"… ({len(v)} keys)")
                break
            part = f"{preview(k, limit // 4)}: {preview(x, limit // 2)}"
            parts.append(part)
            size += len(part)
        return "{" + ", ".join(parts) + "}"
    if isinstance(v, list | tuple):
        parts, size = [], 0
        for i, x in enumerate(v):
            if size > limit or i >= 8:
                parts.append(f"… ({len(v)} items)")
                break
            part = preview(x, limit // 2)
            parts.append(part)
            size += len(part)
        return "[" + ", ".join(parts) + "]"
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 200:
        return f"<integer of {v.bit_length()} bits>"
    return printable(repr(v), limit)


def _unit(v: str | bytes | bytearray) -> str:
    return "characters" if isinstance(v, str) else "bytes"


@dataclass
class Problems:
    """Unreadable records met while reading one run: how many, and the first few, described."""

    count: int = 0
    shown: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.shown) < PROBLEMS_SHOWN:
            self.shown.append(one_line(text, 300))

    def lines(self) -> list[str]:
        """One line per problem shown, and one for the rest."""
        rest = self.count - len(self.shown)
        return self.shown + ([f"… and {rest} more unreadable records"] if rest > 0 else [])

    def __bool__(self) -> bool:
        return self.count > 0


class Throttle:
    """Says yes once per key every ``seconds``: one log line per bad run, not one per read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.seconds:
            return False
        if len(self._last) > 10_000:  # keys are run ids: bounded, but never without limit
            self._last.clear()
        self._last[key] = now
        return True


def mask_url(url: str) -> str:
    """``url`` (or a comma-separated list of them) with any credentials shown as ``***``.

    Safe for a URL that does not parse: a password written unquoted (with ``@``,
    ``/``, ``#`` or ``:`` in it) is hidden whole, never in part — everything
    between ``://`` and the last ``@`` of each URL is credentials.
    """
    if url.partition("://")[0].lower().endswith(("+cluster", "+sentinel")):
        return _mask_one(url)  # one URL naming several hosts (h:p,h:p), not a list of URLs
    return ",".join(_mask_one(u) for u in url.split(","))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep:
        return "***" if "@" in url else url
    return url if at < 0 else f"{scheme}://***@{rest[at + 1 :]}"
