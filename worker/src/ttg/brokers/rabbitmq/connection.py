"""RabbitMQ plumbing shared by the admin side, the seeder and the consumer.

Layout of one run ``R`` (all durable, declared by ``seed`` with fixed arguments)::

    ttg.runs          stream  run announcements {"run": R, "spec": ...}, controls
                              {"run": R, "control": paused|running|cancelled}, deletions
                              {"deleted": R}; every consumer reads it from the start
    ttg.R.meta        stream  the RunSpec, then seeding cursors {"cursor": k}
    ttg.R.tasks       quorum  one message per chunk or per group of small chunks (headers
                              c=first chunk, n=chunks, a=earlier deliveries, g=retry round);
                              delivery limit = the run's max deliveries, then to ttg.R.dead
    ttg.R.retry       quorum  failed chunks waiting out their backoff (per-message TTL), then
                              dead-lettered (at-least-once) back into ttg.R.tasks
    ttg.R.dead        quorum  chunks RabbitMQ dead-lettered (their workers kept dying)
    ttg.R.ledger      stream  outcome batches {"o": [...]} and events {"e": failed|redelivered|
                              released|malformed|retry, ...}; replayed and decided on
                              read: the first outcome of a chunk's current round wins
    ttg.R.activity    stream  who holds which chunks: a snapshot every 1/4 lease, kept 10 min
    ttg.R.begun       stream  chunks whose compute began {"b": [[chunk, attempt], ...]}: one
                              mark as each begins, again every 1/4 lease while it runs;
                              kept 10 min. A redelivery counts only if its last
                              delivery was begun (begun.py)

Why this shape:

- A result is published to the ledger with a publisher confirm before its task
  is acknowledged (invariant 3); a redelivered chunk's second result is a
  duplicate on read, never counted (invariant 2).
- Liveness is the AMQP connection itself: a SIGKILLed worker's socket closes and
  RabbitMQ requeues its unacknowledged chunks at once; a live worker's I/O
  thread serves heartbeats however long its chunk computes.
- Queue arguments are immutable, so nothing that may change between releases is
  one: the retry delay is a per-message TTL, and the delivery limit is part of
  the run's immutable spec. Replication follows the cluster: quorum queues and
  streams get a member on every node by default.
- Per-message TTL expires only at the head of the retry queue, so a long delay
  can hold back a shorter one behind it; retries are late, never lost.
"""

from __future__ import annotations

import contextlib
import functools
import random
import ssl
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import pika
import pika.exceptions as pex
from pika.adapters.blocking_connection import BlockingChannel

from ttg.decode import mask_url
from ttg.endpoint import TLS
from ttg.errors import (
    AuthenticationError,
    BrokerConnectionError,
    BrokerError,
    RunNotFound,
    UsageError,
)
from ttg.jsontext import compact
from ttg.run import RunSpec

RUNS = "ttg.runs"
#: Heartbeat of admin connections (CLI commands, the exporter), seconds.
ADMIN_HEARTBEAT = 30
#: An admin command blocked by a broker alarm gives up after this long, seconds
#: (a worker waits longer: its chunk cannot finish before the alarm clears anyway).
ADMIN_BLOCKED_TIMEOUT = 10
#: Longest broker error text kept in a message.
MAX_ERROR_CHARS = 200
#: A publisher confirm not come after this long is taken as lost: the connection is
#: cut and the publish retried on a new one (see ``confirm_deadline``).
CONFIRM_TIMEOUT_SECONDS = 15.0

T = TypeVar("T")

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pex.AMQPConnectionError,
    pex.ConnectionClosed,
    pex.StreamLostError,
    pex.ConnectionWrongStateError,
    ConnectionError,
    OSError,
)
#: Everything pika raises that the backend boundary translates.
PIKA_ERRORS: tuple[type[BaseException], ...] = (pex.AMQPError, *CONNECTION_ERRORS)


def queue(run: str, name: str) -> str:
    return f"ttg.{run}.{name}"


def run_of(queue_name: str) -> str | None:
    parts = queue_name.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "ttg" else None


def _text(e: BaseException) -> str:
    if isinstance(e, pex.ChannelClosedByBroker | pex.ConnectionClosedByBroker):
        return f"{e.reply_code} {e.reply_text}"[:MAX_ERROR_CHARS]
    text = str(e) or type(e).__name__
    return text.split("\n")[0][:MAX_ERROR_CHARS]


def translate(e: BaseException) -> NoReturn:
    """Turn a pika exception into TTG's own (the backend boundary), trimmed to what helps."""
    if isinstance(e, pex.ChannelClosedByBroker) and e.reply_code == 404:
        raise RunNotFound(f"rabbitmq: {e.reply_text}") from None
    if isinstance(e, pex.UnroutableError):
        # A mandatory publish to a queue that is gone: the run was deleted.
        raise RunNotFound("rabbitmq: the run's queues are gone (deleted)") from None
    if "NOT_ALLOWED - vhost" in repr(e) and "not found" in repr(e):
        # The URL names a virtual host the broker does not have: bad input, not an outage.
        raise UsageError(f"broker URL: the broker has no such virtual host ({_text(e)})") from None
    if isinstance(e, pex.ProbableAuthenticationError | pex.AuthenticationError) or (
        isinstance(e, pex.ConnectionClosedByBroker) and e.reply_code in (403, 530)
    ):
        raise AuthenticationError(f"rabbitmq refused our credentials: {_text(e)}") from None
    if "CERTIFICATE_VERIFY_FAILED" in repr(e) or isinstance(e, ssl.SSLCertVerificationError):
        raise AuthenticationError(
            "rabbitmq TLS: the server's certificate is not trusted (TTG_BROKER_CA_FILE)"
        ) from None
    if isinstance(e, pex.ConnectionBlockedTimeout):
        raise BrokerConnectionError(
            "rabbitmq refuses writes: our connection stayed blocked (a memory or disk alarm)"
        ) from None
    if isinstance(e, CONNECTION_ERRORS):
        raise BrokerConnectionError(f"rabbitmq unreachable: {_text(e)}") from None
    raise BrokerError(f"rabbitmq: {_text(e)}") from None


def translated(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except PIKA_ERRORS as e:
            translate(e)

    return wrapper


def _ssl_options(url: str, tls: TLS) -> pika.SSLOptions:
    return pika.SSLOptions(tls.ssl_context(), server_hostname=urlsplit(url).hostname)


def parameters(
    urls: str, tls: TLS, heartbeat: int, *, blocked_timeout: float = 60, name: str | None = None
) -> list[pika.URLParameters]:
    """Connection parameters for each of the comma-separated ``urls`` (a cluster's nodes).

    ``heartbeat`` is what we ask for; pika keeps the client's value, so it is
    what the connection gets (RabbitMQ's own ``heartbeat`` setting is only a
    proposal). ``name`` becomes the connection's name in the broker
    (``rabbitmqctl list_connections user_provided_name``, the management UI):
    which worker holds which connection, on which node.

    Raises:
        UsageError: a URL is malformed.
    """
    out = []
    for url in (u.strip() for u in urls.split(",") if u.strip()):
        if not url.startswith(("amqp://", "amqps://")):
            raise UsageError(f"broker URL {mask_url(url)!r}: expected amqp:// or amqps://")
        try:
            params = pika.URLParameters(url)
        except Exception as e:
            # A parser's complaint may quote a piece of a password that broke the URL.
            why = (
                str(e)
                if "@" not in url
                else "write a password's special characters URL-quoted (@ as %40, / as "
                "%2F, # as %23, : as %3A), or give the password as TTG_BROKER_PASSWORD"
            )
            raise UsageError(f"broker URL {mask_url(url)!r} is malformed: {why}") from None
        if url.startswith("amqps://"):
            params.ssl_options = _ssl_options(url, tls)
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = blocked_timeout
        params.connection_attempts = 1
        params.socket_timeout = 5
        if name:
            params.client_properties = {**(params.client_properties or {}), "connection_name": name}
        out.append(params)
    if not out:
        raise UsageError("broker URL is empty")
    return out


def open_connection(
    params: list[pika.URLParameters], *, start: int | None = None
) -> pika.BlockingConnection:
    """Connect to the first node of ``params`` that answers, starting at ``start``
    (default: a random one, so a cluster's clients spread over its nodes).

    Raises:
        BrokerConnectionError, AuthenticationError: as ``translate``.
    """
    first = random.randrange(len(params)) if start is None else start % len(params)  # noqa: S311
    order = params[first:] + params[:first]
    try:
        return pika.BlockingConnection(order)
    except PIKA_ERRORS as e:
        translate(e)


#: Arguments of every run's begun stream (queue arguments are immutable: always these).
BEGUN_ARGS: dict[str, Any] = {
    "x-queue-type": "stream",
    "x-max-age": "10m",
    "x-stream-max-segment-size-bytes": 1_000_000,
}


def declare_run(ch: BlockingChannel, spec: RunSpec) -> None:
    """Declare every queue of a run, always with the same arguments."""
    run = spec.run
    stream = {"x-queue-type": "stream"}
    ch.queue_declare(RUNS, durable=True, arguments=stream)
    ch.queue_declare(queue(run, "meta"), durable=True, arguments=stream)
    ch.queue_declare(queue(run, "ledger"), durable=True, arguments=stream)
    ch.queue_declare(
        queue(run, "activity"),
        durable=True,
        arguments={**stream, "x-max-age": "10m", "x-stream-max-segment-size-bytes": 1_000_000},
    )
    ch.queue_declare(queue(run, "begun"), durable=True, arguments=BEGUN_ARGS)
    ch.queue_declare(queue(run, "dead"), durable=True, arguments={"x-queue-type": "quorum"})
    # At-least-once dead-lettering needs reject-publish overflow; neither queue
    # ever reaches a length limit, so that costs nothing.
    dead_letter = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    ch.queue_declare(
        queue(run, "tasks"),
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": spec.max_deliveries,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue(run, "dead"),
            **dead_letter,
        },
    )
    ch.queue_declare(
        queue(run, "retry"),
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue(run, "tasks"),
            **dead_letter,
        },
    )


def body(msg: dict[str, Any]) -> bytes:
    return compact(msg).encode()


class ConfirmTimeout(pex.AMQPConnectionError):  # type: ignore[misc]  # pika is untyped
    """No publisher confirm within ``CONFIRM_TIMEOUT_SECONDS``: the connection was cut."""


@contextlib.contextmanager
def confirm_deadline(ch: BlockingChannel) -> Iterator[None]:
    """Cut ``ch``'s connection if what runs inside waits longer than ``CONFIRM_TIMEOUT_SECONDS``.

    A confirm-mode publish waits for its confirm with no time limit, serving
    heartbeats meanwhile, so a confirm the broker lost (a stream whose leader
    node died, RabbitMQ 3.10) would hold the caller, and every chunk its
    connection holds, forever. Past the deadline the connection's socket is
    closed as a missed heartbeat closes it: the publish raises, the caller
    reconnects and sends again (a re-sent outcome is recognised), and the
    broker requeues what the connection held. While a resource alarm blocks
    the connection the deadline waits: ``blocked_connection_timeout`` decides.
    """
    # pika's public timers run only between blocking calls, never inside one:
    # the timer goes on the connection's own I/O loop (the "_impl" connection,
    # whose _terminate_stream is what pika's heartbeat checker calls).
    impl = ch.connection._impl
    handle: list[object] = []

    def expire() -> None:
        if getattr(impl, "_blocked_conn_timer", None) is not None:
            handle[:] = [impl.ioloop.call_later(CONFIRM_TIMEOUT_SECONDS, expire)]
            return
        handle.clear()
        if impl.is_open:
            impl._terminate_stream(
                ConfirmTimeout(f"no publisher confirm within {CONFIRM_TIMEOUT_SECONDS:.0f}s")
            )

    handle.append(impl.ioloop.call_later(CONFIRM_TIMEOUT_SECONDS, expire))
    try:
        yield
    finally:
        if handle:
            impl.ioloop.remove_timeout(handle[0])


def publish(
    ch: BlockingChannel, routing_key: str, msg: dict[str, Any] | bytes, **props: Any
) -> None:
    """Publish persistently; on a confirm-mode channel this returns once the broker confirmed.

    Raises:
        ConfirmTimeout: no confirm within ``CONFIRM_TIMEOUT_SECONDS`` (the connection is cut).
    """
    with confirm_deadline(ch):
        ch.basic_publish(
            "",
            routing_key,
            msg if isinstance(msg, bytes) else body(msg),
            pika.BasicProperties(delivery_mode=2, content_type="application/json", **props),
            mandatory=True,
        )


def task_headers(chunk: int, earlier: int, round_: int = 0, count: int = 1) -> dict[str, int]:
    """Headers of a task message: chunks ``chunk .. chunk+count-1``, earlier deliveries, round."""
    headers = {"c": chunk, "a": earlier}
    if count > 1:
        headers["n"] = count
    if round_:
        headers["g"] = round_
    return headers


def publish_task(
    ch: BlockingChannel,
    routing_key: str,
    headers: dict[str, int],
    *,
    expiration_ms: int | None = None,
) -> None:
    with confirm_deadline(ch):
        ch.basic_publish(
            "",
            routing_key,
            b"",
            pika.BasicProperties(
                delivery_mode=2,
                headers=headers,
                expiration=None if expiration_ms is None else str(expiration_ms),
            ),
            mandatory=True,
        )
