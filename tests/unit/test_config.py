from __future__ import annotations

import argparse

import pytest

from ttg import config
from ttg.decode import mask_url
from ttg.endpoint import with_credentials
from ttg.errors import UsageError


def resolve(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **flags: object
) -> argparse.Namespace:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ns = argparse.Namespace(**flags)
    config.resolve(ns, *config.SETTINGS)
    return ns


def test_flag_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = resolve(monkeypatch, {"TTG_LEASE_SECONDS": "3.5", "TTG_PREFETCH": "4"}, prefetch="8")
    assert ns.lease_seconds == 3.5
    assert ns.prefetch == 8
    assert ns.metrics_port == 9100


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TTG_BACKEND": "kafka"}, "TTG_BACKEND='kafka'"),
        ({"TTG_LEASE_SECONDS": "0"}, "TTG_LEASE_SECONDS"),
        ({"TTG_PREFETCH": "many"}, "TTG_PREFETCH"),
        ({"TTG_LOG_FORMAT": "xml"}, "TTG_LOG_FORMAT"),
        ({"TTG_LEASE_SECONDS": "nan"}, "TTG_LEASE_SECONDS"),
        ({"TTG_LEASE_SECONDS": "inf"}, "TTG_LEASE_SECONDS"),
        ({"TTG_GRACE_SECONDS": "NaN"}, "TTG_GRACE_SECONDS"),
        ({"TTG_GRACE_SECONDS": "1e400"}, "TTG_GRACE_SECONDS"),
        ({"TTG_RETRY_DELAY_SECONDS": "-0.5"}, "TTG_RETRY_DELAY_SECONDS"),
        ({"TTG_CONNECT_TIMEOUT_SECONDS": "nan"}, "TTG_CONNECT_TIMEOUT_SECONDS"),
        ({"TTG_PREFETCH": "0"}, "TTG_PREFETCH"),
        ({"TTG_PREFETCH": str(10**12)}, "TTG_PREFETCH"),
        ({"TTG_MAX_DELIVERIES": "1001"}, "TTG_MAX_DELIVERIES"),
        ({"TTG_METRICS_PORT": "http"}, "TTG_METRICS_PORT"),
        ({"TTG_COMPUTE_ALLOW": "os;rm"}, "TTG_COMPUTE_ALLOW"),
    ],
)
def test_bad_env_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        resolve(monkeypatch, env)


def test_worker_names_are_unique_per_process_start() -> None:
    assert config.default_worker_name() != config.default_worker_name()


@pytest.mark.parametrize(
    ("url", "user", "password", "expected"),
    [
        ("redis://h:6379/0", None, "p@ss:w/rd", "redis://:p%40ss%3Aw%2Frd@h:6379/0"),
        ("amqp://h:5672/%2F", "ttg", "s3cret", "amqp://ttg:s3cret@h:5672/%2F"),
        ("amqp://old:old@h/v", None, "new", "amqp://old:new@h/v"),
        ("redis://h:6379/0", None, None, "redis://h:6379/0"),
        ("redis+cluster://h1:1,h2:2", None, "p@w", "redis+cluster://:p%40w@h1:1,h2:2"),
        ("redis+sentinel://h1:1,h2:2/ttg", "u", "p,w", "redis+sentinel://u:p%2Cw@h1:1,h2:2/ttg"),
        ("rediss+sentinel://:old@h1,h2/ttg/3", None, "new", "rediss+sentinel://:new@h1,h2/ttg/3"),
    ],
)
def test_credentials_are_quoted_into_the_url(
    url: str, user: str | None, password: str | None, expected: str
) -> None:
    assert with_credentials(url, user, password) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p@ss:w/rd@h:1/0", "redis://***@h:1/0"),
        ("redis://user:se#cret@h:1/0", "redis://***@h:1/0"),
        ("amqp://a:b@h1/v,amqp://a:b@h2/v", "amqp://***@h1/v,amqp://***@h2/v"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("p@ss@h", "***"),
        ("redis+sentinel://:a,b@c@h1:1,h2:2/ttg", "redis+sentinel://***@h1:1,h2:2/ttg"),
        ("redis+cluster://:a,b@h1:1,h2:2", "redis+cluster://***@h1:1,h2:2"),
    ],
)
def test_urls_are_shown_without_any_piece_of_their_credentials(url: str, shown: str) -> None:
    assert mask_url(url) == shown
