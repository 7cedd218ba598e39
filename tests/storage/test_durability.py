"""The settings that make a returned commit durable are in force on the connections."""

from __future__ import annotations

from pathlib import Path

from imreactor.storage import open_storage
from imreactor.storage.postgres import PostgresStorage
from imreactor.storage.sqlite import SQLiteStorage

from .helpers import FAST_HASHER

SQLITE_SYNCHRONOUS_FULL = 2


def test_sqlite_uses_wal_and_synchronous_full(sqlite_path: Path) -> None:
    store = open_storage(f"sqlite:///{sqlite_path}", hasher=FAST_HASHER)
    try:
        assert isinstance(store, SQLiteStorage)
        conn = store._conn()  # white-box: the thread's own connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == SQLITE_SYNCHRONOUS_FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        store.close()


def test_postgres_commits_synchronously(postgres_url: str) -> None:
    store = open_storage(postgres_url, hasher=FAST_HASHER)
    try:
        assert isinstance(store, PostgresStorage)
        row = store._read(lambda tx: tx.one("SHOW synchronous_commit"))
        assert row is not None and row[0] == "on"
    finally:
        store.close()
