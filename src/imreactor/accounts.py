"""Accounts for the tools: which database a data dir uses, and creating users.

``imreactor up``, the admin commands and ``imreactor load --create-users`` work on the
suite's storage directly (the servers reach it only through db_proxy_server); this
module is their one door to it, so that "the data dir's database" and "create the user
if absent" mean the same thing everywhere. Client code imports it only for
provisioning, never :mod:`imreactor.storage` itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from .pdu.password import password_digest

if TYPE_CHECKING:
    from .storage.passwords import PasswordHasher

#: The SQLite file of a data dir that names no other database.
DATABASE_FILE = "imreactor.db"
#: The file in which a data dir remembers the database ``imreactor up --database`` gave it.
DATABASE_URL_FILE = "database.url"


#: The origin of the accounts ``imreactor load --create-users`` makes.
LOAD_ORIGIN = "load"


def data_dir_database(data_dir: Path | str) -> str:
    """The storage URL of ``data_dir``: the one it remembers (:func:`remember_database`),
    else its SQLite file (an absolute path)."""
    remembered = Path(data_dir) / DATABASE_URL_FILE
    try:
        url = remembered.read_text().strip()
    except FileNotFoundError:
        url = ""
    return url or f"sqlite:///{(Path(data_dir) / DATABASE_FILE).resolve()}"


def data_dir_has_database(data_dir: Path | str) -> bool:
    """Does ``data_dir`` name a database: one it remembers, or its SQLite file?"""
    here = Path(data_dir)
    return (here / DATABASE_URL_FILE).is_file() or (here / DATABASE_FILE).exists()


class AccountsError(Exception):
    """The database could not do what was asked (the storage's error, in one line)."""


def remember_database(data_dir: Path | str, url: str) -> None:
    """Make ``url`` the database of ``data_dir`` for every tool that is given the data dir.

    The file may hold a password (a PostgreSQL URL's), so only its owner can read it.
    """
    path = Path(data_dir) / DATABASE_URL_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    os.chmod(path, 0o600)  # an older file may have had other bits


def create_users(
    database: str,
    users: Iterable[str | tuple[str, str]],
    password: str,
    *,
    threads: int | None = None,
    hasher: PasswordHasher | None = None,
    origin: str = "",
) -> list[str]:
    """Create those of ``users`` (names, or ``(name, nick)``; nick defaults to the name)
    that do not exist yet, with what clients send as ``password``
    (:func:`~imreactor.pdu.password.password_digest`); returns the names created, in
    order. A name another process creates meanwhile is skipped, not an error.

    Hashing is slow by design (scrypt), so the work is spread over ``threads``.
    ``hasher`` (default: the storage's, at full cost) makes the hashes; a cheaper one
    makes test data faster to create and its cold logins cheaper, nothing else.
    Raises AccountsError if the database cannot be used. ``origin`` marks the
    accounts (:data:`LOAD_ORIGIN` for the load generator's), so that
    :func:`delete_users_of_origin` can remove them and only them.
    """
    from .storage import ConflictError, StorageError, open_storage

    wanted = [(u, u) if isinstance(u, str) else u for u in users]
    try:
        store = open_storage(database, hasher=hasher)
    except StorageError as exc:
        raise AccountsError(str(exc)) from None
    digest = password_digest(password)

    def one(user: tuple[str, str]) -> bool:
        name, nick = user
        if store.user_by_name(name) is not None:
            return False
        try:
            store.add_user(name, digest, nick=nick, origin=origin)
        except ConflictError:
            return False
        return True

    try:
        with ThreadPoolExecutor(threads or os.cpu_count() or 2) as pool:
            made = list(pool.map(one, wanted))
    except StorageError as exc:
        raise AccountsError(str(exc)) from None
    finally:
        store.close()
    return [name for (name, _), new in zip(wanted, made, strict=True) if new]


def delete_users_of_origin(database: str, origin: str) -> list[str]:
    """Delete every account created with ``origin`` (never ``""``: those are the
    operator's); returns their names, ascending by id."""
    from .storage import StorageError, open_storage

    if not origin:
        raise ValueError("refusing to delete the accounts an operator made")
    try:
        store = open_storage(database)
        try:
            users = store.users_of_origin(origin)
            gone = set(store.delete_users([u.user_id for u in users]))
        finally:
            store.close()
    except StorageError as exc:
        raise AccountsError(str(exc)) from None
    return [u.name for u in users if u.user_id in gone]
