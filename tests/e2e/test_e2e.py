"""End-to-end on Kind: the local fault scenarios, against the chart as users install it."""

from __future__ import annotations

import signal

import pytest

from tests import scenarios
from tests.e2e.conftest import RUN, KindHarness

pytestmark = pytest.mark.e2e


def test_worker_sigkill(harness: KindHarness) -> None:
    killed = scenarios.kill_worker_holding_chunk_at(
        harness, RUN, 0.3, sig=signal.SIGKILL, timeout=300
    )
    assert killed.redelivery_delay_s is not None and killed.redelivery_delay_s <= 10, killed
    scenarios.wait_complete(harness, RUN, timeout=900)
    report = scenarios.assert_verified(harness, RUN)
    assert report["redelivered"] >= 1


def test_broker_restart(harness: KindHarness) -> None:
    before = scenarios.restart_broker_at(harness, RUN, 0.3, timeout=300)
    scenarios.wait_complete(harness, RUN, timeout=900)
    report = scenarios.assert_verified(harness, RUN)
    assert report["done"] >= before["done"]
