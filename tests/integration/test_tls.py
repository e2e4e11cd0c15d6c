"""TLS: real brokers listening with TLS only, certificates made by ``openssl`` in the fixture.

The conformance suite runs over TLS too (``redis-tls``, ``rabbitmq-tls`` in
``tests.conftest.CONFORMANCE_BACKENDS``); this file checks what only the
command line shows: a sweep end to end with mutual TLS, and how a worker or a
command fails when it cannot trust the broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BackendEnv, backend_env
from tests.helpers import ROOT, eventually, ttg, ttg_json
from tests.tls import TLSMaterial
from ttg.processes import LocalWorkers

pytestmark = pytest.mark.integration

#: The worker runs until told to stop; a refused one must exit long before this.
WORKER_TIMEOUT = 60


@pytest.fixture(params=["redis-tls", "rabbitmq-tls"])
def tls_backend(request: pytest.FixtureRequest, tls_material: TLSMaterial) -> Iterator[BackendEnv]:
    """Each backend's TLS-only broker, with the client trusting the CA that signed it."""
    name = request.param.split("-")[0]
    server = request.getfixturevalue(
        f"{name}_tls_server" if name == "redis" else "rabbitmq_tls_node"
    )
    yield from backend_env(name, server, tls=tls_material.client)


def test_tls_sweep_with_a_client_certificate_verifies(
    tls_backend: BackendEnv, tls_material: TLSMaterial, run_id: str, tmp_path: Path
) -> None:
    mutual = BackendEnv(
        tls_backend.name, tls_backend.url, tls_backend.restart, tls=tls_material.mutual
    )
    assert "TTG_BROKER_CERT_FILE" in mutual.env and mutual.url.startswith(("rediss://", "amqps://"))
    ttg(
        "seed", "--run", run_id, "--params", "400", "--chunk-size", "20", env=mutual.env, check=True
    )
    pool = LocalWorkers(
        {**mutual.env, "PYTHONPATH": str(ROOT), "TTG_METRICS_PORT": "0"}, log_dir=tmp_path
    )
    pool.start(1)
    try:
        eventually(
            lambda: ttg_json("status", "--run", run_id, env=mutual.env)["complete"],
            timeout=60,
            what="run complete over TLS",
        )
    finally:
        codes = pool.stop()
    report = ttg_json("verify", "--run", run_id, env=mutual.env)
    assert report["ok"] and report["closed_form"] == "match", report
    assert list(codes.values()) == [0]


@pytest.mark.parametrize("command", ["status", "worker"])
def test_a_broker_signed_by_another_ca_is_refused_in_one_line_with_exit_4(
    tls_backend: BackendEnv, tls_material: TLSMaterial, command: str
) -> None:
    env = {
        **tls_backend.env,
        "TTG_BROKER_CA_FILE": str(tls_material.other_ca_file),
        "TTG_METRICS_PORT": "0",
        # The worker's INFO line announcing its settings is not part of the failure.
        "TTG_LOG_LEVEL": "WARNING",
    }
    args = ["status", "--run", "any"] if command == "status" else ["worker"]

    proc = ttg(*args, env=env, timeout=WORKER_TIMEOUT)

    assert proc.returncode == 4, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ttg: error:") and "not trusted" in lines[0], lines
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["status", "worker"])
def test_a_missing_ca_file_is_bad_input_exit_2(
    tls_backend: BackendEnv, tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    env = {**tls_backend.env, "TTG_BROKER_CA_FILE": str(missing), "TTG_METRICS_PORT": "0"}
    args = ["status", "--run", "any"] if command == "status" else ["worker"]

    proc = ttg(*args, env=env, timeout=WORKER_TIMEOUT)

    assert proc.returncode == 2, proc
    (line,) = proc.stderr.splitlines()
    assert "TTG_BROKER_CA_FILE" in line and str(missing) in line, line
