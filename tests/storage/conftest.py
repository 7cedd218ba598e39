"""One storage suite for every backend: the ``store`` fixture is parametrized over them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from imreactor.storage import Storage, open_storage

from .helpers import FAST_HASHER, FakeClock

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{request.getfixturevalue('sqlite_path')}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_store(storage_url: str, clock: FakeClock) -> Iterator[Callable[[], Storage]]:
    """Opens the test's database (as often as asked); closes them all at the end."""
    opened: list[Storage] = []

    def open_() -> Storage:
        store = open_storage(storage_url, clock=clock, hasher=FAST_HASHER)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], Storage]) -> Storage:
    return open_store()
