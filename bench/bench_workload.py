"""The benchmark's workload, identical for TTG and its peers.

Parameter p in 0..N-1 maps to ``(p * 2654435761) % 1000003`` (Knuth's
multiplicative hash, reduced): integer work of a few hundred nanoseconds, so
the figures measure the queue, not the compute. Workers import it as
``bench_workload:knuth`` (``bench/`` on their PYTHONPATH, the module in
``TTG_COMPUTE_ALLOW``); Dramatiq's actor in ``peer_dramatiq`` calls the same
function.
"""

from __future__ import annotations

import functools

#: The compute name a TTG run records.
COMPUTE = "bench_workload:knuth"
#: The module prefix workers must allow (TTG_COMPUTE_ALLOW).
MODULE = "bench_workload"

MULTIPLIER = 2654435761
MODULUS = 1000003


def knuth(p: int) -> int:
    """The result of parameter ``p``."""
    return (p * MULTIPLIER) % MODULUS


@functools.cache
def total(params: int) -> int:
    """Sum of every result of a run over 0..params-1: what a correct result set adds up to."""
    return sum((p * MULTIPLIER) % MODULUS for p in range(params))


#: The results-store figure's compute (bench/store.py): ``blob``.
BLOB = "bench_workload:blob"
#: Floats in one ``blob`` result: about 200 kB of JSON (a small array, as simulations return).
BLOB_ITEMS = 22_500


def blob(p: int) -> list[float]:
    """About 200 kB of JSON per parameter: ``BLOB_ITEMS`` floats starting at ``p``."""
    return [round(p + i / 1000, 3) for i in range(BLOB_ITEMS)]


#: The concurrency figure's compute (bench/concurrency.py): ``spin``.
SPIN = "bench_workload:spin"
#: Loop iterations of one ``spin`` parameter: some milliseconds of pure CPU.
SPIN_ROUNDS = 200_000


def spin(p: int) -> int:
    """CPU-bound: ``SPIN_ROUNDS`` multiply-adds, a deterministic result per parameter."""
    x = p
    for _ in range(SPIN_ROUNDS):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x
