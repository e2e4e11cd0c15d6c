"""A consumer's bookkeeping of its AMQP deliveries: what may be acknowledged, and how.

A task message carries one chunk, or a group of consecutive chunks (the
seeder groups small chunks: one message, one acknowledgement, one log entry
in the quorum queue for many chunks). The worker settles chunks one by one;
the message is acknowledged once every chunk of it is settled, and then, when
every earlier delivery is settled too, with one ``multiple`` acknowledgement
for all of them: on a quorum queue each acknowledgement is a command of the
queue's log, so fewer is faster.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ttg.run import Delivery


@dataclass(eq=False)
class Message:
    """One AMQP delivery of task(s): its tag on its connection, and its chunks' state."""

    generation: int
    tag: int
    consumer_tag: str
    #: Chunks of the message not settled yet.
    open: set[int]
    #: A chunk was abandoned: the message goes back to the queue (nack) when all are settled.
    requeue: bool = False
    #: When it arrived (monotonic), and how many chunks it brought.
    arrived: float = field(default_factory=time.monotonic)
    size: int = 1
    #: Its first chunk (a group's chunks are consecutive).
    first: int = 0
    #: Marked begun, whole (begun.py): a group is marked once, when its first chunk begins.
    marked: bool = False


@dataclass
class Activity:
    """What this worker holds, per run, for the activity snapshots readers show as in flight."""

    #: run -> chunk -> (attempt, since): held now.
    held: dict[str, dict[int, tuple[int, float]]] = field(default_factory=dict)
    #: run -> chunk -> (attempt, since): held at some point since the last snapshot.
    recent: dict[str, dict[int, tuple[int, float]]] = field(default_factory=dict)
    #: A chunk arrived since the last snapshot.
    dirty: bool = False
    #: run -> its parameters running long (``LongParam.to_list``), replaced whole.
    long: dict[str, list[list[Any]]] = field(default_factory=dict)

    def hold(self, run: str, chunks: range, attempt: int) -> None:
        entry = (attempt, time.time())
        held, recent = self.held.setdefault(run, {}), self.recent.setdefault(run, {})
        for chunk in chunks:
            held[chunk] = recent[chunk] = entry
        self.dirty = True

    def drop(self, run: str, chunk: int) -> None:
        # No snapshot for a drop: readers ignore chunks that have an outcome, and a
        # snapshot taken between two chunks would show this worker holding nothing.
        self.held.get(run, {}).pop(chunk, None)

    def snapshots(self) -> dict[str, list[list[float]]]:
        """Per run, the chunks held since the last call: ``[chunk, attempt, since]``.

        Held *since*, not held *now*: chunks of a tenth of a second would
        otherwise mostly be caught between two chunks, holding nothing.
        """
        out = {
            run: [[c, a, s] for c, (a, s) in recent.items()] for run, recent in self.recent.items()
        }
        for run in list(self.recent):
            held = self.held.get(run, {})
            if held:
                self.recent[run] = dict(held)
            else:
                del self.recent[run]  # said once that it holds nothing; quiet after
        self.dirty = False
        return out

    def clear(self) -> None:
        self.held.clear()
        self.recent.clear()


class Inbox:
    """Chunks delivered and not yet handed to the worker, oldest first (thread-safe)."""

    def __init__(self) -> None:
        self._items: collections.deque[Delivery] = collections.deque()
        self._ready = threading.Condition()

    def put(self, ds: list[Delivery]) -> None:
        with self._ready:
            self._items.extend(ds)
            self._ready.notify()

    def take(self, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` chunks, waiting up to ``timeout`` seconds for the first."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            out: list[Delivery] = []
            while self._items and len(out) < limit:
                out.append(self._items.popleft())
            return out

    def take_stale(self, older_than: float) -> list[Delivery]:
        """Remove the chunks of groups that have waited here longer than ``older_than`` seconds."""
        cutoff = time.monotonic() - older_than
        with self._ready:
            stale = [d for d in self._items if d.handle.size > 1 and d.handle.arrived < cutoff]
            if stale:
                gone = {id(d) for d in stale}
                self._items = collections.deque(d for d in self._items if id(d) not in gone)
            return stale

    def clear(self) -> None:
        with self._ready:
            self._items.clear()


class Unacked:
    """Messages of the current connection delivered and not yet acknowledged, in tag order."""

    def __init__(self) -> None:
        self.by_tag: dict[int, Message] = {}

    def add(self, msg: Message) -> None:
        self.by_tag[msg.tag] = msg

    def clear(self) -> None:
        self.by_tag.clear()

    def settle(self, msg: Message, chunk: int, *, requeue: bool = False) -> bool:
        """Mark ``chunk`` of ``msg`` settled; True if that settled the message's last chunk.

        Settling a chunk twice (a record sent again) changes nothing and says False.
        """
        if chunk not in msg.open or self.by_tag.get(msg.tag) is not msg:
            return False
        msg.open.discard(chunk)
        msg.requeue = msg.requeue or requeue
        return not msg.open

    def finish(self, done: list[Message]) -> tuple[int | None, list[int], list[int]]:
        """Forget fully settled messages; say how to tell the broker.

        Returns:
            (tag for one ``multiple`` ack, or None; tags to ack one by one; tags to nack).
        """
        acks: list[int] = []
        nacks: list[int] = []
        for msg in done:
            if self.by_tag.pop(msg.tag, None) is msg:
                (nacks if msg.requeue else acks).append(msg.tag)
        if not acks:
            return None, [], nacks
        top = max(acks)
        # Tags grow with each delivery and by_tag keeps them in that order: if nothing
        # below the highest is still open, one multiple ack settles them all (send the
        # nacks first: they leave the channel's unacknowledged set before it).
        if not self.by_tag or next(iter(self.by_tag)) > top:
            return top, [], nacks
        return None, acks, nacks
