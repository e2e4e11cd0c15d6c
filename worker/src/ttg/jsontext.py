"""Compact JSON text: how every ledger record, message and result is written."""

from __future__ import annotations

import json

#: ``json.dumps(value, separators=(",", ":"))`` without building an encoder at every call
#: (outcomes, messages and results are encoded per chunk).
compact = json.JSONEncoder(separators=(",", ":")).encode
