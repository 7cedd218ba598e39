"""A database that goes away gives StorageError, which the server turns into an error reply."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from pg import PostgresServer, free_port

from imreactor.storage import NewMessage, SessionType, Storage, StorageError, open_storage

from .helpers import FAST_HASHER, PASSWORD, add_users

SINGLE = SessionType.SINGLE


def _in_thread(fn: Callable[[], object]) -> BaseException | None:
    """Run ``fn`` on a new thread (so on a new connection); the exception it raised."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return caught[0] if caught else None


def test_bad_urls_are_value_errors() -> None:
    for url in ("mysql://x/y", "sqlite:///", "sqlite:///:memory:", "/tmp/x.db"):
        with pytest.raises(ValueError):
            open_storage(url)


def test_sqlite_file_that_is_not_a_database(sqlite_path: Path) -> None:
    sqlite_path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StorageError, match="not a database") as info:
        open_storage(f"sqlite:///{sqlite_path}", hasher=FAST_HASHER)
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_sqlite_file_destroyed_while_open(sqlite_path: Path) -> None:
    store = open_storage(f"sqlite:///{sqlite_path}", hasher=FAST_HASHER)
    try:
        a, b = add_users(store, "a", "b")
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{sqlite_path}{suffix}")
            with path.open("r+b") as f:
                f.write(b"\xde\xad" * max(path.stat().st_size // 2, 4096))
        with pytest.raises(StorageError, match="not a database"):
            store.get_users([a])
        with pytest.raises(StorageError):
            store.insert_message(NewMessage(a, b, 1, b"lost"))
        assert isinstance(_in_thread(lambda: store.unread_counts(b)), StorageError)
    finally:
        store.close()


def test_closed_storage_raises(sqlite_path: Path) -> None:
    store = open_storage(f"sqlite:///{sqlite_path}", hasher=FAST_HASHER)
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.list_users()


def test_postgres_unreachable_at_open() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StorageError, match="cannot connect") as info:
        open_storage(url, connect_timeout_s=2)
    assert isinstance(info.value.__cause__, psycopg.Error)


def test_postgres_stopped_under_a_running_storage(postgres_server: PostgresServer) -> None:
    # Its own server: stopping the session's one would break the other tests.
    with PostgresServer(postgres_server.bin_dir) as server:
        store: Storage = open_storage(server.create_database(), hasher=FAST_HASHER)
        try:
            a, b = add_users(store, "a", "b")
            assert store.insert_message(NewMessage(a, b, 1, b"one")).msg_id == 1
            server.stop()
            with pytest.raises(StorageError) as info:
                store.insert_message(NewMessage(a, b, 1, b"two"))
            assert isinstance(info.value.__cause__, psycopg.Error)
            with pytest.raises(StorageError):
                store.get_users([a])
            assert isinstance(_in_thread(lambda: store.unread_counts(b)), StorageError)
            with pytest.raises(StorageError):
                store.add_user("c", PASSWORD)
            # Back up: the next calls reconnect, and nothing of the failed insert was kept.
            server.start()
            assert [u.user_id for u in store.get_users([a, b])] == [a, b]
            assert store.insert_message(NewMessage(b, a, 1, b"three")).msg_id == 2
            # A restart while the pool sits idle: the dead connections are replaced.
            server.stop()
            server.start()
            assert store.insert_message(NewMessage(b, a, 1, b"four")).msg_id == 3
            assert store.latest_msg_id(a, SINGLE, b) == 3
        finally:
            store.close()
