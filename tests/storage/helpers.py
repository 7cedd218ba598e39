"""Helpers for the storage tests: a fake clock, a fast hasher, raw database access."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg

from imreactor.storage import PasswordHasher, Storage

START_TIME = 1_700_000_000
PASSWORD = "0" * 32  # what a client sends: hex MD5 (of some plaintext)

# The lowest scrypt cost: these tests check what is stored and compared, not the cost,
# and hundreds of users at production cost would take seconds.
FAST_HASHER = PasswordHasher(n=2**4, r=1, p=1)


class FakeClock:
    """Storage's clock under test control: integer seconds, moved by hand."""

    def __init__(self, now: int = START_TIME) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int = 1) -> int:
        self.now += seconds
        return self.now


def raw_query(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the database behind the storage's back (``?`` placeholders)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None)
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as pg:
        cur = pg.execute(query.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []


def add_users(store: Storage, *names: str) -> list[int]:
    """Create users with password PASSWORD; their ids."""
    return [store.add_user(name, PASSWORD).user_id for name in names]
