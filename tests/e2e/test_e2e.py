"""End-to-end on Kind: the local fault scenarios, against the chart as users install it.

Each test seeds a run of its own (tests/e2e/conftest.py), slow enough that the
fault lands while chunks are in flight, then checks the run verifies.
"""

from __future__ import annotations

import signal

import pytest
import yaml

from tests import scenarios
from tests.e2e.conftest import RELEASE, KindHarness
from tests.helpers import ROOT, eventually

#: The tests' own budgets (seconds): reaching the fault, then finishing the run.
FAULT_BUDGET_S = 300
COMPLETE_BUDGET_S = 900
#: pytest-timeout's hard limit, above the budgets so a scenario's own timeout
#: (with its last status) is what reports a slow run.
TEST_TIMEOUT_S = FAULT_BUDGET_S + COMPLETE_BUDGET_S + 300

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(TEST_TIMEOUT_S)]


def test_worker_sigkill(harness: KindHarness, run: str) -> None:
    killed = scenarios.kill_worker_holding_chunk_at(
        harness, run, 0.3, sig=signal.SIGKILL, timeout=FAULT_BUDGET_S
    )
    assert killed.redelivery_delay_s is not None and killed.redelivery_delay_s <= 10, killed
    scenarios.wait_complete(harness, run, timeout=COMPLETE_BUDGET_S)
    report = scenarios.assert_verified(harness, run)
    assert report["redelivered"] >= 1


def test_broker_restart(harness: KindHarness, run: str) -> None:
    """A broker crash (SIGKILL, same volume) mid-run loses nothing acknowledged (invariant 8)."""
    before = scenarios.restart_broker_at(harness, run, 0.3, timeout=FAULT_BUDGET_S)
    # The crash happened with work in progress, not after the run was over.
    assert 0 < before["done"] < before["total_chunks"], before
    assert harness.crashes, "the broker was not crashed"
    scenarios.wait_complete(harness, run, timeout=COMPLETE_BUDGET_S)
    report = scenarios.assert_verified(harness, run)
    assert report["done"] == report["total_chunks"] > before["done"]


def test_broker_node_sigkill(harness: KindHarness, run: str) -> None:
    """A RabbitMQ cluster (rabbitmq.replicas=3) loses its busiest node mid-run: the run
    goes on on the others, the node rejoins, nothing is lost (the same scenario as
    tests/chart/test_wiring_cluster.py runs on local nodes)."""
    nodes = harness.broker_pods()
    if len(nodes) < 3:
        pytest.skip("the broker is not a cluster (install with BACKEND=rabbitmq-cluster)")
    lost = scenarios.kill_broker_node_at(harness, run, 0.3, timeout=FAULT_BUDGET_S)
    assert harness.pending_restart and harness.pending_restart[0] == lost.node
    scenarios.wait_complete(harness, run, timeout=COMPLETE_BUDGET_S)
    report = scenarios.assert_verified(harness, run)
    assert 0 < lost.finished_before < report["total_chunks"], lost
    assert report["done"] == report["total_chunks"]
    # The kubelet restarted the crashed node; it is back in a whole cluster.
    harness.wait_broker_ready_again(*harness.pending_restart)
    assert len(harness.cluster_running_nodes()) == len(nodes)


def test_network_policy_admits_ttg_pods_only_and_stream_replication(harness: KindHarness) -> None:
    """The broker's NetworkPolicy is enforced on Kind (kindnet, kind v0.24+): a pod of this
    release reaches the broker's port, the same pod without TTG's labels does not. On a
    RabbitMQ cluster its peers' stream replication, which uses a port range (NetworkPolicy
    `endPort`), keeps every member of a run's ledger in step: a CNI that honoured only the
    range's first port would leave replicas behind (and publishes unconfirmed)."""
    release = {"app.kubernetes.io/part-of": "ttg", "ttg.io/release": RELEASE}
    assert harness.reaches_broker(release), "a TTG pod of this release is refused"
    assert not harness.reaches_broker({}), "the NetworkPolicy is not enforced"
    nodes = harness.broker_pods()
    if len(nodes) < 3:
        return
    # The run the install seeded (values/kind.yaml) is complete: its ledger is written.
    run = yaml.safe_load((ROOT / "values" / "kind.yaml").read_text())["run"]["id"]

    def in_step() -> bool:
        members = harness.stream_members(f"ttg.{run}.ledger")
        offsets = {m["committed_offset"] for m in members}
        return len(members) == len(nodes) and len(offsets) == 1 and offsets != {-1}

    eventually(in_step, timeout=120, interval=2, what=f"every member of ttg.{run}.ledger in step")
