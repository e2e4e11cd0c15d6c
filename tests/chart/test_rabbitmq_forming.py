"""Every TTG pod of a RabbitMQ cluster waits for the whole cluster before declaring anything
(issue 20, N2; the waiting itself: tests/fault/test_rabbitmq_forming.py)."""

from __future__ import annotations

import pytest

from tests.chart.conftest import render

pytestmark = pytest.mark.chart


def expected_nodes(replicas: int, major: str) -> dict[str, str | None]:
    """TTG pod (object name) -> its TTG_RABBITMQ_EXPECT_NODES (None: unset)."""
    r = render(
        major, "--set", "backend=rabbitmq", "--set", f"rabbitmq.replicas={replicas}",
        "--set", "exporter.enabled=true",
    )  # fmt: skip
    out: dict[str, str | None] = {}
    for name, spec in r.pod_specs():
        for c in spec["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "TTG_BROKER_URL" in env:
                out[name] = env.get("TTG_RABBITMQ_EXPECT_NODES")
    return out


@pytest.mark.parametrize("replicas", [3, 5])
def test_ttg_pods_expect_every_node_of_a_cluster(major: str, replicas: int) -> None:
    pods = expected_nodes(replicas, major)
    assert {"ttg-worker", "ttg-exporter", "ttg-seed", "ttg-test-status"} <= set(pods), pods
    assert set(pods.values()) == {str(replicas)}, pods


def test_one_node_is_not_waited_for(major: str) -> None:
    assert set(expected_nodes(1, major).values()) == {None}
