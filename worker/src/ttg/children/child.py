"""A compute child: ``python -m ttg.children.child ALLOW``, started by the worker's supervisor.

It reads chunk requests on its stdin and answers with one line per parameter
(``ttg.children.protocol``). User code shares this process and nothing else:
no broker connection, no broker variable in the environment (the supervisor
scrubs them), and neither protocol pipe where user code would find it by
accident (stdin becomes /dev/null, stdout the stderr, so a stray ``print``
lands in the worker's log instead of the protocol).

The run's memory limit is this process's ``RLIMIT_DATA`` soft limit, set per
request: ``RLIMIT_AS`` would count reserved address space, which numpy and
OpenBLAS reserve by the gigabyte without using it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from ttg import compute
from ttg.children import program, protocol
from ttg.errors import RunDataError, UnsupportedRun, UsageError
from ttg.run import RunSpec

#: ``prctl`` option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class Child:
    """Serves requests from ``requests`` until it closes, writing replies to ``out``."""

    def __init__(self, allow: tuple[str, ...], requests: BinaryIO, out: Callable[[bytes], Any]):
        self.allow = allow
        self.requests = requests
        self.out = out
        self.specs: dict[str, RunSpec] = {}
        self.env = program.scrubbed_env()
        self.memory: int | None = None

    def serve(self) -> None:
        for line in self.requests:
            try:
                req = json.loads(line)
                run, lo, hi = req["run"], int(req["lo"]), int(req["hi"])
                if "spec" in req:
                    self.specs[run] = RunSpec.from_dict(req["spec"], run)
                spec = self.specs[run]
            except (ValueError, KeyError, TypeError, RunDataError, UnsupportedRun) as e:
                self.out(protocol.fatal(f"bad request: {e}"))
                continue
            self.chunk(spec, lo, hi)

    def chunk(self, spec: RunSpec, lo: int, hi: int) -> None:
        self.limit_memory(spec.param_memory_bytes)
        try:
            compute.check_allowed(spec.compute, self.allow)
            fn = None if spec.exec else compute.load(spec.compute, self.allow)
        except UsageError as e:
            self.out(protocol.fatal(str(e)))
            return
        clock = time.perf_counter()
        if spec.work_ms:
            time.sleep(spec.work_ms / 1000)
        for offset, value in enumerate(spec.parameter_space.values(lo, hi)):
            index = lo + offset
            try:
                result = fn(value) if fn else program.run(spec.exec, value, index, self.env)
            except program.ProgramFailed as e:
                self.out(protocol.failed(index, str(e), True))
                continue
            except MemoryError as e:
                if spec.param_memory:
                    text = f"exceeded its memory limit {spec.param_memory}"
                    self.out(protocol.failed(index, text, True))
                else:
                    self.out(protocol.failed(index, compute.describe(e), False))
                continue
            except Exception as e:
                permanent = compute.is_permanent(e, fn)
                tb = compute.traceback_text(e)
                self.out(protocol.failed(index, compute.describe(e), permanent, tb))
                continue
            try:
                line = protocol.computed(index, result)
            except (TypeError, ValueError, RecursionError) as e:
                text = f"result is not JSON-serialisable: {compute.describe(e)}"
                line = protocol.failed(index, text, True)
            self.out(line)
        self.out(protocol.end(time.perf_counter() - clock))

    def limit_memory(self, limit: int | None) -> None:
        if limit == self.memory:
            return
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = resource.RLIM_INFINITY if limit is None else limit
        if hard != resource.RLIM_INFINITY and soft > hard:
            soft = hard
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        self.memory = limit


def _die_with_parent(parent: int) -> None:
    """Be killed when the worker dies, however it dies (Linux ``PR_SET_PDEATHSIG``).

    A worker SIGKILLed (or exiting at a second signal) must not leave a hung
    compute behind: this child is in its own session, so nothing else reaches it.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent and os.getppid() != parent:
        os._exit(0)  # the worker died before the request above took effect


def main() -> None:
    allow = tuple(a for a in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if a)
    _die_with_parent(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    # The protocol's pipes move to private descriptors; user code gets /dev/null and stderr.
    requests = os.fdopen(os.dup(0), "rb")
    out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)

    def out(line: bytes) -> None:
        # One write per line, unbuffered: a crash keeps what was written before it.
        written = os.write(out_fd, line)
        while written < len(line):  # a pipe takes a short line whole; a long one in parts
            written += os.write(out_fd, line[written:])

    Child(allow or compute.DEFAULT_ALLOW, requests, out).serve()


if __name__ == "__main__":
    main()
