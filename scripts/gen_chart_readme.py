"""Generate the values table of charts/ttg/README.md from the `# --` comments in values.yaml.

The broker subcharts' values (charts/redis, charts/rabbitmq) follow the chart's
own, under their key in the parent (`redis.`, `rabbitmq.`).

    python scripts/gen_chart_readme.py          # rewrite the table in place
    python scripts/gen_chart_readme.py --check  # exit 1 if the committed table is stale

A comment `# -- text` (continued by following `# ` lines) documents the key on
the next line, helm-docs style. Keys are listed with their YAML path, type and
default.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "ttg"
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):")
#: Subcharts whose values are set under their name in the parent's values.
SUBCHARTS = ("redis", "rabbitmq")


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key preceded by a `# --` comment."""
    out: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending is not None:
            pending.append(stripped.lstrip("#").strip())
            continue
        m = KEY.match(line)
        if not m:
            if stripped:
                pending = None
            continue
        indent = len(m["indent"])
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, m["key"]))
        if pending is not None:
            out.append((".".join(k for _, k in path), " ".join(pending)))
            pending = None
    return out


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def type_of(value: Any) -> str:
    return {
        bool: "bool",
        int: "int",
        float: "float",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), "null")


def rows(values_text: str, prefix: str = "") -> list[str]:
    values = yaml.safe_load(values_text)
    out = []
    for key, desc in documented_keys(values_text):
        value = lookup(values, key)
        default = json.dumps(value) if value not in ("", None) else '`""`'
        default = default if default == '`""`' else f"`{default}`"
        cell = desc.replace("|", "\\|")
        out.append(f"| `{prefix}{key}` | {type_of(value)} | {default} | {cell} |")
    return out


def table(values_text: str, subcharts: dict[str, str] | None = None) -> str:
    lines = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    lines += rows(values_text)
    for name, text in (subcharts or {}).items():
        lines += rows(text, f"{name}.")
    return "\n".join(lines)


def undocumented(values: dict[str, Any], documented: set[str], prefix: str = "") -> list[str]:
    """Keys with no `# --` comment of their own and no fully documented children."""
    missing = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in documented:
            continue
        if isinstance(value, dict) and value:
            missing += undocumented(value, documented, f"{path}.")
        else:
            missing.append(path)
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is not up to date")
    args = parser.parse_args()
    readme = CHART / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: markers {START} / {END} missing", file=sys.stderr)
        return 1
    values_text = (CHART / "values.yaml").read_text()
    subcharts = {n: (CHART / "charts" / n / "values.yaml").read_text() for n in SUBCHARTS}
    for path, source in [(CHART / "values.yaml", values_text)] + [
        (CHART / "charts" / n / "values.yaml", s) for n, s in subcharts.items()
    ]:
        missing = undocumented(yaml.safe_load(source), {k for k, _ in documented_keys(source)})
        if missing:
            where = path.relative_to(ROOT)
            print(f"{where}: keys without a `# --` comment: {', '.join(missing)}", file=sys.stderr)
            return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table(values_text, subcharts)}\n{END}{tail}"
    if args.check:
        if new != text:
            print(f"{readme} is stale: run python scripts/gen_chart_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
