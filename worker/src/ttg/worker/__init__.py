"""The worker: fetch chunks, compute them in child processes, settle each exactly once.

The main thread fetches and settles; a compute thread per slot takes a little of
what was fetched at a time (``dispatch.Backlog``) and drives its slot's compute
process, so the worker fetches more while chunks compute, and a slot stuck on a
long chunk holds up no other.

Every delivery ends in exactly one of complete, retry or release, decided in
one place (``Worker.run``'s ``finally``): whatever happens — a compute error, a
broker refusing writes for a while, a signal, a bug — a delivery the worker
could not settle is given back, or, if the broker will not take it back
either, abandoned to the lease, never held by a live worker that no longer
works on it. "The run was deleted" is the only reason to forget one.

Shutdown is the part that matters most, and it is ordered:

1. The first SIGTERM (or SIGINT) stops fetching. Nothing new is taken.
2. The chunk being computed gets ``grace_seconds`` to finish; if it does, its
   outcome is recorded and acknowledged as usual. If not, it is given back
   whole, so another worker redoes it; partial work is never acknowledged.
3. Chunks fetched but not started are given back at once.
4. The consumer leaves: lease dropped, connection closed.
5. Exit 0. A second signal at any point exits at once (code 1); the chunks in
   hand then come back to the queue when the lease runs out.

The parts: ``loop`` (lifecycle, fetching, signals), ``dispatch`` (the backlog and
the compute threads, each driving its slot's compute process), ``settle`` (recording verdicts,
giving chunks back), ``readahead`` (how many chunks to hold), ``state`` (what they
share).
"""

from ttg.worker.loop import Worker
from ttg.worker.readahead import READ_AHEAD_SECONDS, ReadAhead
from ttg.worker.settle import MAX_RETRY_DELAY_SECONDS

__all__ = ["MAX_RETRY_DELAY_SECONDS", "READ_AHEAD_SECONDS", "ReadAhead", "Worker"]
