"""The bundled brokers render what broker_renders.json records (tests/chart/broker_renders.py)."""

from __future__ import annotations

import pytest

from tests.chart.broker_renders import SCENARIO_LIST, Scenario, load_record, record_of
from tests.chart.conftest import helm

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
