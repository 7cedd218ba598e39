"""Fixtures of the reactor tests: every test taking ``loop`` runs once per poller backend.

The backends are those :func:`imreactor.net.poller.available` reports; a backend
this OS lacks (kqueue on Linux, epoll on BSD) is still listed, as a skipped
test with the reason, so the output shows what was not run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest

from imreactor.net import Connection, EventLoop, Listener
from imreactor.net.poller import available
from imreactor.net.testing import FakeClock

from .helpers import DEADLINE_S, RunUntil, drive_until

ALL_BACKENDS = ("epoll", "kqueue", "poll", "select")


def _backend_params() -> list[object]:
    have = available()
    params: list[object] = []
    for name in dict.fromkeys([*ALL_BACKENDS, *have]):
        if name in have:
            params.append(pytest.param(name, id=name))
        else:
            reason = f"the {name} poller does not exist on {sys.platform} (select.{name} missing)"
            params.append(pytest.param(name, id=name, marks=pytest.mark.skip(reason=reason)))
    return params


@pytest.fixture(params=_backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    """Name of the poller backend under test."""
    name: str = request.param
    return name


def _close_loop(loop: EventLoop) -> None:
    assert not loop.is_running, "the test left its loop running"
    # What the test left open is released here, so that one test's sockets never
    # leak into the next one (or into a ResourceWarning).
    for handler in list(loop._handlers.values()):
        if isinstance(handler, Connection):
            handler.abort()
        elif isinstance(handler, Listener):
            handler.close()
    loop.close()


@pytest.fixture
def loop(backend: str) -> Iterator[EventLoop]:
    """A fresh EventLoop on the backend under test, closed after the test."""
    loop = EventLoop(backend)
    assert loop.backend == backend
    try:
        yield loop
    finally:
        _close_loop(loop)


@pytest.fixture
def run_until(loop: EventLoop) -> RunUntil:
    """``run_until(predicate, timeout_s=DEADLINE_S, what="")``: run ``loop`` until true, or fail."""

    def run(predicate: Callable[[], object], timeout_s: float = DEADLINE_S, what: str = "") -> None:
        drive_until(loop, predicate, timeout_s, what)

    return run


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock; with ``fake_loop``, the time of that loop."""
    return FakeClock(1000.0)


@pytest.fixture
def fake_loop(backend: str, clock: FakeClock) -> Iterator[EventLoop]:
    """An EventLoop on the backend under test whose time is ``clock``. Drive it with run_once(0)."""
    loop = EventLoop(backend, clock=clock)
    try:
        yield loop
    finally:
        _close_loop(loop)
