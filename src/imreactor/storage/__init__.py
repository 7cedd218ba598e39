"""Storage for the IM servers: one interface (:class:`Storage`), SQLite and PostgreSQL backends.

``open_storage(url)`` picks the backend from the URL:

- ``sqlite:///data/im.db`` (relative to the working directory) or
  ``sqlite:////var/lib/im/im.db`` (absolute): the embedded default;
- ``postgresql://user@host:port/dbname`` (or ``postgres://``): PostgreSQL.

See :mod:`.base` for the contract every backend keeps (thread-safety, durability, errors).
"""

from __future__ import annotations

from typing import Any

from .base import MAX_MSG_LIST, MAX_RECENT_SESSIONS, Storage
from .errors import ConflictError, NotFoundError, StorageError
from .passwords import PasswordHasher
from .records import (
    ContactSession,
    Department,
    DepartmentStatus,
    GroupInfo,
    GroupType,
    GroupVersion,
    InsertResult,
    LoginRecord,
    Message,
    MsgType,
    NewMessage,
    SessionStatus,
    SessionType,
    UnreadInfo,
    User,
)
from .sql import Clock

__all__ = [
    "MAX_MSG_LIST",
    "MAX_RECENT_SESSIONS",
    "Clock",
    "ConflictError",
    "ContactSession",
    "Department",
    "DepartmentStatus",
    "GroupInfo",
    "GroupType",
    "GroupVersion",
    "InsertResult",
    "LoginRecord",
    "Message",
    "MsgType",
    "NewMessage",
    "NotFoundError",
    "PasswordHasher",
    "SessionStatus",
    "SessionType",
    "Storage",
    "StorageError",
    "UnreadInfo",
    "User",
    "check_storage_url",
    "open_storage",
]

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def open_storage(
    url: str,
    *,
    clock: Clock | None = None,
    hasher: PasswordHasher | None = None,
    **backend_options: Any,
) -> Storage:
    """Open (creating and migrating as needed) the storage ``url`` names.

    ``clock`` (integer seconds) and ``hasher`` default to the wall clock and scrypt at
    its default cost; ``backend_options`` go to the backend's constructor (for example
    ``busy_timeout_s`` for SQLite, ``max_connections`` for PostgreSQL). Raises ValueError
    for a URL of no known form, StorageError if the database cannot be used.
    """
    check_storage_url(url)
    if url.startswith(SQLITE_PREFIX):
        from .sqlite import SQLiteStorage

        path = url[len(SQLITE_PREFIX) :]
        return SQLiteStorage(path, clock=clock, hasher=hasher, **backend_options)
    from .postgres import PostgresStorage

    return PostgresStorage(url, clock=clock, hasher=hasher, **backend_options)


def check_storage_url(url: str) -> None:
    """Raise ValueError (one line, with the URL) unless ``url`` has a form
    :func:`open_storage` knows; whether that database can be reached is not checked."""
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX) :]
        if not path or path.startswith(":memory:") or path.startswith("file:"):
            # Every thread has its own connection: an in-memory database would be a
            # different, empty one in each.
            raise ValueError(f"storage URL {url!r}: a SQLite database needs a file path")
        return
    if not url.startswith(POSTGRES_PREFIXES):
        raise ValueError(f"storage URL {url!r}: expected sqlite:///PATH or postgresql://...")
