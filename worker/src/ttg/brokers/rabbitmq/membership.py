"""Whether a RabbitMQ cluster is whole, seen over AMQP alone (no management API, no cookie).

A quorum queue or stream gets a member on each node running in the cluster
when it is declared, and keeps that many: one declared while the other nodes
were still joining lives on the first node only, and its runs stall when that
node is lost. So with ``TTG_RABBITMQ_EXPECT_NODES`` set, TTG declares nothing
until that many nodes of its broker URL run in one cluster.

How a client sees membership: it declares a private (exclusive, server-named)
queue through one node, which records it in the cluster's metadata, and asks
each other node for that queue. A node of the same cluster knows it and refuses
us access (405, RESOURCE_LOCKED: it belongs to another connection); a node
outside the cluster, still booting alone or joining, does not know it (404).
The queue goes with the connection that declared it.

Only the first time: once TTG's global stream (``ttg.runs``) exists, TTG
declared it on a whole cluster, and a node down later is what the cluster
outlives — a worker or command started then must not wait for that node.
"""

from __future__ import annotations

import contextlib
import logging

import pika
import pika.exceptions as pex

from ttg.brokers.rabbitmq.connection import PIKA_ERRORS, RUNS, translate
from ttg.errors import BrokerConnectionError

log = logging.getLogger(__name__)

#: Reply code of a queue that exists but belongs to another connection.
RESOURCE_LOCKED = 405


def _open(params: list[pika.URLParameters]) -> list[pika.BlockingConnection]:
    """A connection to each node of ``params`` that answers.

    Raises:
        AuthenticationError: a node refused our credentials.
    """
    conns: list[pika.BlockingConnection] = []
    for p in params:
        try:
            conns.append(pika.BlockingConnection(p))
        except PIKA_ERRORS as e:
            try:
                translate(e)
            except BrokerConnectionError:
                continue  # down, or not listening yet: not a member now
            except BaseException:
                _close(conns)
                raise
    return conns


def _close(conns: list[pika.BlockingConnection]) -> None:
    for c in conns:
        with contextlib.suppress(*PIKA_ERRORS):
            c.close()


def running_together(conns: list[pika.BlockingConnection]) -> int:
    """The most of ``conns``' nodes that run in one cluster."""
    best = 0
    for anchor in conns:
        probe = anchor.channel().queue_declare("", exclusive=True, auto_delete=True)
        name = probe.method.queue
        best = max(best, 1 + sum(_knows(c, name) for c in conns if c is not anchor))
        if best == len(conns):
            break
    return best


def _exists(conn: pika.BlockingConnection, name: str) -> bool:
    try:
        ch = conn.channel()
        ch.queue_declare(name, passive=True)
    except PIKA_ERRORS:
        return False
    with contextlib.suppress(*PIKA_ERRORS):
        ch.close()
    return True


def _knows(conn: pika.BlockingConnection, name: str) -> bool:
    """Whether the node of ``conn`` knows the exclusive queue ``name`` (same cluster)."""
    try:
        ch = conn.channel()
        ch.queue_declare(name, passive=True)
    except pex.ChannelClosedByBroker as e:
        return bool(e.reply_code == RESOURCE_LOCKED)
    except PIKA_ERRORS:
        return False
    # Ours after all (cannot happen for another connection's exclusive queue).
    with contextlib.suppress(*PIKA_ERRORS):
        ch.close()
    return True


def check_whole(params: list[pika.URLParameters], expect: int) -> None:
    """Return if ``expect`` nodes of ``params`` run in one cluster (or did: ``ttg.runs``
    exists), else raise.

    Raises:
        BrokerConnectionError: fewer do (the caller waits and asks again).
        AuthenticationError: a node refused our credentials.
    """
    conns = _open(params)
    try:
        if any(_exists(c, RUNS) for c in conns):
            return  # declared by TTG on a whole cluster: it formed before
        together = running_together(conns)
    finally:
        _close(conns)
    if together < expect:
        raise BrokerConnectionError(
            f"rabbitmq: {together} of the {expect} nodes expected (TTG_RABBITMQ_EXPECT_NODES) "
            "run in one cluster; declaring nothing until they do"
        )
