"""RabbitMQ values that would break a cluster are refused at render time with the reason
(issue 20: N11)."""

from __future__ import annotations

import pytest

from tests.chart.conftest import CHART, render, run_helm

pytestmark = pytest.mark.chart


def test_a_cluster_without_persistence_is_refused_with_the_reason(major: str) -> None:
    """N11: a node back on an empty volume boots blank; the -0 pod would form a second cluster."""
    proc = run_helm(
        major, "template", "ttg", str(CHART), "--set", "backend=rabbitmq",
        "--set", "rabbitmq.replicas=3", "--set", "rabbitmq.persistence.enabled=false",
    )  # fmt: skip
    assert proc.returncode != 0
    (reason,) = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert "rabbitmq.replicas=3 needs rabbitmq.persistence.enabled=true" in reason, proc.stderr
    assert "split" in reason and "rabbitmq.replicas=1" in reason
    # One node without persistence stays a throwaway broker, as before.
    one = render(major, "--set", "backend=rabbitmq", "--set", "rabbitmq.persistence.enabled=false")
    assert "StatefulSet" in one.kinds()
