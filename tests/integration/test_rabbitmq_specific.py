"""RabbitMQ backend details the shared conformance suite cannot see from the interface."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import BackendEnv, ConsumerFactory, backend_env
from tests.helpers import ROOT
from ttg import compute
from ttg.run import Delivery, Outcome, RunSpec, Status
from ttg.space import RangeSpace

pytestmark = pytest.mark.integration

#: What a progress reader may grow by, per 10^6 parameters of a finished run.
PROGRESS_BYTES_PER_MILLION = 2 * 1024 * 1024

RSS_PROBE = """
import sys
from ttg.broker import open_broker

def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])

url, run = sys.argv[1], sys.argv[2]
open_broker("rabbitmq", url).progress(run)  # everything imported, a connection open
reader = open_broker("rabbitmq", url)
before = rss_kib()
p = reader.progress(run)
print(p.done, p.done_params, rss_kib() - before)
"""


def squares(d: Delivery) -> Outcome:
    result = [x * x for x in range(d.lo, d.hi)]
    return Outcome(d.chunk, Status.OK, d.hi - d.lo, "filler", d.attempt, time.time(), result)


@pytest.fixture
def backend(rabbitmq_node: object) -> Iterator[BackendEnv]:
    yield from backend_env("rabbitmq", rabbitmq_node)  # type: ignore[arg-type]


def test_progress_of_a_finished_million_parameter_run_costs_no_memory_per_result(
    backend: BackendEnv, new_consumer: ConsumerFactory, run_id: str
) -> None:
    # A reader keeps counters and a byte per chunk, never the results (which are
    # 10^6 integers here): a million-parameter run must not cost megabytes per reader.
    broker = backend.broker()
    spec = RunSpec(run_id, RangeSpace(0, 1_000_000).to_spec(), 100, compute.DEFAULT_COMPUTE)
    broker.seed(spec)
    c = new_consumer(broker, "filler")
    done = 0
    deadline = time.monotonic() + 300
    while done < spec.total_chunks and time.monotonic() < deadline:
        batch = c.fetch(0.5, 64)
        c.complete([(d, squares(d)) for d in batch])
        done += len(batch)
    assert done == spec.total_chunks

    probe = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, backend.url, run_id],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    chunks_done, params_done, growth_kib = map(int, probe.stdout.split())
    assert (chunks_done, params_done) == (10_000, 1_000_000), probe.stdout
    print(f"progress() of a finished 10^6-parameter run grew RSS by {growth_kib} KiB")  # noqa: T201
    assert growth_kib * 1024 < PROGRESS_BYTES_PER_MILLION, growth_kib
