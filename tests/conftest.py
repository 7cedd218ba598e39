"""Shared fixtures: a SQLite file and a PostgreSQL database (a private server per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import PostgresServer, PostgresUnavailable


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """Where a test's SQLite database file goes (not created)."""
    return tmp_path / "imreactor.db"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session. Missing binaries FAIL the tests that
    need it (CI installs the 'postgresql' package, so a skip would hide a broken setup)."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of a new, empty database on the session's server."""
    return postgres_server.create_database()
