"""Logging: readable text for people, one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: LogRecord attributes that are plumbing, not context worth shipping.
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


#: Context a text line names after its message, when the record carries it.
TEXT_CONTEXT = ("run", "chunk", "worker", "attempt")


class TextFormatter(logging.Formatter):
    """Readable lines that still name their run and chunk: ``... [run=r1 chunk=7]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{k}={getattr(record, k)}"
            for k in TEXT_CONTEXT
            if getattr(record, k, None) is not None
        )
        if not context:
            return line
        head, sep, rest = line.partition("\n")  # a traceback stays below the line
        return f"{head} [{context}]{sep}{rest}"


def setup(fmt: str, level: str) -> None:
    """Configure the root logger once, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pika logs every connection hiccup at ERROR with a traceback; our own
    # messages say what matters.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
