"""Table spaces: a list of configurations, one parameter per row.

Many sweeps are not a product of axes but a table (a CSV of configurations, a
JSONL file of objects, a DataFrame). Parameter i is row i, a dict ``{column:
value}``.

The table is stored whole in the run's spec, as columns and rows (no key
repeated per row), rather than beside it: every reader of a spec (each worker,
``ttg status``) then has it in the one read it already makes, on either backend,
with nothing new to keep consistent, delete or version. The cost is size: a
10^5-row table of four numeric columns is about 3 MB of JSON, parsed in about
50 ms once per reader. ``MAX_TABLE_BYTES`` caps it; past that, a grid or
several runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias, cast

from ttg.errors import UsageError

#: A value JSON can hold: what a parameter (a grid point's or a row's field) may be.
JSON: TypeAlias = str | int | float | bool | list["JSON"] | dict[str, "JSON"] | None

#: Largest table a run's spec may hold, as JSON (a spec is read whole by every worker).
MAX_TABLE_BYTES = 32 * 1024 * 1024


def json_value(v: object, where: str) -> JSON:
    """``v`` as JSON holds it: numpy scalars become Python numbers; NaN and infinities refused.

    Raises:
        UsageError: ``v`` is a NaN or an infinity (JSON has neither).
    """
    item = getattr(v, "item", None)
    if callable(item) and not isinstance(v, (list, dict, str)):
        v = item()
    if isinstance(v, float) and not math.isfinite(v):
        raise UsageError(f"{where}: {v} is not a number a run can hold (JSON has no {v})")
    return cast(JSON, v)


@dataclass(frozen=True)
class TableSpace:
    """A table of configurations: parameter i is row i, a dict ``{column: value}``."""

    columns: tuple[str, ...]
    rows: tuple[tuple[JSON, ...], ...]

    def __post_init__(self) -> None:
        if not self.rows:
            raise UsageError("a table needs at least one row")
        if not self.columns:
            raise UsageError("a table needs at least one column")
        if len(set(self.columns)) != len(self.columns):
            raise UsageError(f"table columns repeat: {list(self.columns)}")
        for n, row in enumerate(self.rows, 1):
            if len(row) != len(self.columns):
                raise UsageError(f"table row {n} has {len(row)} values, not {len(self.columns)}")

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def names(self) -> tuple[str, ...]:
        return self.columns

    def value(self, index: int) -> dict[str, JSON]:
        return dict(zip(self.columns, self.rows[index], strict=True))

    def values(self, lo: int, hi: int) -> Iterator[dict[str, JSON]]:
        return (self.value(i) for i in range(lo, hi))

    def to_spec(self) -> dict[str, JSON]:
        return {
            "kind": "table",
            "columns": list(self.columns),
            "rows": [list(r) for r in self.rows],
        }


class Frame(Protocol):
    """What ``table`` takes from a pandas DataFrame."""

    def to_dict(self, orient: str) -> Iterable[Mapping[str, object]]: ...


def table(rows: Iterable[Mapping[str, object]] | Frame | str | os.PathLike[str]) -> TableSpace:
    """A table space, one parameter per row: dicts with the same keys, a DataFrame, or a file.

    A ``str`` or ``os.PathLike`` is read as ``--space-file`` reads it (``read_table``).

    Raises:
        UsageError: rows with different keys, a value JSON cannot hold, an
            empty table, or one past ``MAX_TABLE_BYTES``.
    """
    if isinstance(rows, str | os.PathLike):
        return read_table(os.fspath(rows))
    if not isinstance(rows, Iterable):  # a pandas DataFrame
        rows = rows.to_dict("records")
    columns: tuple[str, ...] | None = None
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, Mapping):
            raise UsageError(f"table row {n} is a {type(row).__name__}, not a mapping")
        keys = tuple(str(k) for k in row)
        if columns is None:
            columns = keys
        elif set(keys) != set(columns):
            raise UsageError(
                f"table row {n} has columns {sorted(keys)}, the first row {sorted(columns)}"
            )
        out.append(tuple(json_value(row[k], f"table row {n}, column {k!r}") for k in columns))
    space = TableSpace(columns or (), tuple(out))
    size = len(json.dumps(space.to_spec(), separators=(",", ":")))
    if size > MAX_TABLE_BYTES:
        raise UsageError(
            f"a table of {space.size} rows is {size // 2**20} MiB as JSON, over the "
            f"{MAX_TABLE_BYTES // 2**20} MiB a run's spec may hold: use a grid, or split the run"
        )
    return space


def read_table(path: str) -> TableSpace:
    """Read ``--space-file``: CSV with a header, or JSONL of objects (``.jsonl``, ``.ndjson``).

    CSV cells are read as JSON where they parse (``2`` an int, ``0.5`` a float,
    ``true``, ``null``, ``"quoted"``), as plain strings otherwise; an empty cell
    is null. JSONL values keep their JSON types.

    Raises:
        UsageError: the file cannot be read or is not one of those forms.
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.endswith((".jsonl", ".ndjson")):
                rows = [_json_row(path, n, line) for n, line in enumerate(f, 1) if line.strip()]
            else:
                rows = _csv_rows(path, csv.reader(f))
    except OSError as e:
        raise UsageError(f"--space-file {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"--space-file {path}: not a text CSV or JSONL file ({e})") from None
    try:
        return table(rows)
    except UsageError as e:
        raise UsageError(f"--space-file {path}: {e}") from None


def _csv_rows(path: str, reader: Iterator[list[str]]) -> list[dict[str, JSON]]:
    header = [k.strip() for k in next(reader, [])]
    if not header or not all(header):
        raise UsageError(f"--space-file {path}: expected a CSV header naming every column")
    rows = []
    for n, cells in enumerate(reader, 2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise UsageError(
                f"--space-file {path}: line {n} has {len(cells)} cells, the header {len(header)}"
            )
        rows.append({k: _cell(c) for k, c in zip(header, cells, strict=True)})
    return rows


def _json_row(path: str, n: int, line: str) -> dict[str, JSON]:
    try:
        row = json.loads(line)
    except ValueError:
        raise UsageError(f"--space-file {path}: line {n} is not JSON") from None
    if not isinstance(row, dict):
        raise UsageError(f"--space-file {path}: line {n} is not a JSON object")
    return row


def _cell(raw: str) -> JSON:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value: JSON = json.loads(raw)
    except ValueError:
        return raw
    return value
