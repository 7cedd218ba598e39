"""Schema migrations: applied at open, recorded once, idempotent, safe to race."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from imreactor.storage import Storage, StorageError, postgres, sqlite

from .helpers import add_users, raw_query


def _migrations(url: str) -> int:
    return len(sqlite.MIGRATIONS if url.startswith("sqlite:") else postgres.MIGRATIONS)


def test_open_twice_is_idempotent(open_store: Callable[[], Storage], storage_url: str) -> None:
    first = open_store()
    (uid,) = add_users(first, "a")
    first.close()
    again = open_store()
    assert again.schema_version() == _migrations(storage_url)
    assert [u.user_id for u in again.list_users()] == [uid]
    rows = raw_query(storage_url, "SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, _migrations(storage_url) + 1))


def test_concurrent_opens_migrate_once(open_store: Callable[[], Storage], storage_url: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_store()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = raw_query(storage_url, "SELECT count(*) FROM schema_version")
    assert rows[0][0] == _migrations(storage_url)


def test_a_newer_schema_is_refused(open_store: Callable[[], Storage], storage_url: str) -> None:
    open_store().close()
    raw_query(storage_url, "INSERT INTO schema_version (version, applied) VALUES (999, 0)")
    with pytest.raises(StorageError, match="newer"):
        open_store()


def test_a_version_2_database_is_upgraded_in_place(
    open_store: Callable[[], Storage], storage_url: str
) -> None:
    # A database as the previous release left it: no users.origin, schema version 2.
    old = open_store()
    (alice,) = add_users(old, "alice")
    raw_query(storage_url, "ALTER TABLE users DROP COLUMN origin")
    raw_query(storage_url, "DELETE FROM schema_version WHERE version = 3")
    upgraded = open_store()
    assert upgraded.schema_version() == 3 == _migrations(storage_url)
    # The accounts it held keep working, and count as an operator's (never cleaned up).
    assert [u.user_id for u in upgraded.users_of_origin("")] == [alice]
    assert upgraded.users_of_origin("load") == []
    assert upgraded.add_user("load0", "0" * 32, origin="load").user_id > alice
