"""``redis[s]://[[user]:password@]host[:port][/db]``: where a Redis is, checked once.

The one parser of Redis addresses, so that a bad URL is refused where it is read
(a config file, a command line) with a message naming what is wrong, never
later by a failing connect. ``rediss://`` is Redis over TLS (the server's
certificate is verified against a CA the caller gives, see
:func:`~imreactor.redis.client.tls_context`); unix sockets are not served.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..net.connection import is_port

DEFAULT_PORT = 6379
#: Redis's default ``databases 16``; a server configured for more accepts more.
MAX_DB = 1 << 20


@dataclass(frozen=True)
class RedisAddress:
    """A parsed Redis URL. ``password`` is sent with AUTH, never logged (see :meth:`__str__`)."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False  #: rediss://: TLS to the server, its certificate verified

    def __str__(self) -> str:
        auth = "***@" if self.password is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{self.port}/{self.db}"

    def __repr__(self) -> str:  # never the password, also not in a traceback
        return f"RedisAddress({self})"


def parse_redis_url(url: str) -> RedisAddress:
    """Parse ``url``; raises ``ValueError`` saying what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("a Redis URL must be a non-empty string like redis://127.0.0.1:6379/0")
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {_safe(url)!r}: {exc}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"bad Redis URL {_safe(url)!r}: not redis:// or rediss://")
    if not parts.hostname:
        raise ValueError(f"bad Redis URL {_safe(url)!r}: no host")
    if parts.query or parts.fragment:
        raise ValueError(f"bad Redis URL {_safe(url)!r}: no ?query or #fragment is understood")
    path = parts.path.strip("/")
    if path and (not path.isdigit() or int(path) >= MAX_DB):
        raise ValueError(
            f"bad Redis URL {_safe(url)!r}: the database must be a number, not {path!r}"
        )
    port = DEFAULT_PORT if port is None else port
    if not is_port(port, allow_zero=False):
        raise ValueError(f"bad Redis URL {_safe(url)!r}: port {port} is outside 1..65535")
    return RedisAddress(
        host=parts.hostname,
        port=port,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


def _safe(url: str) -> str:
    """``url`` with any password replaced, for error messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}"
