"""Recently verified credentials, so a returning login does not pay a full scrypt again.

A login proves knowledge of the MD5 hex string the client sends; the database holds only
a salted scrypt hash of it (:mod:`imreactor.storage.passwords`), which costs tens of
milliseconds of CPU to check: a restart that brings thousands of users back would spend
minutes hashing. This cache remembers, per user id, one keyed tag

    HMAC-SHA256(secret, stored_hash || ":" || md5_hex)

for each credential that passed a full check, under a secret drawn at random when the
process starts and never stored. What it holds is therefore neither the MD5 nor anything
checkable without the secret, and it dies with the process.

Because the tag binds the *stored hash* too, and the caller always reads the account's row
afresh before asking, a password change (a new hash, with a new salt, even for the same
password) misses at once — whoever changed it, this process or ``imreactor user`` in
another. A disabled account is refused by the caller from the same fresh row, before the
cache can matter. An entry also expires ``ttl_s`` after the full check that made it, and
at most ``max_entries`` are kept (least recently used go first).

A wrong password for a cached user is a miss, not a fast refusal: it then costs a full
check like any other failed login, so answering never reveals who logged in recently
(msg_server's login throttle is what keeps failed attempts cheap). Loop thread only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable

from ...storage.passwords import normalize_md5_hex

#: Enough for every account of a large deployment (about 150 bytes each).
DEFAULT_MAX_ENTRIES = 200_000
#: A returning login within this long of its last full check costs no scrypt.
DEFAULT_TTL_S = 12 * 3600.0


class CredentialCache:
    """Bounded, expiring map of user id -> keyed tag of a verified credential.

    ``max_entries`` 0 disables the cache (every check misses, nothing is kept).
    ``clock`` returns monotonic seconds; tests pass a fake one.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl_s: float = DEFAULT_TTL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        secret: bytes | None = None,
    ) -> None:
        if max_entries < 0 or ttl_s < 0:
            raise ValueError("max_entries and ttl_s must not be negative")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._secret = secret if secret is not None else os.urandom(32)
        # user id -> (tag, expiry); ordered from least to most recently used.
        self._entries: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _tag(self, stored_hash: str, md5_hex: str) -> bytes | None:
        norm = normalize_md5_hex(md5_hex)
        if norm is None:
            return None
        message = f"{stored_hash}:{norm}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def check(self, user_id: int, stored_hash: str, md5_hex: str) -> bool:
        """True if ``md5_hex`` passed a full check against ``stored_hash`` for this user
        within ``ttl_s``. ``stored_hash`` must be the one just read from the database."""
        entry = self._entries.get(user_id)
        if entry is not None:
            tag, expires = entry
            if self._clock() >= expires:
                del self._entries[user_id]
            else:
                candidate = self._tag(stored_hash, md5_hex)
                if candidate is not None and hmac.compare_digest(candidate, tag):
                    self._entries.move_to_end(user_id)
                    self.hits += 1
                    return True
        self.misses += 1
        return False

    def remember(self, user_id: int, stored_hash: str, md5_hex: str) -> None:
        """Record that ``md5_hex`` just passed a full check against ``stored_hash``."""
        if self.max_entries == 0:
            return
        tag = self._tag(stored_hash, md5_hex)
        if tag is None:
            return
        entries = self._entries
        entries[user_id] = (tag, self._clock() + self.ttl_s)
        entries.move_to_end(user_id)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def forget(self, user_id: int) -> None:
        """Drop the user's entry, if any (e.g. the account was found disabled)."""
        self._entries.pop(user_id, None)
