"""Salted, slow hashes of what clients send as a password (the hex MD5 of the plaintext).

The wire protocol makes the MD5 hex string the secret a client proves it knows, so that
is what gets hashed here: scrypt with a random per-user salt, so a stolen database gives
neither the MD5 (which would log in directly) nor a cheap way to test guesses. The cost
parameters are stored with every hash, so raising them later does not lock anyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import string

SCHEME = "scrypt"
DEFAULT_SCRYPT_N = 2**14  # ~16 MiB and a few tens of ms per hash: once per login
SALT_BYTES = 16
KEY_BYTES = 32
_HEX = frozenset(string.hexdigits)


def normalize_md5_hex(value: str) -> str | None:
    """The lowercase form of a 32-digit hex MD5, or None if ``value`` is not one.

    Clients send lowercase; accepting either case costs nothing and avoids a login
    failure for a client that formats the digest in capitals.
    """
    if len(value) != 32 or not _HEX.issuperset(value):
        return None
    return value.lower()


class PasswordHasher:
    """Hashes and checks passwords. Thread-safe: it holds only immutable parameters.

    ``n``, ``r``, ``p`` are scrypt's cost parameters for new hashes; checking always uses
    the parameters stored in the hash itself.
    """

    def __init__(self, n: int = DEFAULT_SCRYPT_N, r: int = 8, p: int = 1) -> None:
        if n < 2 or n & (n - 1):
            raise ValueError("scrypt n must be a power of two greater than 1")
        self.n, self.r, self.p = n, r, p
        # Checking a name that does not exist runs a hash against this, so the answer
        # takes as long as for a real user and does not reveal which names exist.
        self._dummy = self.hash("0" * 32)

    def hash(self, md5_hex: str) -> str:
        """``scrypt$n$r$p$salt$key`` (hex) for ``md5_hex``; raises ValueError if not an MD5."""
        norm = normalize_md5_hex(md5_hex)
        if norm is None:
            raise ValueError("password must be the 32-digit hex MD5 the client sends")
        salt = os.urandom(SALT_BYTES)
        key = _scrypt(norm, salt, self.n, self.r, self.p)
        return f"{SCHEME}${self.n}${self.r}${self.p}${salt.hex()}${key.hex()}"

    def verify(self, md5_hex: str, stored: str | None) -> bool:
        """True if ``md5_hex`` matches ``stored``; compares in constant time.

        ``stored`` None (no such user) still costs one hash and returns False.
        """
        norm = normalize_md5_hex(md5_hex)
        target = stored if stored is not None else self._dummy
        try:
            scheme, n, r, p, salt_hex, key_hex = target.split("$")
            if scheme != SCHEME:
                return False
            salt, key = bytes.fromhex(salt_hex), bytes.fromhex(key_hex)
            candidate = _scrypt(norm or "0" * 32, salt, int(n), int(r), int(p))
        except ValueError:
            return False  # a malformed stored hash never matches
        return hmac.compare_digest(candidate, key) and norm is not None and stored is not None


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem above OpenSSL's 32 MiB default so n up to 2**15 with r=8 works.
    return hashlib.scrypt(
        secret.encode("ascii"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=KEY_BYTES
    )
