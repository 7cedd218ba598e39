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


def data_dir_database(data_dir: Path | str) -> str:
    """The storage URL of ``data_dir``: the one it remembers (:func:`remember_database`),
    else its SQLite file (an absolute path)."""
    remembered = Path(data_dir) / DATABASE_URL_FILE
    try:
        url = remembered.read_text().strip()
    except FileNotFoundError:
        url = ""
    return url or f"sqlite:///{(Path(data_dir) / DATABASE_FILE).resolve()}"


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
) -> list[str]:
    """Create those of ``users`` (names, or ``(name, nick)``; nick defaults to the name)
    that do not exist yet, with what clients send as ``password``
    (:func:`~imreactor.pdu.password.password_digest`); returns the names created, in
    order. A name another process creates meanwhile is skipped, not an error.

    Hashing is slow by design (scrypt), so the work is spread over ``threads``.
    ``hasher`` (default: the storage's, at full cost) makes the hashes; a cheaper one
    makes test data faster to create and its cold logins cheaper, nothing else.
    """
    from .storage import ConflictError, open_storage

    wanted = [(u, u) if isinstance(u, str) else u for u in users]
    store = open_storage(database, hasher=hasher)
    digest = password_digest(password)

    def one(user: tuple[str, str]) -> bool:
        name, nick = user
        if store.user_by_name(name) is not None:
            return False
        try:
            store.add_user(name, digest, nick=nick)
        except ConflictError:
            return False
        return True

    try:
        with ThreadPoolExecutor(threads or os.cpu_count() or 2) as pool:
            made = list(pool.map(one, wanted))
    finally:
        store.close()
    return [name for (name, _), new in zip(wanted, made, strict=True) if new]
