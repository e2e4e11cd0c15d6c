"""What every benchmark table carries: the machine, its load, the versions, the method, figures.

Absolute figures move with the load of a shared 2-core machine; the header
says what the machine was doing (load average at start and end) so that a
reader can tell a quiet run from a noisy one, and ratios within one run are
what compare.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def fmt_load(load: Sequence[float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def machine() -> dict[str, Any]:
    """Date, host, cores, RAM, OS and Python of this run."""
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 2**20  # KiB -> GiB
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "ram_gib": round(ram, 1) if ram else None,
        "cpu": platform.processor() or platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def ttg_overrides() -> dict[str, str]:
    """TTG_* variables inherited from the caller: they change what is measured, so shown."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("TTG_")}


def note_load(what: str) -> tuple[float, float, float]:
    """Print the load average now (``uptime``'s figures) to stderr, warning when busy."""
    load = loadavg()
    cores = os.cpu_count() or 1
    print(f"[load] {what}: load average {fmt_load(load)} ({cores} cores)", file=sys.stderr)
    if load[0] > 0.5 * cores:
        print("[load] the machine is busy: absolute figures will be low", file=sys.stderr)
    return load


def header(
    title: str,
    *,
    info: dict[str, Any],
    versions: dict[str, str],
    load_start: Sequence[float],
    load_end: Sequence[float],
    method: Sequence[str],
) -> list[str]:
    lines = [
        f"{title} — {info['date']}, {info['host']}",
        f"machine: {info['cores']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM, {info['os']}",
        "software: Python "
        + info["python"]
        + "".join(f", {name} {v}" for name, v in versions.items()),
        f"load average (1/5/15 min): start {fmt_load(load_start)}, end {fmt_load(load_end)}",
    ]
    overrides = ttg_overrides()
    lines.append(
        "TTG settings: "
        + (", ".join(f"{k}={v}" for k, v in overrides.items()) if overrides else "defaults")
    )
    lines += [f"method: {m}" if i == 0 else f"        {m}" for i, m in enumerate(method)]
    return lines


Row = tuple[str, Sequence[str], str]


def table(columns: Sequence[str], rows: Sequence[Row], *, last: str = "") -> str:
    """A plain-text table: a label column, one column per name, then a free-text column."""
    width = max(len(r[0]) for r in rows)
    cols = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(columns)]
    head = f"{'figure':<{width}}  " + "  ".join(
        f"{c:>{w}}" for c, w in zip(columns, cols, strict=True)
    )
    head += f"  {last}" if last else ""
    lines = [head, "-" * len(head)]
    for label, values, note in rows:
        cells = "  ".join(f"{v:>{w}}" for v, w in zip(values, cols, strict=True))
        lines.append(f"{label:<{width}}  {cells}" + (f"  {note}" if note else ""))
    return "\n".join(lines)


def median(xs: Sequence[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return statistics.median(got) if got else None


def num(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.1f}"


def count(n: int) -> str:
    """1000000 -> 1M, 20000 -> 20k, 10**7 -> 10M."""
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n:,}"


def write_json(name: str, data: dict[str, Any], path: str | None) -> Path:
    """Write every figure to ``path`` or bench/out/NAME-<time>.json; return the path."""
    target = Path(path) if path else OUT_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return target
