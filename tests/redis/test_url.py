"""Redis URLs: what is accepted, and that a bad one is refused with a reason (never a password)."""

from __future__ import annotations

import pytest

from imreactor.redis import RedisAddress, parse_redis_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1", RedisAddress("127.0.0.1")),
        ("redis://localhost:6380/2", RedisAddress("localhost", 6380, 2)),
        ("redis://:pw@h:1/", RedisAddress("h", 1, 0, None, "pw")),
        ("redis://me:p%40ss@h/15", RedisAddress("h", 6379, 15, "me", "p@ss")),
        ("redis://[::1]:7000/1", RedisAddress("::1", 7000, 1)),
        ("rediss://:pw@h:6380/3", RedisAddress("h", 6380, 3, None, "pw", tls=True)),
    ],
)
def test_good_urls(url: str, expected: RedisAddress) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "non-empty"),
        ("127.0.0.1:6379", "not redis:// or rediss://"),
        ("http://h", "not redis:// or rediss://"),
        ("redis+tls://h", "not redis:// or rediss://"),
        ("redis://", "no host"),
        ("redis://h:notaport", "bad Redis URL"),
        ("redis://h:70000", "bad Redis URL"),
        ("redis://h:0", "outside"),
        ("redis://h/x", "database must be a number"),
        ("redis://h/-1", "database must be a number"),
        ("redis://h/1?timeout=3", "query"),
    ],
)
def test_bad_urls_say_why(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_redis_url(url)


def test_a_tls_address_says_so() -> None:
    assert str(parse_redis_url("rediss://h")) == "rediss://h:6379/0"
    assert str(parse_redis_url("redis://h")) == "redis://h:6379/0"


def test_the_password_never_shows() -> None:
    address = parse_redis_url("redis://u:hunter2@h:1/0")
    assert "hunter2" not in str(address) and "hunter2" not in repr(address)
    with pytest.raises(ValueError) as info:
        parse_redis_url("redis://u:hunter2@h/x")
    assert "hunter2" not in str(info.value)
