"""Shared fixtures: a SQLite file, a PostgreSQL database (a private server per session) and a
private Redis (a ``redis-server`` per test, in its temp dir, on a free port) and a headless
Chromium for browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import PostgresServer, PostgresUnavailable
from playwright.sync_api import Browser, Page, sync_playwright

from imreactor.redis import RedisProcess, RedisUnavailable


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A started ``redis-server`` of this test alone (durable: a restart keeps its data),
    stopped after it. A missing binary FAILS the test (CI installs 'redis-server')."""
    try:
        server = RedisProcess(tmp_path / "redis")
    except RedisUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright for one session (never a downloaded
    browser). A missing binary FAILS the tests that need it: CI installs 'chromium'."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's 'chromium' package", pytrace=False)
    with sync_playwright() as playwright:
        # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page in its own browser context (no cookies or storage shared between tests)."""
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()
