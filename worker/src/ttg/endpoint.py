"""Where the broker is and how to reach it: the one room that knows.

A broker is reached through an :class:`Endpoint`: its kind (``redis`` or
``rabbitmq``), its URL (RabbitMQ: several, comma-separated, for a cluster), the
credentials that replace the URL's (the chart keeps the URL in plain config and
the credentials in a Secret), and the TLS files mounted beside them. Every
command, the worker, the exporter and the Python API build one here and open
their broker or consumer through it; nothing else parses a broker URL or
touches TLS material.

Opening waits for a broker that is not up yet, with backoff, for the
endpoint's ``connect_timeout`` (docs/contract.md, ``TTG_CONNECT_TIMEOUT_SECONDS``),
saying why on the log, then gives up with the broker's error (exit code 3).
Credentials refused (exit 4) are never retried.
"""

from __future__ import annotations

import importlib
import logging
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Protocol, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from ttg.backoff import Backoff
from ttg.broker import Broker, Consumer
from ttg.decode import mask_url
from ttg.errors import AuthenticationError, BrokerConnectionError, UsageError

log = logging.getLogger("ttg")

T = TypeVar("T")

#: Backends by the name ``TTG_BACKEND`` uses, and the module implementing each: the one
#: list of them. A command imports only the backend it names, so a Redis deployment never
#: loads pika and vice versa.
BACKENDS = {"redis": "ttg.brokers.redis", "rabbitmq": "ttg.brokers.rabbitmq"}
#: ``TTG_BACKEND`` when nobody names one.
DEFAULT_BACKEND = "redis"
#: ``TTG_BROKER_URL`` when nobody names one.
DEFAULT_URL = "redis://localhost:6379/0"
#: URL schemes and the backend each belongs to (a URL alone is enough in the Python API).
SCHEMES = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
    "redis+sentinel": "redis",
    "rediss+sentinel": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
}
#: Schemes of one URL naming several hosts (``redis+cluster://h:p,h:p``), as opposed to
#: RabbitMQ's comma-separated list of whole URLs.
MULTI_HOST = ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class TLS:
    """TLS material for ``rediss://`` and ``amqps://`` (files, as mounted from a Secret)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the broker's certificate and host name.

        Against ``ca_file``, or the system's CAs when it is unset; with the
        client certificate when one is given.

        Raises:
            UsageError: a file is missing, unreadable or not what it should be
                (bad input, exit 2: a worker must not wait for it forever).
        """
        if self.key_file and not self.cert_file:
            raise UsageError("TTG_BROKER_KEY_FILE is set without TTG_BROKER_CERT_FILE")
        what = f"TTG_BROKER_CA_FILE={self.ca_file}"
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                what = f"TTG_BROKER_CERT_FILE={self.cert_file}, TTG_BROKER_KEY_FILE={self.key_file}"
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"{what}: {e.strerror or e}") from None
        return context


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """Put a username and/or password into ``url`` (each of a comma-separated list), URL-quoted.

    The chart keeps the broker URL in plain config and the credentials in a
    Secret; this joins them without the operator quoting anything by hand.
    """
    if not username and not password:
        return url
    if url.partition("://")[0].lower() in MULTI_HOST:
        return _hosts_with_credentials(url, username, password)
    try:
        return ",".join(
            _one_with_credentials(u.strip(), username, password) for u in url.split(",")
        )
    except ValueError:
        # Never quote the parser: its complaint may hold a piece of a password.
        raise UsageError(
            f"broker URL {mask_url(url)!r} is malformed (quote a password's special "
            "characters in a URL, e.g. @ as %40, or give TTG_BROKER_PASSWORD alone)"
        ) from None


def _hosts_with_credentials(url: str, username: str | None, password: str | None) -> str:
    """One URL whose netloc is a host list: the credentials go in front of the list, once."""
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    creds, _, hosts = netloc.rpartition("@")
    old_user, _, old_pw = creds.partition(":")
    user = quote(username, safe="") if username is not None else old_user
    pw = quote(password, safe="") if password is not None else old_pw
    return f"{scheme}://{user}{':' + pw if pw else ''}@{hosts}{slash}{path}"


def _one_with_credentials(url: str, username: str | None, password: str | None) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    user = quote(username if username is not None else (parts.username or ""), safe="")
    pw = quote(password if password is not None else (parts.password or ""), safe="")
    creds = user + (f":{pw}" if pw else "")
    return urlunsplit(parts._replace(netloc=f"{creds}@{netloc}"))


def backend_of(url: str) -> str:
    """The backend a URL's scheme belongs to (``redis://`` → redis, ``amqp://`` → rabbitmq).

    Raises:
        UsageError: the scheme is none TTG knows.
    """
    scheme = url.split(",", 1)[0].strip().partition("://")[0].lower()
    try:
        return SCHEMES[scheme]
    except KeyError:
        raise UsageError(
            f"broker URL scheme {scheme!r} is not one of {', '.join(sorted(SCHEMES))}"
        ) from None


class _Settings(Protocol):
    """The connection settings as ``config.resolve`` leaves them on a namespace."""

    backend: str
    broker_url: str
    broker_username: str | None
    broker_password: str | None
    broker_ca_file: str | None
    broker_cert_file: str | None
    broker_key_file: str | None
    connect_timeout_seconds: float | None
    rabbitmq_expect_nodes: int | None


@dataclass(frozen=True)
class Endpoint:
    """One broker, and everything needed to reach it.

    Attributes:
        backend: ``redis`` or ``rabbitmq`` (``TTG_BACKEND``).
        url: The broker URL as given, without the credentials below.
        username: Replaces the user in every URL when set.
        password: Replaces the password in every URL when set.
        tls: CA, client certificate and key files.
        connect_timeout: Seconds to wait for a broker that does not answer yet;
            None lets the caller choose (commands 0, worker and exporter forever).
        expect_nodes: RabbitMQ: connect only once this many nodes of ``url`` run
            in one cluster (``TTG_RABBITMQ_EXPECT_NODES``; 0: at once). Waiting
            for them counts as waiting for the broker (``connect_timeout``).
    """

    backend: str = DEFAULT_BACKEND
    url: str = DEFAULT_URL
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: TLS = field(default_factory=TLS)
    connect_timeout: float | None = None
    expect_nodes: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(
                f"backend {self.backend!r} is not one of {', '.join(sorted(BACKENDS))}"
            )

    @classmethod
    def from_url(cls, url: str, **kw: object) -> Endpoint:
        """An endpoint whose backend is read from the URL's scheme."""
        return cls(backend_of(url), url, **kw)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, s: _Settings) -> Endpoint:
        """The endpoint the resolved connection settings (flags, ``TTG_*``) name."""
        return cls(
            backend=s.backend,
            url=s.broker_url,
            username=s.broker_username,
            password=s.broker_password,
            tls=TLS(s.broker_ca_file, s.broker_cert_file, s.broker_key_file),
            connect_timeout=s.connect_timeout_seconds,
            expect_nodes=s.rabbitmq_expect_nodes or 0,
        )

    @property
    def full_url(self) -> str:
        """The URL with the credentials in it, what the backends connect to."""
        return with_credentials(self.url, self.username, self.password)

    def env(self) -> dict[str, str]:
        """The ``TTG_*`` variables that make a ``ttg`` process reach this same broker."""
        out = {"TTG_BACKEND": self.backend, "TTG_BROKER_URL": self.url}
        for var, value in (
            ("TTG_BROKER_USERNAME", self.username),
            ("TTG_BROKER_PASSWORD", self.password),
            ("TTG_BROKER_CA_FILE", self.tls.ca_file),
            ("TTG_BROKER_CERT_FILE", self.tls.cert_file),
            ("TTG_BROKER_KEY_FILE", self.tls.key_file),
            ("TTG_RABBITMQ_EXPECT_NODES", str(self.expect_nodes) if self.expect_nodes else None),
        ):
            if value:
                out[var] = value
        return out

    def with_timeout(self, seconds: float | None) -> Endpoint:
        return replace(self, connect_timeout=seconds)

    def _module(self) -> ModuleType:
        return importlib.import_module(BACKENDS[self.backend])

    def open_broker(self, *, default_wait: float = 0.0) -> Broker:
        """Connect, waiting up to ``connect_timeout`` (else ``default_wait``) seconds.

        Raises:
            UsageError: a malformed URL or unreadable TLS file.
            BrokerConnectionError: the broker did not answer in time (exit 3).
            AuthenticationError: it refused our credentials or our TLS handshake (exit 4).
        """
        wait = default_wait if self.connect_timeout is None else self.connect_timeout
        options = {"expect_nodes": self.expect_nodes} if self._expects_nodes else {}
        broker: Broker = self._retry(
            lambda: self._module().connect(self.full_url, tls=self.tls, **options), wait
        )
        return broker

    @property
    def _expects_nodes(self) -> bool:
        return self.backend == "rabbitmq" and self.expect_nodes > 1

    def _retry(self, attempt: Callable[[], T], wait: float) -> T:
        """``attempt()`` until it stops raising BrokerConnectionError or ``wait`` s passed."""
        deadline = time.monotonic() + wait
        backoff = Backoff(cap=5.0)
        while True:
            try:
                return attempt()
            except AuthenticationError:
                raise
            except BrokerConnectionError as e:
                delay = backoff.next()
                left = deadline - time.monotonic()
                if left < delay:
                    raise
                shown = "no time limit" if math.isinf(left) else f"{left:.0f} s left"
                log.warning("waiting for the broker (%s): %s", shown, e)
                time.sleep(delay)

    def open_consumer(self, name: str, *, lease_seconds: float, prefetch: int) -> Consumer:
        """A worker's consumer, with a connection of its own and nothing else (call ``start``).

        With ``expect_nodes``, returns once that many RabbitMQ nodes run in one
        cluster (waiting ``connect_timeout``, else forever).

        Raises:
            UsageError: a malformed URL.
            BrokerConnectionError: the cluster was not whole in time.
        """
        if self._expects_nodes:
            wait = math.inf if self.connect_timeout is None else self.connect_timeout
            self._retry(
                lambda: self._module().check_cluster(self.full_url, self.tls, self.expect_nodes),
                wait,
            )
        consumer: Consumer = self._module().open_consumer(
            self.full_url, self.tls, name, lease_seconds=lease_seconds, prefetch=prefetch
        )
        return consumer


def open_broker(backend: str, url: str, *, tls: TLS | None = None) -> Broker:
    """Connect at once to the broker of kind ``backend`` at ``url`` (no waiting).

    Raises:
        UsageError: unknown backend or malformed URL.
        BrokerConnectionError: the broker does not answer.
        AuthenticationError: it refused our credentials or our TLS handshake.
    """
    return Endpoint(backend, url, tls=tls or TLS()).open_broker()


def from_env(environ: Mapping[str, str]) -> Endpoint:
    """The endpoint the ``TTG_*`` connection variables in ``environ`` name (unset: defaults).

    The backend follows the URL's scheme when ``TTG_BACKEND`` is unset.

    Raises:
        UsageError: a value does not parse.
    """
    url = environ.get("TTG_BROKER_URL") or DEFAULT_URL
    backend = environ.get("TTG_BACKEND") or backend_of(url)
    timeout = environ.get("TTG_CONNECT_TIMEOUT_SECONDS")
    try:
        wait = float(timeout) if timeout else None
    except ValueError:
        raise UsageError(f"TTG_CONNECT_TIMEOUT_SECONDS={timeout!r} is not a number") from None
    nodes = environ.get("TTG_RABBITMQ_EXPECT_NODES") or "0"
    if not nodes.isdigit():
        raise UsageError(f"TTG_RABBITMQ_EXPECT_NODES={nodes!r} is not a number of nodes")
    return Endpoint(
        backend=backend.lower(),
        url=url,
        username=environ.get("TTG_BROKER_USERNAME") or None,
        password=environ.get("TTG_BROKER_PASSWORD") or None,
        tls=TLS(
            environ.get("TTG_BROKER_CA_FILE") or None,
            environ.get("TTG_BROKER_CERT_FILE") or None,
            environ.get("TTG_BROKER_KEY_FILE") or None,
        ),
        connect_timeout=wait,
        expect_nodes=int(nodes),
    )
