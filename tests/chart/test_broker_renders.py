"""The broker subcharts: what they render (tests/chart/broker_renders.py), and from which files."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.chart.broker_renders import (
    SCENARIO_LIST,
    Scenario,
    helm_template,
    load_record,
    record_of,
    split,
)
from tests.chart.conftest import CHART, helm

pytestmark = pytest.mark.chart

HOW_TO_UPDATE = (
    "after an intended change to what the brokers render: "
    ".venv/bin/python -m tests.chart.broker_renders --update, and commit the changed lines"
)


def test_the_record_holds_every_scenario_and_no_other() -> None:
    ids = [s.id for s in SCENARIO_LIST]
    assert len(set(ids)) == len(ids), "two scenarios share an id"
    assert sorted(load_record()) == sorted(ids), HOW_TO_UPDATE


@pytest.mark.parametrize("scenario", SCENARIO_LIST, ids=lambda s: s.id)
def test_broker_objects_render_as_recorded(major: str, scenario: Scenario) -> None:
    """Every broker object's full text, and their order, as the record has them."""
    expected = load_record().get(scenario.id)
    assert record_of(helm(major), scenario) == expected, HOW_TO_UPDATE


@pytest.mark.parametrize("subchart", ["redis", "rabbitmq"])
def test_each_broker_object_kind_renders_from_its_own_file(major: str, subchart: str) -> None:
    """One template file per object kind, named after it (statefulset.yaml, ...), none idle.

    Seen where each object says where it came from: a subchart installed alone.
    """
    sources: dict[str, set[str]] = defaultdict(set)
    for scenario in SCENARIO_LIST:
        if scenario.chart != subchart:
            continue
        proc = helm_template(helm(major), scenario)
        assert proc.returncode == 0, proc.stderr
        for doc in split(proc.stdout):
            sources[doc.head[0]].add(doc.source)
    templates = CHART / "charts" / subchart / "templates"
    expected = {kind: {f"{subchart}/templates/{kind.lower()}.yaml"} for kind in sources}
    assert sources == expected
    files = {p.name for p in templates.iterdir() if not p.name.startswith("_")}
    assert files == {f"{kind.lower()}.yaml" for kind in sources}, "a template renders nothing"
