"""Redis URLs the backend takes, parsed without connecting (``make_client`` connects lazily)."""

from __future__ import annotations

import pytest
from redis.sentinel import MasterNotFoundError

from ttg.brokers.redis.client import SENTINEL_PORT, make_client, translate
from ttg.endpoint import TLS
from ttg.errors import AuthenticationError, BrokerConnectionError, UsageError


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_credentials() -> None:
    client = make_client("redis+sentinel://u:p%40w@s1:26380,[::1],s3:1/ttg-master/2", TLS())
    pool = client.connection_pool
    assert pool.service_name == "ttg-master"
    sentinels = pool.sentinel_manager.sentinels
    hosts = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ]
    assert hosts == [("s1", 26380), ("::1", SENTINEL_PORT), ("s3", 1)]
    # The same credentials for the sentinels and the data nodes.
    for kwargs in [
        pool.connection_kwargs,
        *(s.connection_pool.connection_kwargs for s in sentinels),
    ]:
        assert (kwargs["username"], kwargs["password"]) == ("u", "p@w")
    assert pool.connection_kwargs["db"] == 2


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://s1:26379", "redis+sentinel://s1:26379/", "redis+sentinel://s1:port/m",
     "redis+sentinel://s1/m/not-a-db"],
)  # fmt: skip
def test_a_malformed_sentinel_url_is_bad_input(url: str) -> None:
    with pytest.raises(UsageError, match="broker URL"):
        make_client(url, TLS())


def test_sentinels_refusing_our_password_is_an_authentication_error() -> None:
    """Not "unreachable" (a worker would wait forever): exit 4, as for one Redis."""
    refused = MasterNotFoundError(
        "No master found for 'ttg' : Redis<...> - AuthenticationError: "
        "WRONGPASS invalid username-password pair or user is disabled."
    )
    with pytest.raises(AuthenticationError):
        translate(refused)
    with pytest.raises(BrokerConnectionError):
        translate(MasterNotFoundError("No master found for 'ttg'"))


def test_a_full_or_failing_over_redis_is_never_the_runs_data() -> None:
    """Refusals that pass (OOM inside a script, a load, no replica) are retried, never
    taken for garbage in a run's keys (which gives the run's chunks back for a while)."""
    import redis.exceptions as rex  # noqa: PLC0415

    from ttg.brokers.redis.client import is_data_error  # noqa: PLC0415

    for text in (
        "OOM command not allowed when used memory > 'maxmemory'. script: 60d0, on @user_script:12.",
        "LOADING Redis is loading the dataset in memory",
        "NOREPLICAS Not enough good replicas to write. script: ab, on @user_script:3.",
        "READONLY You can't write against a read only replica.",
    ):
        assert not is_data_error(rex.ResponseError(text)), text
    for text in (
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "Error running script (call to f_1): @user_script:9: attempt to compare nil with number",
    ):
        assert is_data_error(rex.ResponseError(text)), text
