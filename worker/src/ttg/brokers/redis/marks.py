"""Begun marks written without a round trip: a connection of its own, with no replies.

A worker marks each chunk begun just before its compute starts (issue 17 item 5:
a death counts only against what was begun). Waiting for a reply to each mark
would put a round trip before every chunk; instead this connection says
``CLIENT REPLY OFF`` once and then only writes. The mark is in the kernel's
hands when ``mark`` returns, so a compute that kills its worker at once is still
counted: the kernel sends what was written before closing the socket, and with
no replies ever sent to it there is no unread data that would turn the close
into a reset. Redis Cluster clients write marks with ``begin.lua`` instead (a
node per slot; the script's round trip is the price there).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis.exceptions as rex

#: What ends a marks connection (then it is opened again, once, and the mark written again).
_LOST = (rex.ConnectionError, rex.TimeoutError, OSError)


class MarkWriter:
    """Writes ``HSET <begun key> <entry id> 1...`` on a connection that gets no replies."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._conn: Any = None
        self._lock = threading.Lock()

    def mark(self, begun_key: str, *entry_ids: str) -> None:
        """Mark ``entry_ids`` (one write); the bytes are with the kernel when this returns.

        Raises:
            redis.exceptions.ConnectionError: not written (the broker cannot be reached).
        """
        fields = [x for entry_id in entry_ids for x in (entry_id, "1")]
        with self._lock:
            for last in (False, True):
                try:
                    if self._conn is None:
                        conn = self._pool.make_connection()
                        conn.connect()
                        self._send(conn, "CLIENT", "REPLY", "OFF")
                        self._conn = conn
                    self._send(self._conn, "HSET", begun_key, *fields)
                    return
                except _LOST as e:
                    self._drop()
                    if last:
                        raise rex.ConnectionError(f"begun mark not written: {e}") from None

    @staticmethod
    def _send(conn: Any, *args: str) -> None:
        # No health check: its PING would wait for a reply that never comes.
        conn.send_packed_command(conn.pack_command(*args), check_health=False)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()

    def close(self) -> None:
        with self._lock:
            self._drop()
