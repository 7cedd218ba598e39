"""SQLite backend: the embedded default, stdlib ``sqlite3``.

Durability: WAL journal with ``synchronous=FULL``, so every COMMIT fsyncs the WAL before
it returns; a transaction reported committed survives a crash or power loss. (WAL's
default NORMAL would only protect against an application crash, not power loss, and an
acknowledged message must not be lost.)

Concurrency: one connection per thread (a sqlite3 connection must not be used by two
threads at once), created on first use. WAL lets readers run alongside the one writer.
Writers are serialised twice over: a lock in this object queues the writing threads of
this process in order, and ``BEGIN IMMEDIATE`` takes SQLite's write lock at the start of
the transaction (waiting up to ``busy_timeout_s`` for another process), so a read-then-
write transaction can never fail half-way on an upgrade to the write lock. With all
writes serialised, a conversation's id counter is read and advanced by one transaction
at a time and rolled back with it: ids are contiguous.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConflictError, StorageError
from .passwords import PasswordHasher
from .sql import Clock, Row, SqlStorage, Tx, apply_migrations

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_S = 10.0

# Each entry is one migration (version = index + 1), applied in one transaction with its
# row in schema_version. Append only; never edit an entry that has shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE departments (
            dept_id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            parent_id INTEGER NOT NULL DEFAULT 0,
            status INTEGER NOT NULL DEFAULT 0,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL)""",
        "CREATE INDEX departments_updated ON departments (updated)",
        # AUTOINCREMENT: an id is never reused, even after the newest row is deleted,
        # because clients cache users and groups by id.
        """CREATE TABLE users (
            user_id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            nick TEXT NOT NULL DEFAULT '',
            real_name TEXT NOT NULL DEFAULT '',
            gender INTEGER NOT NULL DEFAULT 0,
            avatar_url TEXT NOT NULL DEFAULT '',
            department_id INTEGER NOT NULL DEFAULT 0,
            email TEXT NOT NULL DEFAULT '',
            phone TEXT NOT NULL DEFAULT '',
            domain TEXT NOT NULL DEFAULT '',
            status INTEGER NOT NULL DEFAULT 0,
            sign_info TEXT NOT NULL DEFAULT '',
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL)""",
        "CREATE INDEX users_updated ON users (updated)",
        """CREATE TABLE conversations (
            conv_id INTEGER PRIMARY KEY AUTOINCREMENT,
            conv_type INTEGER NOT NULL,
            low_id INTEGER NOT NULL,
            high_id INTEGER NOT NULL,
            last_msg_id INTEGER NOT NULL DEFAULT 0,
            UNIQUE (conv_type, low_id, high_id))""",
        """CREATE TABLE messages (
            conv_id INTEGER NOT NULL REFERENCES conversations (conv_id),
            msg_id INTEGER NOT NULL,
            from_user_id INTEGER NOT NULL,
            msg_type INTEGER NOT NULL,
            msg_data BLOB NOT NULL,
            create_time INTEGER NOT NULL,
            PRIMARY KEY (conv_id, msg_id)) WITHOUT ROWID""",
        """CREATE TABLE unread (
            user_id INTEGER NOT NULL,
            session_type INTEGER NOT NULL,
            session_id INTEGER NOT NULL,
            conv_id INTEGER NOT NULL REFERENCES conversations (conv_id),
            unread_cnt INTEGER NOT NULL DEFAULT 0,
            last_read_msg_id INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (user_id, session_type, session_id)) WITHOUT ROWID""",
        """CREATE TABLE sessions (
            user_id INTEGER NOT NULL,
            session_type INTEGER NOT NULL,
            session_id INTEGER NOT NULL,
            conv_id INTEGER NOT NULL REFERENCES conversations (conv_id),
            status INTEGER NOT NULL DEFAULT 0,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL,
            PRIMARY KEY (user_id, session_type, session_id)) WITHOUT ROWID""",
        "CREATE INDEX sessions_user_updated ON sessions (user_id, updated)",
        """CREATE TABLE chat_groups (
            group_id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            avatar TEXT NOT NULL DEFAULT '',
            creator_id INTEGER NOT NULL,
            group_type INTEGER NOT NULL,
            version INTEGER NOT NULL DEFAULT 1,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL)""",
        """CREATE TABLE group_members (
            group_id INTEGER NOT NULL REFERENCES chat_groups (group_id),
            user_id INTEGER NOT NULL,
            shield INTEGER NOT NULL DEFAULT 0,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL,
            PRIMARY KEY (group_id, user_id)) WITHOUT ROWID""",
        "CREATE INDEX group_members_user ON group_members (user_id, group_id)",
    ),
    # 2: accounts an operator disabled refuse every login.
    ("ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0",),
    # 3: who made an account ('' an operator; 'load' the load generator, whose
    # accounts `imreactor load --cleanup` removes).
    ("ALTER TABLE users ADD COLUMN origin TEXT NOT NULL DEFAULT ''",),
)


class _SQLiteTx:
    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._cur.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._cur.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cur.execute(sql, params).rowcount

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cur.executemany(sql, rows)


class SQLiteStorage(SqlStorage):
    """:class:`~.base.Storage` on a SQLite file; thread-safe (connection per thread).

    Opening creates the file if needed and applies pending migrations; it raises
    StorageError if the file is not a usable database.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        hasher: PasswordHasher | None = None,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        super().__init__(clock, hasher)
        self.path = str(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the module issues no implicit BEGIN/COMMIT; we do.
        # check_same_thread=False only so close() may close it from another thread.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            mode = self._switch_to_wal(conn)
            if str(mode).lower() != "wal":
                raise StorageError(f"sqlite {self.path}: cannot use WAL (journal mode {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> Any:
        """``PRAGMA journal_mode = WAL``, retried while another connection races for it.

        Switching a new file to WAL needs an exclusive lock. When two connections
        that both hold a shared lock want it, SQLite answers BUSY at once instead of
        calling the busy handler (waiting could deadlock), so the loser retries here,
        for at most ``busy_timeout_s``.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError(f"sqlite {self.path}: storage is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            with self._conns_lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def _transaction(self, fn: Callable[[Tx], T], write: bool) -> T:
        try:
            conn = self._conn()
            if write:
                self._write_lock.acquire()
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = fn(_SQLiteTx(conn.cursor()))
                    conn.execute("COMMIT")
                    return result
                except BaseException:
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass  # the original error is the one to report
                    raise
            finally:
                if write:
                    self._write_lock.release()
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"sqlite {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite {self.path}: {exc}") from exc

    def _write(self, fn: Callable[[Tx], T]) -> T:
        return self._transaction(fn, write=True)

    def _read(self, fn: Callable[[Tx], T]) -> T:
        return self._transaction(fn, write=False)

    def _migrate(self) -> None:
        def work(tx: Tx) -> None:
            apply_migrations(tx, MIGRATIONS, "INTEGER", f"sqlite {self.path}", self._clock())

        # One write transaction for all pending migrations: BEGIN IMMEDIATE makes a
        # second process opening the same file wait, then see them applied.
        self._write(work)

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass  # closing is best effort; the data is committed or rolled back
