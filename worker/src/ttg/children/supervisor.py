"""The worker's side of compute isolation: persistent children, one per concurrency slot.

A chunk costs one request line to a child and one line back per parameter.
Waiting is a blocking read with a deadline (``selectors``), never a poll: a
parameter's time limit runs from the child's last line. When a child dies or
overruns, the parameter it was on gets an error naming why, the child is
replaced, and the chunk goes on from the next parameter; the chunk's other
parameters keep their results and the worker never notices beyond that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Generator, Sequence
from typing import IO, Any

from ttg.children import program, protocol
from ttg.compute import ChunkResult
from ttg.run import RunSpec

log = logging.getLogger(__name__)

#: Read size of a child's replies.
READ_BYTES = 1 << 16
#: Most chunk requests queued with a child at once (each is a short line; a pipe holds 64 KiB).
PIPELINE = 64
#: How long a closing child may take to exit before it is killed.
CLOSE_SECONDS = 2.0


class ComputeUnavailable(Exception):
    """The run's compute cannot run in a child here (not allowed, not importable...)."""


class Aborted(Exception):
    """The supervisor was told to stop (shutdown past its grace): the chunk is given back."""


class _Child:
    """One child process and what it has been told."""

    def __init__(self, allow: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ttg.children.child", ",".join(allow), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            # Its own process group: a timeout kills the programs it started too, and a
            # terminal's Ctrl-C reaches the worker, which decides what the child gets.
            start_new_session=True,
            env=program.scrubbed_env(),
        )
        self.stdin: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        self.fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        os.set_blocking(self.fd, False)
        self.buf = bytearray()
        self.eof = False
        #: Replies decoded ahead of the request they answer (several arrive in one read).
        self.replies: deque[protocol.Reply] = deque()
        #: The spec each run was sent with (sent again if a run's spec differs).
        self.specs: dict[str, RunSpec] = {}
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, requests: Sequence[tuple[RunSpec, int, int]]) -> None:
        """Queue ``requests`` (spec, lo, hi) in one write: the child works through them in order."""
        lines = []
        for spec, lo, hi in requests:
            req: dict[str, Any] = {"run": spec.run, "lo": lo, "hi": hi}
            if self.specs.get(spec.run) != spec:
                req["spec"] = spec.to_dict()
                self.specs[spec.run] = spec
            lines.append(json.dumps(req, separators=(",", ":")).encode())
        try:
            self.stdin.write(b"\n".join(lines) + b"\n")
            self.stdin.flush()
        except OSError:
            self.eof = True  # it died: the read below says how

    def lines(self, deadline: float | None) -> list[bytes] | None:
        """The complete lines there are (at least one); None at the deadline; [] at the end."""
        while True:
            end = self.buf.rfind(b"\n")
            if end >= 0:
                ready = bytes(self.buf[:end])
                del self.buf[: end + 1]
                return ready.split(b"\n")
            if self.eof:
                return []
            if len(self.buf) > protocol.MAX_LINE_BYTES:
                raise protocol.ProtocolError("a line longer than the protocol allows")
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return None
            if not self.selector.select(timeout):
                return None
            try:
                data = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                continue
            if not data:
                self.eof = True
            self.buf += data

    def next_replies(self, deadline: float | None) -> deque[protocol.Reply] | None:
        """The replies read and not yet taken (at least one); None at the deadline; an empty
        deque once the child's output ended.

        Raises:
            ProtocolError: the child wrote something that is not a reply.
        """
        if not self.replies:
            lines = self.lines(deadline)
            if lines is None:
                return None
            self.replies.extend(protocol.parse_many(lines) if lines else ())
        return self.replies

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def reap(self) -> int:
        """Wait for the (ending) child; its return code."""
        try:
            return self.proc.wait(CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def close(self) -> None:
        self.selector.close()
        for f in (self.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()  # type: ignore[union-attr]


class _Chunk:
    """What the children answered so far for one chunk ``[lo, hi)``."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi, self.next = lo, hi, lo
        self.started = time.time()
        self.results: list[Any] = [None] * (hi - lo)
        self.errors: list[tuple[int, str, bool, str]] = []

    def fail(self, error: str, permanent: bool = True, traceback: str = "") -> None:
        """The next parameter failed (nothing, once every parameter is in)."""
        if self.next < self.hi:
            self.errors.append((self.next, error, permanent, traceback))
            self.next += 1

    def take(self, reply: protocol.Reply) -> bool:
        """Record one reply; True when the request it answers is done.

        Raises:
            ComputeUnavailable: the child cannot run this compute.
            ProtocolError: the reply is out of order or incomplete.
        """
        if isinstance(reply, protocol.Fatal):
            raise ComputeUnavailable(reply.error)
        if isinstance(reply, protocol.End):
            if self.next < self.hi:
                raise protocol.ProtocolError(f"done, but parameter {self.next} is missing")
            return True
        if reply.index != self.next:
            raise protocol.ProtocolError(f"parameter {reply.index} where {self.next} was due")
        if isinstance(reply, protocol.Computed):
            self.results[self.next - self.lo] = reply.result
            self.next += 1
        else:
            self.fail(reply.error, reply.permanent, reply.traceback)
        return False


class Supervisor:
    """Children for ``slots`` concurrent chunks; ``compute`` runs one chunk in one slot."""

    def __init__(self, allow: Sequence[str], slots: int = 1) -> None:
        self.allow = tuple(allow)
        self._children: list[_Child | None] = [None] * max(1, slots)
        self._lock = threading.Lock()
        self._aborted = threading.Event()

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children if c is not None]

    def start(self) -> None:
        """Start every slot's child now, so the first chunk does not wait for one."""
        for slot in range(len(self._children)):
            self._child(slot)

    def _child(self, slot: int) -> _Child:
        with self._lock:
            if self._aborted.is_set():
                raise Aborted
            child = self._children[slot]
            if child is None:
                child = self._children[slot] = _Child(self.allow)
            return child

    def _replace(self, slot: int, child: _Child) -> int:
        """End ``child`` (killing it if still alive); its return code."""
        child.kill()
        code = child.reap()
        child.close()
        with self._lock:
            if self._children[slot] is child:
                self._children[slot] = None
        return code

    def compute(self, slot: int, spec: RunSpec, lo: int, hi: int) -> ChunkResult:
        """Every parameter of ``[lo, hi)`` computed in ``slot``'s child (``compute_many`` of one).

        Raises:
            ComputeUnavailable: the run's compute cannot run here at all.
            Aborted: ``abort`` was called meanwhile.
        """
        for result in self.compute_many(slot, [(spec, lo, hi)]):
            if isinstance(result, ComputeUnavailable):
                raise result
            return result
        raise AssertionError("compute_many yields one result per chunk")  # pragma: no cover

    def compute_many(
        self, slot: int, chunks: Sequence[tuple[RunSpec, int, int]]
    ) -> Generator[ChunkResult | ComputeUnavailable, None, None]:
        """Each chunk's result in order, every parameter's error kept with it.

        The chunks are queued with the child up front (``PIPELINE`` at a time), so it
        goes from one to the next without a round trip. A consumer that stops early
        leaves the child busy with the rest: it is replaced.

        Raises:
            Aborted: ``abort`` was called meanwhile.
        """
        pending = list(chunks)
        child: _Child | None = None
        queued = 0  # requests of ``pending`` the child holds
        try:
            while pending:
                spec, lo, hi = pending[0]
                chunk = _Chunk(lo, hi)
                clock = time.perf_counter()
                result: ChunkResult | ComputeUnavailable
                try:
                    while chunk.next < hi:
                        if child is None or queued == 0:
                            child = self._child(slot)
                            batch = [(spec, chunk.next, hi), *pending[1:PIPELINE]]
                            child.send(batch)
                            queued = len(batch)
                        if self._follow(slot, child, chunk, spec.param_timeout or None):
                            break
                        # It was replaced, and the requests it held went with it.
                        child, queued = None, 0
                    result = ChunkResult(
                        chunk.results, chunk.errors, chunk.started, time.perf_counter() - clock
                    )
                except ComputeUnavailable as e:
                    result = e
                pending.pop(0)
                queued = max(0, queued - 1)
                yield result
            child = None
        finally:
            if child is not None and queued:
                self._replace(slot, child)

    def _follow(self, slot: int, child: _Child, chunk: _Chunk, timeout: float | None) -> bool:
        """Read ``child``'s replies into ``chunk``: True when its request is done, False
        when the child was replaced (crashed, overran, broke the protocol).

        Raises:
            ComputeUnavailable: the child cannot run this compute (it goes on to its next).
            Aborted: ``abort`` was called meanwhile.
        """
        while True:
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                replies = child.next_replies(deadline)
            except protocol.ProtocolError as e:
                log.error("compute child %d broke the protocol (%s): replaced", child.pid, e)
                self._replace(slot, child)
                chunk.fail(f"compute process broke the protocol: {e}")
                return False
            if self._aborted.is_set():
                self._replace(slot, child)
                raise Aborted
            if replies is None:  # the parameter overran its limit
                self._replace(slot, child)
                chunk.fail(f"timed out after {timeout:g} s")
                return False
            if not replies:  # the child died on the next parameter
                chunk.fail(program.describe_exit(self._replace(slot, child)))
                return False
            try:
                while replies:
                    if chunk.take(replies.popleft()):
                        return True
            except protocol.ProtocolError as e:
                log.error("compute child %d broke the protocol (%s): replaced", child.pid, e)
                self._replace(slot, child)
                chunk.fail(f"compute process broke the protocol: {e}")
                return False

    def abort(self) -> None:
        """Kill every child now; a ``compute`` in progress raises ``Aborted``."""
        self._aborted.set()
        with self._lock:
            children = [c for c in self._children if c is not None]
        for c in children:
            c.kill()

    def close(self) -> None:
        """End every child: a closed stdin ends an idle one; a busy one is killed."""
        with self._lock:
            children = [c for c in self._children if c is not None]
            self._children = [None] * len(self._children)
        for c in children:
            with contextlib.suppress(OSError):
                c.stdin.close()
            c.reap()
            c.close()
