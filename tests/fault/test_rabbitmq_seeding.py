"""A RabbitMQ seeder killed while its publisher confirms are held back loses no chunk.

On a local node confirms come back before a kill can land, so a seeder whose
cursor covered published-but-unconfirmed tasks would pass every other test
(issue 21). Here the run's task queue is held: its Raft server on the node is
suspended as soon as the first task reaches it (the enqueuer registration goes
through first, or the channel would refuse the publishes). Tasks then wait in
its mailbox, accepted by the broker and never confirmed; the meta stream, where
the cursor goes, keeps working. The seeder is SIGKILLed; then the queue's server
crashes (killed) before it commits the held tasks — what a leader crash or a
lost majority does — and comes back from its log with only what it confirmed.
A rerun of `ttg seed` must publish everything not confirmed: every chunk is
then in the queue (a few confirmed before the hold twice: duplicates the
ledger absorbs), and the run verifies.

A seeder that advanced its cursor on publish instead finishes the first
attempt on the cursor's own confirm, and its rerun publishes nothing: most of
the run is missing (checked by changing ``_confirmed_prefix`` to return
``self.next``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests import scenarios
from tests.conftest import BackendEnv, backend_env
from tests.fault.conftest import LocalHarness, seed
from tests.helpers import ALONE, child_env
from ttg.processes import LocalWorkers, RabbitMQNode

pytestmark = [pytest.mark.fault, pytest.mark.integration]

#: 200 chunks, one task message each (no grouping), all of them sent before the
#: broker's flow control would stop reading the seeder.
CHUNKS, CHUNK = 200, ALONE
SEED_ARGS = ("--params", str(CHUNKS * CHUNK), "--chunk-size", str(CHUNK))

#: Erlang, run on the node: once the run's retry queue exists (declared after the
#: task queue), watch the task queue's Raft server and suspend it when the first
#: enqueue command reaches it. A debug function sees each message the server takes.
HOLD = r"""
Tasks = 'TASKS', Retry = 'RETRY',
Enqueue = fun E(_, 0) -> false;
              E(enqueue, _) -> true;
              E(T, D) when is_tuple(T) -> lists:any(fun(X) -> E(X, D - 1) end, tuple_to_list(T));
              E(_, _) -> false end,
spawn(fun() ->
  Wait = fun W(0) -> timeout;
             W(N) -> case {whereis(Retry), whereis(Tasks)} of
                       {R, P} when is_pid(R), is_pid(P) -> P;
                       _ -> timer:sleep(2), W(N - 1) end end,
  case Wait(30000) of
    timeout -> ok;
    Pid -> sys:install(Pid, {fun(St, Event, _) ->
             case Enqueue(Event, 10) of
               true -> spawn(fun() -> sys:suspend(Pid) end), done;
               false -> St end end, undefined})
  end end),
holding.
"""


@pytest.fixture
def backend(rabbitmq_node: RabbitMQNode) -> Iterator[BackendEnv]:
    yield from backend_env("rabbitmq", rabbitmq_node)


def raft_name(run: str, queue: str) -> str:
    """The registered name of a quorum queue's Raft server (vhost ``/``)."""
    return f"%2F_ttg.{run}.{queue}"


def settled_hold(node: RabbitMQNode, run: str) -> int:
    """Once the task queue's server is suspended and its mailbox stopped growing (every
    task the seeder sent has arrived), the tasks held there; 0 if that never happens."""
    # Looked up at every step, and 0 while it does not exist yet or does not answer: on a
    # loaded machine the seeder declares the queue seconds after this starts watching.
    out = node.ctl_run(
        "eval",
        "Held = fun() -> "
        f"  case whereis('{raft_name(run, 'tasks')}') of undefined -> 0; "
        "    P -> case catch sys:get_status(P, 5000) of "
        "      {status, _, _, [_, suspended | _]} -> "
        "        element(2, process_info(P, message_queue_len)); "
        "      _ -> 0 end end end, "
        "Settle = fun L(Last, 0) -> Last; "
        "  L(Last, N) -> timer:sleep(300), case Held() of "
        "    Last when Last > 0 -> Last; Now -> L(Now, N - 1) end end, "
        "Settle(-1, 150).",
    )
    return int(out.strip())


def crash_tasks_server(node: RabbitMQNode, run: str) -> int:
    """Kill the task queue's Raft server; once restarted from its log, the tasks it holds."""
    name = raft_name(run, "tasks")
    out = node.ctl_run(
        "eval",
        f"Old = whereis('{name}'), exit(Old, kill), "
        "Back = fun B(0) -> timeout; "
        f"  B(N) -> case catch ra:local_query('{name}', fun rabbit_fifo:query_messages_total/1) of "
        "    {ok, {_, Count}, _} -> Count; "
        "    _ -> timer:sleep(100), B(N - 1) end end, "
        "Back(600).",
    )
    return int(out.strip())


def queued_tasks(node: RabbitMQNode, run: str) -> int:
    """Task messages the task queue holds (its Raft state, not the periodic metrics)."""
    out = node.ctl_run(
        "eval",
        f"{{ok, {{_, Count}}, _}} = ra:local_query('{raft_name(run, 'tasks')}', "
        "fun rabbit_fifo:query_messages_total/1), Count.",
    )
    return int(out.strip())


def test_a_seeder_killed_with_its_confirms_held_back_loses_no_chunk(
    rabbitmq_node: RabbitMQNode,
    backend: BackendEnv,
    harness: LocalHarness,
    workers: LocalWorkers,
    run_id: str,
) -> None:
    hold = HOLD.replace("TASKS", raft_name(run_id, "tasks"))
    assert "holding" in rabbitmq_node.ctl_run(
        "eval", hold.replace("RETRY", raft_name(run_id, "retry"))
    )
    seeder = subprocess.Popen(
        [sys.executable, "-m", "ttg", "seed", "--run", run_id, *SEED_ARGS, "--json"],
        env=child_env(backend.env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Held: the task queue's server is suspended with the seeder's tasks waiting.
        assert settled_hold(rabbitmq_node, run_id) > 0, "the task queue was never held"
        seeder.send_signal(signal.SIGKILL)
        seeder.wait(timeout=30)
    finally:
        if seeder.poll() is None:
            seeder.kill()
            seeder.wait()
    # The queue's server crashes with the tasks it never confirmed; it restarts
    # from its log (the node's supervisor) with the ones it did.
    before = crash_tasks_server(rabbitmq_node, run_id)
    assert before < CHUNKS, f"nothing was held back: {before} tasks were confirmed"

    seed(backend, run_id, *SEED_ARGS)
    queued = queued_tasks(rabbitmq_node, run_id)
    assert queued >= CHUNKS, f"only {queued} of {CHUNKS} chunks are in the task queue"

    workers.start(2)
    scenarios.wait_complete(harness, run_id, timeout=120)
    report = scenarios.assert_verified(harness, run_id)
    assert report["closed_form"] == "match", report
    # Exactly once: each chunk counted once; the re-sent ones are duplicates.
    assert report["total_chunks"] == CHUNKS
    assert report["duplicates"] <= queued - CHUNKS, report
