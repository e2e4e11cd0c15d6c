"""The small HTTP server behind /metrics, /healthz, /readyz and /api/queue: nothing exhausts it.

A thread per connection (``ThreadingHTTPServer``) with no timeout let idle
connections pile up: 18,000 of them reached a pod's memory limit, and the
probes' answers with it. Here one thread runs an asyncio loop that holds every
connection (an idle one costs a socket and a few kilobytes, never a thread),
and routes run on a pool of ``ROUTE_THREADS`` threads, so a slow route never
stalls the reading of the next request. Bounds:

- a client has ``REQUEST_TIMEOUT_SECONDS`` to send its request, and as long to
  take the answer; then its connection is closed;
- a request head larger than ``MAX_REQUEST_BYTES`` is refused;
- beyond ``MAX_CONNECTIONS`` open connections, the oldest one still waiting
  for its request is closed: a flood of idle connections costs bounded memory
  and descriptors, and a probe that sends its request at once is answered;
- one request per connection (``Connection: close``), as the standard
  library's server did: scrapes and probes open a connection each time anyway.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus

log = logging.getLogger(__name__)

#: An HTTP route: () -> (status, body, content type).
Route = Callable[[], tuple[int, bytes, str]]

#: Seconds a client has to send its request, and again to take the answer.
REQUEST_TIMEOUT_SECONDS = 10.0
#: Connections held at once; past it the oldest one still silent is closed.
MAX_CONNECTIONS = 128
#: Largest request head (request line and headers), bytes.
MAX_REQUEST_BYTES = 8192
#: Threads that run routes (a /metrics render, a probe): the only threads besides the loop's.
ROUTE_THREADS = 2
#: Connections the kernel queues before the loop accepts them.
BACKLOG = 512


class HTTPServer:
    """Serves ``routes`` (path -> Route) for GET and HEAD, in a daemon thread of its own.

    The socket is bound in the constructor, so a port in use fails at once, in
    the caller's thread.

    Raises:
        OSError: the port cannot be bound.
    """

    def __init__(
        self,
        port: int,
        routes: Mapping[str, Route],
        *,
        host: str = "0.0.0.0",  # noqa: S104 - pods listen on all interfaces
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.routes = dict(routes)
        self.max_connections = max_connections
        self.timeout = timeout
        self.sock = socket.create_server((host, port), backlog=BACKLOG)
        self.sock.setblocking(False)
        #: Connections still waiting for their request, oldest first (the ones we may drop).
        self._waiting: collections.OrderedDict[asyncio.StreamWriter, None] = (
            collections.OrderedDict()
        )
        #: Every connection open and not dropped yet.
        self._open: set[asyncio.StreamWriter] = set()
        self._pool = cf.ThreadPoolExecutor(ROUTE_THREADS, thread_name_prefix="ttg-http-route")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="ttg-http", daemon=True)
        self._started = threading.Event()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections open now (for tests and debugging)."""
        return len(self._open)

    def start(self) -> HTTPServer:
        self._thread.start()
        self._started.wait()
        return self

    def close(self) -> None:
        """Stop serving and close every connection."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                # The backlog again: start_server listens anew, with 100 by default.
                asyncio.start_server(
                    self._serve, sock=self.sock, limit=MAX_REQUEST_BYTES, backlog=BACKLOG
                )
            )
        finally:
            self._started.set()
        try:
            self._loop.run_forever()
        finally:
            if self._server is not None:
                self._server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def _make_room(self) -> None:
        """Close the oldest connections still silent until we hold no more than the maximum."""
        while len(self._open) > self.max_connections and self._waiting:
            # Counted closed at once: its task sees the end only at the loop's next turn.
            oldest, _ = self._waiting.popitem(last=False)
            self._open.discard(oldest)
            oldest.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        self._waiting[writer] = None
        self._make_room()
        try:
            try:
                head = await asyncio.wait_for(_read_head(reader), self.timeout)
            finally:
                self._waiting.pop(writer, None)
            if head is None:
                return
            response = await self._respond(head)
            writer.write(response)
            await asyncio.wait_for(writer.drain(), self.timeout)
        except (TimeoutError, ConnectionError, OSError, ValueError):
            pass  # a client too slow, gone, or sending more than a request head
        finally:
            self._open.discard(writer)
            writer.transport.abort()

    async def _respond(self, request_line: bytes) -> bytes:
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(HTTPStatus.BAD_REQUEST, b"bad request\n", "text/plain")
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, b"GET or HEAD only\n", "text/plain")
        route = self.routes.get(target.split("?", 1)[0])
        if route is None:
            code, body, ctype = 404, b"not found\n", "text/plain"
        else:
            try:
                code, body, ctype = await self._loop.run_in_executor(self._pool, route)
            except Exception as e:
                log.warning("http %s failed: %s: %s", target[:100], type(e).__name__, e)
                code, body, ctype = 500, b"internal error\n", "text/plain"
        return _response(HTTPStatus(code), body, ctype, head_only=method == "HEAD")


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The request line, after reading the whole head; None if the client sent nothing.

    Raises:
        ValueError: the head is larger than ``MAX_REQUEST_BYTES``.
    """
    request_line = await reader.readline()
    if not request_line.strip():
        return None
    size = len(request_line)
    while True:
        line = await reader.readline()
        size += len(line)
        if size > MAX_REQUEST_BYTES:
            raise ValueError("request head too large")
        if line in (b"\r\n", b"\n", b""):
            return request_line


def _response(code: HTTPStatus, body: bytes, ctype: str, *, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {code.value} {code.phrase}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + body
