"""docs/contract.md held to the code, both ways.

Every command and flag, every ``TTG_*`` variable with its default, every exit code and
every metric name the page lists exists in the parser, the settings, the errors and the
metrics; and everything those define is on the page. Other changes add flags and
variables all the time: this is the test that notices the page falling behind.
"""

from __future__ import annotations

import argparse
import re

import pytest

from tests.helpers import ROOT
from ttg import config, errors
from ttg.cli import build_parser
from ttg.exporter import RunCollector, Snapshot
from ttg.metrics import Metrics
from ttg.run import Progress

CONTRACT = (ROOT / "docs" / "contract.md").read_text()
#: What the page writes for a setting whose default is "nobody set it".
UNSET_WORDS = ("unset", "system CAs", "0` (commands)", "<hostname>-<pid>-<4 hex>")


def section(title: str) -> str:
    """The text under ``## title`` up to the next ``## `` heading."""
    m = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", CONTRACT, re.M | re.S)
    assert m, f"docs/contract.md has no section {title!r}"
    return m.group(1)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def documented_commands() -> dict[str, set[str]]:
    """Command -> the flags its synopsis line names."""
    out: dict[str, set[str]] = {}
    for line in section("Commands").splitlines():
        m = re.match(r"^    ttg ((?:[a-z]+)(?: \| [a-z]+)*)(.*)$", line)
        if m:
            flags = set(re.findall(r"--[a-z][a-z-]*", m.group(2)))
            for name in m.group(1).split(" | "):
                out[name] = flags
    return out


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    assert set(documented_commands()) == set(subcommands())


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_each_commands_flags_match_its_synopsis(name: str) -> None:
    p = subcommands()[name]
    have = {o for a in p._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    settings = {config.SETTINGS[s].flag for s in p.get_default("settings")}
    documented = documented_commands()[name]
    assert documented <= have, f"ttg {name}: the page names flags it lacks: {documented - have}"
    # Settings flags are documented once, in the Environment table (each is a flag too).
    missing = have - settings - documented
    assert not missing, f"ttg {name}: flags missing from its synopsis in docs/contract.md"


def documented_variables() -> dict[str, str]:
    """``TTG_*`` -> the default column, from the Environment table."""
    out = {}
    for row in section("Environment").splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`TTG_"):
            continue
        for var in re.findall(r"`(TTG_[A-Z_]+)`", cells[0]):
            out[var] = cells[1]
    return out


def test_every_variable_is_documented_with_its_default() -> None:
    documented = documented_variables()
    settings = {s.env: s for s in config.SETTINGS.values()}
    assert set(documented) == set(settings), "the Environment table and config.SETTINGS differ"
    for var, text in documented.items():
        default = settings[var].default
        if default is None:
            assert any(w in text for w in UNSET_WORDS), f"{var}: default {text!r}, code None"
            continue
        m = re.match(r"^`([^`]*)`", text)
        assert m, f"{var}: no default in backticks: {text!r}"
        value = m.group(1)
        if isinstance(default, float):
            assert float(value) == default, f"{var}: page {value}, code {default}"
        else:
            assert value == str(default), f"{var}: page {value!r}, code {default!r}"


def _exit_codes() -> set[int]:
    codes = {0, 130}  # success; interrupted
    stack: list[type[errors.TTGError]] = [errors.TTGError]
    while stack:
        cls = stack.pop()
        codes.add(cls.exit_code)
        stack.extend(cls.__subclasses__())
    return codes


def test_exit_codes_on_the_page_are_the_codes_the_errors_carry() -> None:
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", section("Exit codes"), re.M)}
    assert documented == _exit_codes()


def _names(families: object) -> set[str]:
    out = set()
    for f in families:  # type: ignore[attr-defined]
        # prometheus_client's own process_* and python_* series are not TTG's contract.
        if f.name.startswith("ttg_"):
            out.add(f.name + ("_total" if f.type == "counter" else ""))
    return out


def test_metric_names_on_the_page_are_the_ones_exported() -> None:
    documented = set(re.findall(r"`(ttg_[a-z_]+)", section("Metrics")))
    p = Progress("r", total_chunks=10, total_params=100, seeded_chunks=10, workers=1,
                 seeded_at=1.0)  # fmt: skip
    snapshot = Snapshot(
        at=1.0, broker_up=True, runs={"r": p}, etas={"r": 1.0}, problems={"bad": "unreadable"}
    )
    exported = _names(Metrics().registry.collect()) | _names(
        RunCollector(lambda: snapshot, "redis").collect()
    )
    assert documented == exported, (
        f"on the page only: {sorted(documented - exported)}; "
        f"exported only: {sorted(exported - documented)}"
    )
