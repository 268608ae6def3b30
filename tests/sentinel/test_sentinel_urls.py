"""``redis+sentinel://`` URLs: which options go to the master and which to the Sentinels."""

from __future__ import annotations

from typing import Any

import pytest

import sluicegate
from sluicegate import ConfigError
from sluicegate.stores import AsyncSentinelStore, SentinelStore, open_async_store, open_store
from sluicegate.stores.redis import TLS_PARSER
from sluicegate.stores.sentinel import _Target


def test_sentinel_urls_open_sentinel_stores_without_connecting() -> None:
    url = "redis+sentinel://127.0.0.1:1,127.0.0.1/svc"
    store = open_store(url, timeout=0.1)
    assert isinstance(store, SentinelStore)
    assert "127.0.0.1:26379" in repr(store)
    assert "'svc'" in repr(store)
    assert isinstance(open_async_store(url, timeout=0.1), AsyncSentinelStore)


def test_the_url_splits_into_master_and_sentinel_options() -> None:
    target = _Target(
        "rediss+sentinel://app:pw%40x@s1:5000,s2/cache?db=3&sentinel_password=sp&ssl_ca_certs=/ca.pem&client_name=gw",
        0.2,
        asynchronous=False,
    )
    assert target.sentinels == [("s1", 5000), ("s2", 26379)]
    assert target.service == "cache"
    master: dict[str, Any] = target.master
    assert (master["username"], master["password"], master["db"], master["client_name"]) == ("app", "pw@x", 3, "gw")
    assert (master["ssl"], master["ssl_ca_certs"], master["socket_timeout"]) == (True, "/ca.pem", 0.2)
    assert master["parser_class"] is TLS_PARSER["parser_class"]
    sentinel: dict[str, Any] = target.sentinel
    assert (sentinel["password"], sentinel["ssl"], sentinel["ssl_ca_certs"]) == ("sp", True, "/ca.pem")
    assert "username" not in sentinel
    assert "db" not in sentinel
    assert "parser_class" not in _Target("rediss+sentinel://s1/m", 0.2, asynchronous=True).master


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://a:1,b:2", "names its service as the path"),
        ("redis+sentinel://a:1/svc/extra", "names its service as the path"),
        ("redis+sentinel://a:1/svc?db=x", "invalid value for db"),
        ("redis+sentinel://a:1/svc?socket_timeout=1", "unknown option 'socket_timeout'"),
        ("redis+sentinel://a:x/svc", "bad host 'a:x'"),
        ("redis+sentinel://:s3cret@a:1", ":***@"),
    ],
)
@pytest.mark.parametrize("limiter_class", [sluicegate.Limiter, sluicegate.AsyncLimiter])
def test_bad_sentinel_urls_are_refused(limiter_class: type, url: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        limiter_class(url)
    assert message in str(raised.value)
    assert "s3cret" not in str(raised.value)
