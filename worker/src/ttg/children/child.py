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
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from ttg import compute
from ttg.children import program, protocol
from ttg.errors import RunDataError, UnsupportedRun, UsageError
from ttg.run import RunSpec

#: ``prctl`` option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1
FLUSH_SECONDS = protocol.FLUSH_SECONDS


class Output:
    """A child's replies: results held back up to ``FLUSH_SECONDS``, everything in order.

    Fast parameters cost one write (and one wake-up of the worker) per request or
    per ``FLUSH_SECONDS``, not one each, and their results are encoded together.
    ``tick``, on a thread of its own, writes what waits and says which parameter is
    running long, so the worker learns of a slow parameter while it runs: a time
    limit then blames the right one. What a crash loses is at most
    ``FLUSH_SECONDS`` of results, which the supervisor computes again (``careful``:
    a line per parameter) to find the one that crashed.

    The computing thread only appends to ``held`` (atomic under the GIL); whatever
    takes from it holds the lock. The parameter computing is the one after those
    held: ``first + len(held)``.
    """

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        self._write = write
        self._lock = threading.Lock()
        #: Results not encoded yet, of parameters ``first``, ``first + 1``...
        self.held: list[Any] = []
        self.first = 0
        #: Lines encoded and not written yet (earlier requests' ends, errors).
        self._lines = bytearray()
        #: A request is being computed.
        self.computing = False
        #: Write each result at once (asked for, or a parameter of this request ran long).
        self.careful = False
        self._announced = -1
        self._seen = -1

    def request(self, lo: int, careful: bool) -> None:
        """A request starts at ``lo`` (nothing is held of it yet)."""
        with self._lock:
            self.first = lo
            self.careful = careful
            self.computing = True

    def flush(self) -> None:
        with self._lock:
            self._encode()
            self._flush()

    def line(self, data: bytes, after: int) -> None:
        """A line of its own (an error) after the results held; those held from now on
        start at ``after``."""
        with self._lock:
            self._encode()
            self._lines += data
            self.first = after
            self._seen = -1
            if self.careful:
                self._flush()

    def done(self, data: bytes, hold: bool) -> None:
        """The request's last line; ``hold``: it may wait for the next tick (the worker
        did not ask to hear of this request at once)."""
        with self._lock:
            self._encode()
            self._lines += data
            self.computing = False
            if not hold or self.careful:
                self._flush()

    def tick(self) -> None:
        with self._lock:
            on = self.first + len(self.held) if self.computing else -1
            if on >= 0 and on == self._seen and on != self._announced:
                # On it since the last tick at least. From now on each result is
                # written at once: after an ``at``, silence means it is still on it.
                self._encode()
                self._lines += protocol.at(on)
                self._announced = on
                self.careful = True
            else:
                self._encode()
            self._flush()
            self._seen = on

    def _encode(self) -> None:
        held = self.held
        n = len(held)
        if n:
            values = held[:n]
            del held[:n]
            self._lines += _computed(self.first, values)
            self.first += n

    def _flush(self) -> None:
        if self._lines:
            data = bytes(self._lines)
            self._lines.clear()
            self._write(data)

    def watch(self) -> None:
        """Tick forever on a daemon thread."""

        def loop() -> None:
            while True:
                time.sleep(FLUSH_SECONDS / 2)
                self.tick()

        threading.Thread(target=loop, name="ttg-child-output", daemon=True).start()


def _computed(first: int, values: list[Any]) -> bytes:
    """The lines of ``values``, results of parameters ``first``...: one, unless it would
    be long (then halves), and an error line for each result JSON cannot carry."""
    try:
        line = protocol.computed(first, values)
    except protocol.Unencodable as e:
        if len(values) == 1:
            text = f"result is not JSON-serialisable: {e}"
            return protocol.failed(first, text, True)
        line = b""
    if line and (len(values) == 1 or len(line) <= protocol.SPLIT_BYTES):
        return line
    half = len(values) // 2
    return _computed(first, values[:half]) + _computed(first + half, values[half:])


class Child:
    """Serves requests from ``requests`` until it closes, writing replies to ``out``."""

    def __init__(self, allow: tuple[str, ...], requests: BinaryIO, out: Output):
        self.allow = allow
        self.requests = requests
        self.out = out
        self.specs: dict[str, RunSpec] = {}
        self.env = program.scrubbed_env()
        self.memory: int | None = None
        #: The last spec served and its compute, allowed and imported.
        self._ready: tuple[RunSpec, compute.ComputeFn | None] | None = None

    def serve(self) -> None:
        for line in self.requests:
            try:
                req = json.loads(line)
                run, lo, hi = req["run"], int(req["lo"]), int(req["hi"])
                if "spec" in req:
                    self.specs[run] = RunSpec.from_dict(req["spec"], run)
                spec = self.specs[run]
            except (ValueError, KeyError, TypeError, RunDataError, UnsupportedRun) as e:
                self.out.done(protocol.fatal(f"bad request: {e}"), hold=False)
                continue
            self.chunk(spec, lo, hi, req.get("careful") is True, req.get("hold") is True)

    def chunk(
        self, spec: RunSpec, lo: int, hi: int, careful: bool = False, hold: bool = False
    ) -> None:
        self.limit_memory(spec.param_memory_bytes)
        if self._ready is not None and self._ready[0] is spec:
            fn = self._ready[1]
        else:
            try:
                compute.check_allowed(spec.compute, self.allow)
                fn = None if spec.exec else compute.load(spec.compute, self.allow)
            except UsageError as e:
                self.out.done(protocol.fatal(str(e)), hold=False)
                return
            self._ready = (spec, fn)
        out = self.out
        out.request(lo, careful)
        held = out.held
        clock = time.perf_counter()
        if spec.work_ms:
            time.sleep(spec.work_ms / 1000)
        for index, value in enumerate(spec.parameter_space.values(lo, hi), lo):
            try:
                result = fn(value) if fn else program.run(spec.exec, value, index, self.env)
            except Exception as e:
                out.line(self.failed(spec, fn, index, e), index + 1)
                continue
            held.append(result)
            if out.careful:
                out.flush()
        out.done(protocol.end(time.perf_counter() - clock), hold)

    @staticmethod
    def failed(spec: RunSpec, fn: compute.ComputeFn | None, index: int, e: Exception) -> bytes:
        """The line of parameter ``index``, which raised ``e``."""
        if isinstance(e, program.ProgramFailed):
            return protocol.failed(index, str(e), True)
        if isinstance(e, MemoryError):
            if spec.param_memory:
                text = f"exceeded its memory limit {spec.param_memory}"
                return protocol.failed(index, text, True)
            return protocol.failed(index, compute.describe(e), False)
        tb = compute.traceback_text(e)
        return protocol.failed(index, compute.describe(e), compute.is_permanent(e, fn), tb)

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

    def write(data: bytes) -> None:
        # Straight to the pipe, no buffer of Python's: a crash keeps what was written.
        written = os.write(out_fd, data)
        while written < len(data):  # a pipe takes a short write whole; a long one in parts
            written += os.write(out_fd, data[written:])

    out = Output(write)
    out.watch()
    Child(allow or compute.DEFAULT_ALLOW, requests, out).serve()


if __name__ == "__main__":
    main()
