"""The password hasher on its own: format, salt, cost parameters, malformed input."""

from __future__ import annotations

import hashlib

import pytest

from imreactor.storage import PasswordHasher
from imreactor.storage.passwords import DEFAULT_SCRYPT_N, normalize_md5_hex

DIGEST = hashlib.md5(b"plain").hexdigest()


def test_normalize_md5_hex() -> None:
    assert normalize_md5_hex(DIGEST.upper()) == DIGEST
    assert normalize_md5_hex(DIGEST[:-1]) is None
    assert normalize_md5_hex("g" * 32) is None
    assert normalize_md5_hex("") is None


def test_default_cost_and_format() -> None:
    hasher = PasswordHasher()
    stored = hasher.hash(DIGEST)
    scheme, n, r, p, salt, key = stored.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", DEFAULT_SCRYPT_N, 8, 1)
    assert len(bytes.fromhex(salt)) == 16 and len(bytes.fromhex(key)) == 32
    assert DIGEST not in stored
    assert hasher.verify(DIGEST, stored)
    assert not hasher.verify(hashlib.md5(b"other").hexdigest(), stored)


def test_verify_uses_the_parameters_stored_in_the_hash() -> None:
    old = PasswordHasher(n=2**4, r=1, p=1).hash(DIGEST)
    assert PasswordHasher(n=2**6).verify(DIGEST, old)


def test_malformed_or_missing_hashes_never_match() -> None:
    hasher = PasswordHasher(n=2**4, r=1, p=1)
    for stored in (None, "", "md5$x", DIGEST, "scrypt$16$1$1$zz$zz", "bcrypt$1$1$1$00$00"):
        assert not hasher.verify(DIGEST, stored)
    assert not hasher.verify("0" * 32, None)  # the dummy hash's own input


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        PasswordHasher(n=1000)
    with pytest.raises(ValueError):
        PasswordHasher(n=2**4).hash("not an md5")
