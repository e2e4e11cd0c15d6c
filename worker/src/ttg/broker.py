"""The broker interface every backend implements.

A ``Broker`` owns runs: it seeds them, reports their progress and keeps their
ledger. A ``Consumer`` is one worker's session with the broker: it fetches
deliveries, and completes, fails or releases them. Backends live in
``ttg.brokers.<name>``; the worker core never imports redis or pika.

The contract (DESIGN.md, invariants 1-8) each backend meets, checked by one
conformance suite run unchanged against all of them:

- ``seed`` is idempotent and resumable;
- ``complete`` makes the result durable in the ledger in the same step as (or
  before) the acknowledgement, and a second outcome for a chunk is recorded as
  a duplicate, never counted;
- a consumer that stops renewing its lease has its chunks redelivered to a live
  one within the lease, and a live consumer never loses a chunk it holds;
- a chunk delivered ``max_deliveries`` times without success is dead-lettered.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from ttg.errors import UsageError
from ttg.run import Delivery, Outcome, Progress, RunSpec

#: Backends by the name ``TTG_BACKEND`` uses, and the module implementing each.
BACKENDS = {"redis": "ttg.brokers.redis", "rabbitmq": "ttg.brokers.rabbitmq"}


@dataclass(frozen=True)
class SeedReport:
    """What one ``seed`` call did."""

    run: str
    total_chunks: int
    total_params: int
    seeded_chunks: int
    added: int

    @property
    def already_seeded(self) -> bool:
        return self.added == 0


class Consumer(ABC):
    """One worker process's session: fetch, then complete, fail or release."""

    name: str

    @abstractmethod
    def start(self) -> None:
        """Announce the consumer and start renewing its liveness lease."""

    @abstractmethod
    def fetch(self, timeout: float) -> list[Delivery]:
        """Wait up to ``timeout`` seconds for deliveries from any live run.

        Deliveries from dead consumers are redelivered here too, with their
        ``attempt`` counting every earlier delivery.
        """

    @abstractmethod
    def complete(self, delivery: Delivery, outcome: Outcome) -> bool:
        """Record ``outcome`` in the ledger and acknowledge, as one step.

        Returns:
            False if the chunk is known to have had an outcome already (the new
            one is recorded as a duplicate and changes no total), else True. A
            backend whose ledger decides on read (RabbitMQ's stream) returns
            True and reports the duplicate in ``progress``.
        """

    @abstractmethod
    def fail(self, delivery: Delivery, error: str, *, max_deliveries: int, delay: float) -> str:
        """A compute error: retry after ``delay`` seconds, or dead-letter.

        Returns:
            ``"retry"`` or ``"dead"`` (when ``delivery.attempt >= max_deliveries``).
        """

    def stop_fetching(self) -> None:  # noqa: B027 - optional hook, a no-op for pull-based backends
        """Receive no new deliveries (shutdown). Push-based backends cancel their subscriptions."""

    @abstractmethod
    def release(self, delivery: Delivery) -> None:
        """Give an unfinished delivery back so another worker takes it at once."""

    @abstractmethod
    def close(self) -> None:
        """Release anything read ahead, stop the lease, leave the broker."""


class Broker(ABC):
    """A connection to one broker holding any number of runs."""

    @abstractmethod
    def ping(self) -> None:
        """Raise ``BrokerConnectionError`` unless the broker answers."""

    @abstractmethod
    def seed(
        self, spec: RunSpec, *, on_progress: Callable[[int, int], None] | None = None
    ) -> SeedReport:
        """Create the run if needed and publish every chunk not yet published.

        Idempotent and resumable: a second call, or a call after one that died
        halfway, publishes only what is missing.

        Raises:
            RunConflict: the run exists with a different spec.
        """

    @abstractmethod
    def spec(self, run: str) -> RunSpec:
        """The run's spec.

        Raises:
            RunNotFound: no such run.
        """

    @abstractmethod
    def runs(self) -> list[str]:
        """Ids of every run the broker knows, finished or not, sorted."""

    @abstractmethod
    def progress(self, run: str) -> Progress:
        """Counters of the run, including the chunks in flight now."""

    @abstractmethod
    def ledger(self, run: str) -> Iterator[Outcome]:
        """Every counted outcome of the run, one per chunk, in no set order."""

    @abstractmethod
    def delete(self, run: str) -> bool:
        """Remove everything the broker holds for ``run`` (tasks, ledger, spec).

        Workers still holding one of its chunks record nothing for it and move
        on. Returns False if there was no such run.
        """

    @abstractmethod
    def consumer(self, name: str, *, lease_seconds: float, prefetch: int) -> Consumer:
        """A consumer named ``name`` (unique per process)."""

    @abstractmethod
    def close(self) -> None:
        """Close connections."""


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """Put a username and/or password into ``url``, URL-quoted.

    The chart keeps the broker URL in plain config and the credentials in a
    Secret; this joins them without the operator quoting anything by hand.
    """
    if not username and not password:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    user = quote(username if username is not None else (parts.username or ""), safe="")
    pw = quote(password if password is not None else (parts.password or ""), safe="")
    creds = user + (f":{pw}" if pw else "")
    return urlunsplit(parts._replace(netloc=f"{creds}@{netloc}"))


def open_broker(backend: str, url: str) -> Broker:
    """Connect to the broker of kind ``backend`` at ``url``.

    Raises:
        UsageError: unknown backend or malformed URL.
        BrokerConnectionError: the broker does not answer.
    """
    try:
        module_name = BACKENDS[backend]
    except KeyError:
        raise UsageError(
            f"backend {backend!r} is not one of {', '.join(sorted(BACKENDS))}"
        ) from None
    module = importlib.import_module(module_name)
    broker: Broker = module.connect(url)
    return broker
