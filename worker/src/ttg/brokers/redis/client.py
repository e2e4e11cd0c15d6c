"""Redis plumbing shared by the admin side and the consumer: keys, clients, scripts, errors.

Layout of one run ``R``. Every key of a run carries the hash tag ``{R}``, so a
run lives in one slot of a Redis Cluster and every script touches one slot::

    ttg:{R}:spec     string  the RunSpec as JSON, written once
    ttg:{R}:meta     hash    total, cursor (next chunk to seed), control, round,
                             seeded_at, completed_at (ms)
    ttg:{R}:tasks    stream  one entry per chunk to do: c=chunk, a=earlier deliveries,
                             g=retry round (when not 0); consumer group "ttg";
                             entries are deleted when acknowledged
    ttg:{R}:delayed  zset    "chunk:attempts:round" -> due time (ms), retries waiting
    ttg:{R}:ledger   hash    chunk -> outcome JSON, the first one wins
    ttg:{R}:rounds   hash    chunk -> retry round (only chunks `ttg retry` re-queued)
    ttg:{R}:history  list    outcomes replaced by `ttg retry`
    ttg:{R}:stats    hash    done, done_params, dead, errors, param_errors, duplicates,
                             redelivered, failed, malformed, finished, finished_params
    ttg:{R}:leases   zset    consumer -> lease expiry (ms, the server's clock)
    ttg:{R}:events   stream  failures, redeliveries, releases, malformed messages
                             (capped at ~10,000)

and one channel, ``ttg:{R}:meta:complete``: record.lua publishes to it when it records
the run's last outcome (watchers wake on it; nothing depends on its delivery).

Two keys are global, and nothing writes them in the same step as a run's keys
(they may live on another node): ``ttg:runs`` (set of run ids) and
``ttg:runs:gen`` (a counter bumped whenever a run is created, steered,
retried or deleted, so workers rescan only when something changed). Both are
written after the run's own keys, so a reader that finds a run id finds its
run, or a deleted one, never half of one.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from importlib import resources
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit

import redis
import redis.exceptions as rex
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import MasterNotFoundError, Sentinel

from ttg.decode import mask_url
from ttg.endpoint import TLS
from ttg.errors import (
    AuthenticationError,
    BrokerConnectionError,
    BrokerDataError,
    BrokerError,
    UsageError,
)

#: Consumer group every worker joins, in every run's task stream.
GROUP = "ttg"
RUNS = "ttg:runs"
GENERATION = "ttg:runs:gen"
#: Names of a run's keys, for ``delete``.
RUN_KEYS = (
    "spec", "meta", "tasks", "delayed", "ledger", "rounds", "history", "stats", "leases", "events",
    "begun", "long",
)  # fmt: skip
#: Longest error text from Redis kept in a message.
MAX_ERROR_CHARS = 200
#: Why a URL with credentials does not parse, without quoting it.
URL_QUOTING = (
    "write a password's special characters URL-quoted (@ as %40, / as %2F, # as %23, "
    ": as %3A), or give the password as TTG_BROKER_PASSWORD"
)

#: URL schemes this backend takes.
SCHEMES = (
    "redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel",
    "rediss+sentinel",
)  # fmt: skip
#: A sentinel's port when the URL names none.
SENTINEL_PORT = 26379

T = TypeVar("T")


def key(run: str, name: str) -> str:
    return f"ttg:{{{run}}}:{name}"


def complete_channel(run: str) -> str:
    """The channel record.lua publishes to when the run's last outcome is recorded."""
    return key(run, "meta") + ":complete"


def run_of(stream_key: str) -> str:
    return stream_key[stream_key.index("{") + 1 : stream_key.index("}")]


#: Refusals that pass (a full broker, a load, a failover, no replica yet), also when a
#: script meets them: never the run's data.
_PASSING = ("OOM", "maxmemory", "BUSY", "LOADING", "READONLY", "NOREPLICAS", "MASTERDOWN",
            "TRYAGAIN", "CLUSTERDOWN", "NOSCRIPT")  # fmt: skip


def is_data_error(e: rex.ResponseError) -> bool:
    """Redis refused because of what a key holds (or a script failed on it): for good."""
    text = str(e)
    if any(word in text for word in _PASSING):
        return False
    return "WRONGTYPE" in text or "user_script" in text or "Error running script" in text


def translate(e: Exception) -> NoReturn:
    """Turn a redis-py exception into TTG's own (the backend boundary), trimmed to what helps."""
    text = str(e).split("\n")[0][:MAX_ERROR_CHARS]
    if isinstance(e, rex.AuthenticationError) or text.startswith(("WRONGPASS", "NOAUTH")):
        raise AuthenticationError(f"redis refused our credentials: {text}") from None
    if isinstance(e, MasterNotFoundError) and "WRONGPASS" in str(e):
        # Sentinels that refuse our credentials are not "unreachable": retrying cannot help.
        raise AuthenticationError(
            "redis sentinel refused our credentials (the URL's password is the "
            "sentinels' and the data nodes')"
        ) from None
    if isinstance(e, rex.ConnectionError) and "certificate verify failed" in text.lower():
        raise AuthenticationError(
            f"redis TLS: the server's certificate is not trusted ({text})"
        ) from None
    if "cluster mode is not enabled" in text.lower() or "cluster support disabled" in text:
        raise UsageError(
            "broker URL: that Redis is not a cluster (use redis:// for a single Redis)"
        ) from None
    if isinstance(e, rex.ConnectionError | rex.TimeoutError | rex.ClusterError):
        raise BrokerConnectionError(f"redis unreachable: {text}") from None
    if isinstance(e, rex.RedisClusterException):  # not a RedisError: cannot reach a cluster
        raise BrokerConnectionError(f"redis cluster unreachable: {text}") from None
    if "DB index is out of range" in text or "invalid DB index" in text:
        raise UsageError(f"broker URL: the database number is out of range ({text})") from None
    if isinstance(e, rex.ResponseError) and is_data_error(e):
        # A key holding the wrong kind of value, or a script failing on what a key
        # holds: the run's data is garbage, not the broker unreachable.
        raise BrokerDataError(None, f"redis refused it because of what a run's key holds: {text}")
    raise BrokerError(f"redis: {text}") from None


def translated(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn redis-py exceptions into TTG's own at the backend boundary."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (rex.RedisError, rex.RedisClusterException, ssl.SSLError) as e:
            translate(e)

    return wrapper


def _tls_options(tls: TLS) -> dict[str, Any]:
    # redis-py takes file names, not a context: build one anyway, so a missing or
    # unreadable file is bad input (exit 2) now, not an endless "unreachable" later.
    tls.ssl_context()
    return {
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": "required",
        # redis-py 5 did not check the host name by default; the contract says we do.
        "ssl_check_hostname": True,
    }


def make_client(url: str, tls: TLS, *, socket_timeout: float = 10) -> Any:
    """A client for ``url``: ``redis://``, ``rediss://`` (TLS), ``unix://``, or
    ``redis+cluster://`` / ``rediss+cluster://`` with one or more comma-separated
    ``host:port`` seed nodes (Redis Cluster).

    Returned as Any: with decode_responses=True every reply is a str, which
    redis-py's annotations (bytes | str | ...) cannot express.

    Raises:
        UsageError: the URL is malformed.
    """
    common: dict[str, Any] = {
        "decode_responses": True,
        # Above the longest blocking read (a fraction of the lease).
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 3,
    }
    scheme = url.split(":", 1)[0]
    if scheme not in SCHEMES:
        raise UsageError(
            f"broker URL {safe_url(url)!r}: expected redis://, rediss://, unix://, "
            "redis+cluster:// or redis+sentinel://"
        )
    try:
        if scheme in ("redis+cluster", "rediss+cluster"):
            return _cluster_client(url, tls, common)
        if scheme in ("redis+sentinel", "rediss+sentinel"):
            return _sentinel_client(url, tls, common)
        if scheme == "rediss":
            common.update(_tls_options(tls))
        return redis.Redis.from_url(url, health_check_interval=15, **common)
    except (ValueError, IndexError) as e:
        # A parser's complaint may quote a piece of a password that broke the URL.
        why = str(e) if "@" not in url else URL_QUOTING
        raise UsageError(f"broker URL {safe_url(url)!r} is malformed: {why}") from None
    except rex.RedisClusterException as e:
        translate(e)


def _cluster_client(url: str, tls: TLS, common: dict[str, Any]) -> RedisCluster:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    creds = netloc[0] if len(netloc) == 2 else ""
    username, _, password = creds.partition(":")
    nodes = []
    for hostport in netloc[-1].split(","):
        host, _, port = hostport.rpartition(":")
        node = ClusterNode(host.strip("[]") or "localhost", int(port or 6379))  # type: ignore[no-untyped-call]
        nodes.append(node)
    if url.startswith("rediss"):
        common.update(ssl=True, **_tls_options(tls))
    return RedisCluster(
        startup_nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
        **common,
    )


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``.

    Raises:
        ValueError: the port is not a number.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    return host or "localhost", int(port or default_port)


def _sentinel_client(url: str, tls: TLS, common: dict[str, Any]) -> Any:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/db]``.

    The client asks the sentinels for the master of MASTER at every new
    connection, so after a failover the next command reaches the new master
    (until the sentinels agree, commands fail as "unreachable" and callers retry).
    The credentials (and TLS) are the data nodes' and the sentinels' alike.
    """
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    creds, _, hosts = netloc.rpartition("@")
    username, _, password = creds.partition(":")
    name, _, db = path.strip("/").partition("/")
    if not name or not hosts:
        raise UsageError(
            f"broker URL {safe_url(url)!r}: expected "
            "redis+sentinel://[:password@]host:port[,host:port...]/MASTER-NAME"
        )
    nodes = [_host_port(h.strip(), SENTINEL_PORT) for h in hosts.split(",")]
    auth: dict[str, Any] = {
        "username": unquote(username) or None,
        "password": unquote(password) or None,
    }
    secure: dict[str, Any] = {}
    if scheme == "rediss+sentinel":
        secure = {"ssl": True, **_tls_options(tls)}
    sentinels = {k: v for k, v in common.items() if k.startswith("socket_")}
    sentinel = Sentinel(nodes, sentinel_kwargs={**sentinels, **auth, **secure}, **common, **secure)
    return sentinel.master_for(name, db=int(db or 0), health_check_interval=15, **auth)


def safe_url(url: str) -> str:
    """``url`` without its credentials, for messages (even when it does not parse)."""
    return mask_url(url)


class Scripts:
    """The Lua scripts, registered once per client (EVALSHA, reloaded after a restart)."""

    def __init__(self, client: Any) -> None:
        def load(name: str) -> Any:
            source = resources.files(__package__).joinpath(f"{name}.lua").read_text()
            return client.register_script(source)

        self.seed = load("seed")
        self.seed_reused = load("seed_reused")
        self.record = load("record")
        self.retry = load("retry")
        self.promote = load("promote")
        self.release = load("release")
        self.beat = load("beat")
        self.reclaim = load("reclaim")
        self.begin = load("begin")
        self.malformed = load("malformed")
        self.requeue = load("requeue")
