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
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from ttg.children import program, protocol
from ttg.compute import ChunkResult
from ttg.jsontext import compact
from ttg.run import RunSpec

log = logging.getLogger(__name__)

#: Read size of a child's replies.
READ_BYTES = 1 << 16
#: Most chunk requests queued with a child at once (each is a short line; a pipe holds 64 KiB).
PIPELINE = 64
#: A child answers at once after every this many chunks queued together (``_Child.send``).
REPLY_EVERY = 8
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

    def send(self, requests: Sequence[tuple[RunSpec, int, int]], careful: bool = False) -> None:
        """Queue ``requests`` (spec, lo, hi) in one write: the child works through them in
        order. ``careful``: the first one's results come back one line each. The child
        answers at once at the end of the last one and of every ``REPLY_EVERY``-th; it
        may hold the others' answers a moment, so that it wakes the worker less often."""
        lines = []
        last = len(requests) - 1
        for i, (spec, lo, hi) in enumerate(requests):
            line = b'{"run":%s,"lo":%d,"hi":%d' % (json.dumps(spec.run).encode(), lo, hi)
            known = self.specs.get(spec.run)
            if known is not spec and known != spec:
                self.specs[spec.run] = spec
                line += b',"spec":' + compact(spec.to_dict()).encode()
            if careful and i == 0:
                line += b',"careful":true'
            if i < last and (i + 1) % REPLY_EVERY:
                line += b',"hold":true'
            lines.append(line + b"}")
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


@dataclass(frozen=True)
class Busy:
    """What one slot's child is computing now."""

    run: str
    #: The chunk's first parameter, and the parameter being computed.
    lo: int
    param: int
    #: When the chunk, and that parameter, started (epoch seconds, as the worker saw it).
    started: float
    since: float


class _Chunk:
    """What the children answered so far for one chunk ``[lo, hi)``."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi, self.next = lo, hi, lo
        self.started = self.since = time.time()
        self.results: list[Any] = [None] * (hi - lo)
        self.errors: list[tuple[int, str, bool, str]] = []
        #: The parameter the child said it is on (``protocol.At``), if that was its last word.
        self.on: int | None = None
        #: Ask for a line per parameter: a crash lost what the child held back.
        self.careful = False
        #: Every result came in one line: its JSON text, passed on without encoding again.
        self.raw: bytes | None = None

    def fail(self, error: str, permanent: bool = True, traceback: str = "") -> None:
        """The next parameter failed (nothing, once every parameter is in)."""
        if self.next < self.hi:
            self.errors.append((self.next, error, permanent, traceback))
            self.next += 1
            self.since = time.time()
        self.on = None

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
        if isinstance(reply, protocol.At):
            if reply.index != self.next:
                raise protocol.ProtocolError(f"at {reply.index} where {self.next} was due")
            self.on = reply.index
            return False
        first = reply.first if isinstance(reply, protocol.Computed) else reply.index
        if first != self.next:
            raise protocol.ProtocolError(f"parameter {first} where {self.next} was due")
        self.on = None
        if isinstance(reply, protocol.Computed):
            n = len(reply.results)
            if n > self.hi - self.next:
                raise protocol.ProtocolError(f"{n} results where {self.hi - self.next} were due")
            at = self.next - self.lo
            self.raw = reply.raw if n == self.hi - self.lo else None
            self.results[at : at + n] = reply.results
            self.next += n
            self.since = time.time()
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
        #: Per slot, the chunk its child is on (read by ``busy`` from another thread).
        self._on: list[tuple[str, _Chunk] | None] = [None] * len(self._children)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children if c is not None]

    def busy(self) -> list[Busy]:
        """What each slot's child is computing now."""
        out = []
        for on in list(self._on):
            if on is not None:
                run, c = on
                if c.next < c.hi:
                    out.append(Busy(run, c.lo, c.next, c.started, c.since))
        return out

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
        for result in self.compute_many(slot, [(spec, lo, hi)], depth=1):
            if isinstance(result, ComputeUnavailable):
                raise result
            return result
        raise AssertionError("compute_many yields one result per chunk")  # pragma: no cover

    def compute_many(
        self,
        slot: int,
        chunks: Sequence[tuple[RunSpec, int, int]],
        begin: Callable[[int, int], None] | None = None,
        depth: int = 1,
    ) -> Generator[ChunkResult | ComputeUnavailable, None, None]:
        """Each chunk's result in order, every parameter's error kept with it.

        Up to ``depth`` chunks (at most ``PIPELINE``) are queued with the child,
        topped up as it works through them: it goes from one to the next without
        waiting for the worker.
        ``begin(i, j)`` runs just before ``chunks[i:j]`` are first sent (the worker
        marks them begun there). A consumer that stops early leaves the child busy
        with the rest: it is replaced.

        Raises:
            Aborted: ``abort`` was called meanwhile.
            Whatever ``begin`` raises.
        """
        depth = max(1, min(PIPELINE, depth))
        child: _Child | None = None
        sent = 0  # chunks[:sent] were begun and sent (to this child or a replaced one)
        held = 0  # chunks[pos : pos + held] are queued with ``child``, in order

        def send(
            child: _Child, pos: int, first: tuple[RunSpec, int, int] | None, careful: bool
        ) -> int:
            """Queue ``first`` (this chunk's rest, if not queued) and the chunks after it."""
            nonlocal sent
            end = min(len(chunks), pos + depth)
            if end > sent:
                if begin is not None:
                    begin(sent, end)
                sent = end
            start = pos + held + (first is not None)
            child.send(([first] if first else []) + list(chunks[start:end]), careful)
            return end - pos

        try:
            for pos, (spec, lo, hi) in enumerate(chunks):
                chunk = _Chunk(lo, hi)
                self._on[slot] = (spec.run, chunk)
                clock = time.perf_counter()
                result: ChunkResult | ComputeUnavailable
                try:
                    while chunk.next < hi:
                        if child is None or held == 0:
                            child, held = self._child(slot), 0
                            held = send(child, pos, (spec, chunk.next, hi), chunk.careful)
                        elif held <= depth // 2 and pos + held < len(chunks):
                            held = send(child, pos, None, False)
                        if self._follow(slot, child, chunk, spec.param_timeout or None):
                            break
                        # It was replaced, and the requests it held went with it.
                        child, held = None, 0
                    result = ChunkResult(
                        chunk.results,
                        chunk.errors,
                        chunk.started,
                        time.perf_counter() - clock,
                        _text(chunk.raw) if not chunk.errors else None,
                    )
                except ComputeUnavailable as e:
                    result = e
                held = max(0, held - 1)
                yield result
            child = None
        finally:
            self._on[slot] = None
            if child is not None and held:
                self._replace(slot, child)

    def _follow(self, slot: int, child: _Child, chunk: _Chunk, timeout: float | None) -> bool:
        """Read ``child``'s replies into ``chunk``: True when its request is done, False
        when the child was replaced (crashed, overran, broke the protocol).

        A crash or an overrun right after the child said which parameter it is on
        (``protocol.At``) is that parameter's; otherwise the child may have held
        back results of parameters before the culprit, so the chunk goes on
        ``careful`` (a line per parameter) to find it.

        Raises:
            ComputeUnavailable: the child cannot run this compute (it goes on to its next).
            Aborted: ``abort`` was called meanwhile.
        """
        while True:
            # A child may hold back what it has to say for a moment: no overrun, that.
            slack = 2 * protocol.FLUSH_SECONDS
            deadline = None if timeout is None else time.monotonic() + timeout + slack
            try:
                replies = child.next_replies(deadline)
                if self._aborted.is_set():
                    self._replace(slot, child)
                    raise Aborted
                if not replies:  # None: it overran its limit; empty: it died
                    code = self._replace(slot, child)
                    if chunk.careful or chunk.on == chunk.next:
                        why = program.describe_exit(code) if replies is not None else None
                        chunk.fail(why or f"timed out after {timeout:g} s")
                    else:
                        chunk.careful = True
                    return False
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


def _text(raw: bytes | None) -> str | None:
    """A child's JSON text of a chunk's results as a str (None: not UTF-8, encode anew)."""
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None
