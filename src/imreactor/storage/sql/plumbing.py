"""The plumbing every query family shares: the transaction interface, SQL helpers, the base class.

:class:`SqlBase` holds what a backend supplies (``_write``, ``_read``, ``close``, its
``FOR_UPDATE``), the clock and hasher, and the two row helpers more than one family
needs: a group's member list and the touch of recent-session rows. The SQL dialect
rules (``?`` placeholders, only what SQLite >= 3.35 and PostgreSQL both accept) are
stated in :mod:`imreactor.storage.sql`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from ..errors import NotFoundError, StorageError
from ..passwords import PasswordHasher
from ..records import SessionType

T = TypeVar("T")
Row = tuple[Any, ...]
Clock = Callable[[], int]
ConvKey = tuple[int, int, int]

IN_CHUNK = 500  # ids per IN (...) list: far below SQLite's bound-variable limit


class Tx(Protocol):
    """One open transaction; only valid inside the function it was passed to."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""
        ...

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


def wall_clock() -> int:
    return int(time.time())


def placeholders(n: int) -> str:
    return ",".join("?" * n)


def chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    """Distinct ids, ascending, in lists of at most IN_CHUNK."""
    unique = sorted(set(ids))
    for i in range(0, len(unique), IN_CHUNK):
        yield unique[i : i + IN_CHUNK]


def conv_key(session_type: SessionType, a: int, b: int) -> ConvKey:
    """The conversation of user ``a`` with session ``b``: a 1:1 pair is unordered."""
    if session_type == SessionType.SINGLE:
        return (int(SessionType.SINGLE), min(a, b), max(a, b))
    return (int(SessionType.GROUP), b, 0)


def apply_migrations(
    tx: Tx,
    migrations: Sequence[Sequence[str]],
    applied_type: str,
    where: str,
    now: int,
) -> None:
    """Bring the schema up to ``len(migrations)`` inside ``tx``; record each version applied.

    ``applied_type`` is the backend's integer type for the timestamp column; ``where``
    names the database in the error for a schema newer than this program.
    """
    tx.run(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        f" version INTEGER PRIMARY KEY, applied {applied_type} NOT NULL)"
    )
    row = tx.one("SELECT max(version) FROM schema_version")
    current = int(row[0]) if row and row[0] is not None else 0
    if current > len(migrations):
        raise StorageError(
            f"{where}: schema version {current} is newer than this program knows"
            f" ({len(migrations)})"
        )
    for version in range(current + 1, len(migrations) + 1):
        for statement in migrations[version - 1]:
            tx.run(statement)
        tx.run("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, now))


class SqlBase:
    """The backend hooks and shared helpers under every query family.

    Thread-safe as the backend's :meth:`_write` and :meth:`_read` are: each call runs its
    own transaction on a connection no other thread uses meanwhile.
    """

    #: appended to a SELECT that must lock its rows until commit ("" where the backend
    #: already serialises writers)
    FOR_UPDATE = ""

    def __init__(self, clock: Clock | None, hasher: PasswordHasher | None) -> None:
        self._clock = clock or wall_clock
        self._hasher = hasher or PasswordHasher()

    # -- backend hooks --------------------------------------------------------------------

    def _write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a read-write transaction, commit durably, return its result."""
        raise NotImplementedError

    def _read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a transaction that only reads."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def schema_version(self) -> int:
        row = self._read(lambda tx: tx.one("SELECT max(version) FROM schema_version"))
        return int(row[0]) if row and row[0] is not None else 0

    # -- helpers more than one family uses ------------------------------------------------

    @staticmethod
    def _members(tx: Tx, group_id: int) -> list[int]:
        """The group's member ids, ascending (messages fan out to them; groups list them)."""
        rows = tx.all(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id", (group_id,)
        )
        return [r[0] for r in rows]

    @staticmethod
    def _touch_sessions(
        tx: Tx, kind: int, conv_id: int, pairs: Iterable[tuple[int, int]], now: int
    ) -> None:
        """Create or revive the (user, session) entries of recent sessions, updated now."""
        tx.many(
            "INSERT INTO sessions (user_id, session_type, session_id, conv_id, status, created,"
            " updated) VALUES (?, ?, ?, ?, 0, ?, ?)"
            " ON CONFLICT (user_id, session_type, session_id) DO UPDATE"
            " SET status = 0, updated = excluded.updated",
            [(user, kind, sid, conv_id, now, now) for user, sid in sorted(pairs)],
        )

    @staticmethod
    def _existing_users(tx: Tx, user_ids: Iterable[int]) -> set[int]:
        found: set[int] = set()
        for chunk in chunks(user_ids):
            rows = tx.all(
                f"SELECT user_id FROM users WHERE user_id IN ({placeholders(len(chunk))})", chunk
            )
            found.update(r[0] for r in rows)
        return found

    def _lock_group(self, tx: Tx, group_id: int) -> int:
        """Lock the group's conversation row (the locking rule); its conv_id."""
        row = tx.one(
            "SELECT conv_id FROM conversations WHERE conv_type = ? AND low_id = ? AND high_id = 0"
            + self.FOR_UPDATE,
            (int(SessionType.GROUP), group_id),
        )
        if row is None:
            raise NotFoundError(f"no group {group_id}")
        return int(row[0])

    @staticmethod
    def _bump_group(tx: Tx, group_id: int, now: int) -> None:
        tx.run(
            "UPDATE chat_groups SET version = version + 1, updated = ? WHERE group_id = ?",
            (now, group_id),
        )
