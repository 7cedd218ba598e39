"""The credential cache (imreactor.servers.dbproxy.credentials), on a fake clock.

Covered: a remembered credential hits for the same stored hash and MD5 (in either case);
a wrong MD5, another stored hash (a password change) or another user misses; entries
expire after ``ttl_s``; at most ``max_entries`` are kept, least recently used first; size 0
keeps nothing; ``forget``; nothing kept contains the MD5; and two processes' secrets differ.
"""

from __future__ import annotations

import hashlib

import pytest

from imreactor.servers.dbproxy.credentials import CredentialCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


STORED = "scrypt$16384$8$1$00$11"
OTHER_STORED = "scrypt$16384$8$1$22$33"


def test_a_verified_credential_hits_until_it_expires() -> None:
    clock = Clock()
    cache = CredentialCache(ttl_s=60.0, clock=clock)
    assert not cache.check(7, STORED, md5("pw"))
    cache.remember(7, STORED, md5("pw"))
    assert cache.check(7, STORED, md5("pw"))
    assert cache.check(7, STORED, md5("pw").upper())
    clock.now += 59.9
    assert cache.check(7, STORED, md5("pw"))
    clock.now += 0.2
    assert not cache.check(7, STORED, md5("pw"))
    assert len(cache) == 0  # the expired entry is gone, not merely skipped
    assert (cache.hits, cache.misses) == (3, 2)


def test_a_wrong_password_another_hash_or_another_user_misses() -> None:
    cache = CredentialCache(clock=Clock())
    cache.remember(7, STORED, md5("pw"))
    assert not cache.check(7, STORED, md5("guess"))
    assert not cache.check(7, STORED, "not an md5")
    assert not cache.check(7, OTHER_STORED, md5("pw")), "a changed password must miss"
    assert not cache.check(8, STORED, md5("pw"))
    assert cache.check(7, STORED, md5("pw"))  # none of those evicted the real one


def test_the_least_recently_used_entries_go_first() -> None:
    cache = CredentialCache(max_entries=3, clock=Clock())
    for uid in (1, 2, 3):
        cache.remember(uid, STORED, md5("pw"))
    assert cache.check(1, STORED, md5("pw"))  # 1 is now the most recently used
    cache.remember(4, STORED, md5("pw"))
    assert len(cache) == 3
    assert not cache.check(2, STORED, md5("pw"))
    assert all(cache.check(uid, STORED, md5("pw")) for uid in (1, 3, 4))


def test_size_zero_keeps_nothing_and_forget_drops() -> None:
    off = CredentialCache(max_entries=0, clock=Clock())
    off.remember(1, STORED, md5("pw"))
    assert len(off) == 0 and not off.check(1, STORED, md5("pw"))
    cache = CredentialCache(clock=Clock())
    cache.remember(1, STORED, md5("pw"))
    cache.forget(1)
    cache.forget(99)  # unknown: nothing happens
    assert not cache.check(1, STORED, md5("pw"))
    with pytest.raises(ValueError):
        CredentialCache(max_entries=-1)


def test_what_it_keeps_is_keyed_and_never_the_md5() -> None:
    secret_a, secret_b = b"a" * 32, b"b" * 32
    a = CredentialCache(clock=Clock(), secret=secret_a)
    b = CredentialCache(clock=Clock(), secret=secret_b)
    digest = md5("pw")
    a.remember(1, STORED, digest)
    b.remember(1, STORED, digest)
    (tag_a, _), (tag_b, _) = a._entries[1], b._entries[1]
    assert tag_a != tag_b, "the tag must depend on the process's secret"
    assert digest.encode() not in tag_a and bytes.fromhex(digest) not in tag_a
    # Two caches with random secrets do not accept each other's entries.
    c = CredentialCache(clock=Clock())
    c._entries[1] = a._entries[1]
    assert not c.check(1, STORED, digest)
