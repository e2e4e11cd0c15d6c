"""Seeding a run that reuses results, killed halfway through recording the reused chunks.

The seeder records reused chunks after the tasks, moving the seeding cursor with them
(Redis: one Lua step per batch; RabbitMQ: the cursor after each confirmed batch). A
SIGKILL in the middle, then the same command again: every reused chunk counted once,
nothing lost, and the run verifies once its new parameters are computed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import BackendEnv
from tests.helpers import child_env, eventually, ttg_json
from ttg.broker import Broker
from ttg.errors import TTGError
from ttg.run import Outcome, Status

pytestmark = pytest.mark.fault

#: Parameters of the reused run (in chunks of 1,000), per backend: the new run reuses
#: each in a one-parameter chunk, so recording them lasts long enough to be killed
#: halfway.
REUSED = {"redis": 20_000, "rabbitmq": 20_000}
#: Parameters the new run adds.
NEW = 100


def record_all(broker: Broker, run: str) -> None:
    """Record every chunk ``run`` has to compute (squares), as a worker would."""
    todo = broker.spec(run).task_chunks
    consumer = broker.consumer(f"filler-{run}", lease_seconds=30, prefetch=256)
    consumer.start()
    try:
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            now, items = time.time(), []
            for d in consumer.fetch(0.5, 256):
                results = [x * x for x in d.spec.parameter_space.values(d.lo, d.hi)]
                o = Outcome(d.chunk, Status.OK, d.hi - d.lo, "filler", d.attempt, now,
                            result=results, started_at=now)  # fmt: skip
                items.append((d, o))
            consumer.complete(items)
            todo -= sum(d.run == run for d, _ in items)
        assert todo == 0, f"{todo} chunks of {run} never came"
    finally:
        consumer.close()


def test_reuse_seeding_killed_halfway_then_rerun_records_every_reused_chunk_once(
    backend: BackendEnv, run_id: str
) -> None:
    b = backend.broker()
    reused = REUSED[backend.name]
    source, grown = f"{run_id}-1", f"{run_id}-2"
    seeded = ttg_json("seed", "--run", source, "--params", str(reused), "--chunk-size", "1000",
                      env=backend.env)  # fmt: skip
    assert seeded["_exit"] == 0, seeded
    record_all(b, source)

    args = ["seed", "--run", grown, "--space", f"range:0:{reused + NEW}", "--chunk-size", "1",
            "--reuse", source]  # fmt: skip
    seeder = subprocess.Popen(
        [sys.executable, "-m", "ttg", *args],
        env=child_env(backend.env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    total = NEW + reused

    # The seeder runs in slices of 20 ms and is stopped (SIGSTOP) while we look, however
    # slowly the broker answers: killed (SIGKILL) at the first look that finds it
    # recording reused chunks.
    deadline = time.monotonic() + 120
    while True:
        seeder.send_signal(signal.SIGSTOP)
        try:
            seen = b.progress(grown).seeded_chunks
        except TTGError:  # the run may not exist yet
            seen = 0
        if seen > NEW or seeder.poll() is not None or time.monotonic() > deadline:
            break
        seeder.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    seeder.kill()
    seeder.wait()
    halfway = b.progress(grown).seeded_chunks
    assert NEW < halfway < total, "seeding finished before it could be killed: raise REUSED"

    rerun = ttg_json(*args, env=backend.env)
    assert rerun["_exit"] == 0 and rerun["seeded_chunks"] == total, rerun
    assert rerun["reused"] == reused and rerun["to_compute"] == NEW

    def every_reused_chunk_once() -> bool:
        p = b.progress(grown)
        assert (p.done, p.done_params, p.duplicates) == (reused, reused, 0), p
        return True

    # RabbitMQ's ledger stream is read a moment behind what was confirmed.
    eventually(every_reused_chunk_once, timeout=30, interval=0.2, what="reused chunks counted")
    record_all(b, grown)
    verified = ttg_json("verify", "--run", grown, env=backend.env)
    assert verified["_exit"] == 0, verified
    assert verified["reused_params"] == reused and verified["duplicates"] == 0
