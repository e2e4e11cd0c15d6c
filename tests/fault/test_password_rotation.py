"""Rotating the broker password mid-run, as the chart README's procedure says (issue 20).

The workers read the password once, at start (``TTG_BROKER_PASSWORD`` from the
Secret): a rotation adds the new password beside the old one (Redis: a user
may have several; RabbitMQ: one, but open connections keep working), restarts
the workers with the new one (``kubectl rollout restart``: here, new worker
processes and SIGTERM to the old), then drops the old. The run must complete
and verify, and the old password must be refused afterwards.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests import scenarios
from tests.conftest import BackendEnv
from tests.fault.conftest import LocalHarness, seed
from ttg import scenario
from ttg.processes import RabbitMQNode, RedisServer

pytestmark = [pytest.mark.fault, pytest.mark.integration]


class Broker:
    """One user of the test's broker, whose password the test rotates."""

    def __init__(self, backend: BackendEnv, server: RedisServer | RabbitMQNode) -> None:
        self.backend = backend
        self.server = server
        self.user = f"rot-{uuid.uuid4().hex[:6]}"

    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.backend.url)

    def create(self, password: str) -> None:
        if isinstance(self.server, RedisServer):
            self._redis().acl_setuser(
                self.user, enabled=True, passwords=[f"+{password}"],
                keys=["*"], channels=["*"], commands=["+@all"],
            )  # fmt: skip
        else:
            self.server.ctl_run("add_user", self.user, password)
            self.server.ctl_run("set_permissions", "-p", "/", self.user, ".*", ".*", ".*")

    def add_password(self, password: str) -> None:
        """Step 1: the broker accepts the new password (Redis: the old one as well)."""
        if isinstance(self.server, RedisServer):
            self._redis().acl_setuser(self.user, enabled=True, passwords=[f"+{password}"])
        else:
            # One password per user: connections already open stay open.
            self.server.ctl_run("change_password", self.user, password)

    def drop_password(self, password: str) -> None:
        """Step 3: the old password goes (Redis; RabbitMQ's went in step 1)."""
        if isinstance(self.server, RedisServer):
            self._redis().acl_setuser(self.user, enabled=True, passwords=[f"-{password}"])

    def accepts(self, password: str) -> bool:
        if isinstance(self.server, RedisServer):
            try:
                return bool(redis.Redis.from_url(self.backend.url).execute_command(
                    "AUTH", self.user, password
                ))  # fmt: skip
            except redis.AuthenticationError:
                return False
        try:
            self.server.ctl_run("authenticate_user", self.user, password)
        except subprocess.CalledProcessError:
            return False
        return True

    def delete(self) -> None:
        if isinstance(self.server, RedisServer):
            self._redis().acl_deluser(self.user)
        else:
            self.server.ctl_run("delete_user", self.user)


@pytest.fixture
def broker_user(backend: BackendEnv, request: pytest.FixtureRequest) -> Iterator[Broker]:
    fixture = "redis_server" if backend.name == "redis" else "rabbitmq_node"
    user = Broker(backend, request.getfixturevalue(fixture))
    user.create("old-pass")
    yield user
    user.delete()


def test_password_rotated_mid_run_the_run_completes(
    harness: LocalHarness, broker_user: Broker, run_id: str
) -> None:
    creds = {"TTG_BROKER_USERNAME": broker_user.user}
    old_env, new_env = {"TTG_BROKER_PASSWORD": "old-pass"}, {"TTG_BROKER_PASSWORD": "new-pass"}
    seed(harness.backend, run_id, "--params", "2000", "--chunk-size", "50", "--work-ms", "40")
    old = harness.workers.start(2, **creds, **old_env)
    scenario.wait_for_progress(
        lambda: harness.ttg_json("status", "--run", run_id), 0.3, timeout=60, poll=0.1
    )
    broker_user.add_password("new-pass")
    # The rolling restart: new pods with the Secret's new value, then the old ones go.
    harness.workers.start(2, **creds, **new_env)
    for name in old:
        harness.workers.kill(name, signal.SIGTERM)
    for name in old:
        assert harness.workers.wait(name, timeout=60) == 0
    broker_user.drop_password("old-pass")
    assert not broker_user.accepts("old-pass")
    assert broker_user.accepts("new-pass")

    scenarios.wait_complete(harness, run_id, timeout=120)
    report = scenarios.assert_verified(harness, run_id)
    assert report["closed_form"] == "match"
