"""The poller contract, run on every backend: register / modify / unregister / poll,
the three kinds of timeout, one entry per ready fd, and error readiness on a reset peer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from imreactor.net.poller import (
    ENV_VAR,
    ERROR,
    READABLE,
    WRITABLE,
    Poller,
    available,
    make_poller,
)

from .helpers import DEADLINE_S, reset

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def poller(backend: str) -> Iterator[Poller]:
    p = make_poller(backend)
    assert p.name == backend
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def ready(poller: Poller, timeout: float | None = 0) -> dict[int, int]:
    events = poller.poll(timeout)
    fds = [fd for fd, _ in events]
    assert len(fds) == len(set(fds)), f"an fd was reported twice: {events}"
    return dict(events)


def test_register_modify_unregister(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fd = a.fileno()
    poller.register(fd, READABLE)
    assert ready(poller) == {}, "nothing to read yet"

    b.send(b"x")
    assert ready(poller, DEADLINE_S).get(fd, 0) & READABLE
    # Level-triggered: still ready while not drained.
    assert ready(poller).get(fd, 0) & READABLE

    poller.modify(fd, READABLE | WRITABLE)
    mask = ready(poller).get(fd, 0)
    assert mask & READABLE and mask & WRITABLE, "one entry carries both directions"

    poller.modify(fd, WRITABLE)
    mask = ready(poller).get(fd, 0)
    assert mask & WRITABLE and not mask & READABLE

    poller.modify(fd, 0)
    assert fd not in ready(poller), "registered without interest: nothing to report"

    poller.modify(fd, READABLE)
    assert a.recv(10) == b"x"
    assert fd not in ready(poller), "drained"

    poller.unregister(fd)
    b.send(b"y")
    assert fd not in ready(poller, 0.05), "unregistered fds are not reported"

    poller.register(fd, READABLE)  # may be registered again
    assert ready(poller).get(fd, 0) & READABLE


def test_many_fds_report_independently(poller: Poller) -> None:
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        for a, _ in pairs:
            poller.register(a.fileno(), READABLE)
        for _, b in pairs[::2]:
            b.send(b"!")
        time.sleep(0.01)
        got = set(ready(poller, DEADLINE_S))
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < 10 and time.monotonic() < deadline:
            got |= set(ready(poller, 0.05))
        assert got == {a.fileno() for a, _ in pairs[::2]}
    finally:
        for a, b in pairs:
            poller.unregister(a.fileno())
            a.close()
            b.close()


def test_timeout_zero_returns_at_once(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    poller.register(pair[0].fileno(), READABLE)
    start = time.monotonic()
    assert ready(poller, 0) == {}
    assert time.monotonic() - start < 1.0


def test_positive_timeout_waits_then_returns_empty(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    poller.register(pair[0].fileno(), READABLE)
    start = time.monotonic()
    assert ready(poller, 0.1) == {}
    elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < DEADLINE_S, "must not return before the timeout"


def test_positive_timeout_returns_early_on_an_event(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), READABLE)
    threading.Timer(0.05, b.send, args=(b"x",)).start()
    start = time.monotonic()
    got = ready(poller, DEADLINE_S)
    assert got.get(a.fileno(), 0) & READABLE
    assert time.monotonic() - start < DEADLINE_S / 2


def test_timeout_none_blocks_until_an_event(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), READABLE)
    result: list[dict[int, int]] = []
    waiter = threading.Thread(target=lambda: result.append(ready(poller, None)), daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "poll(None) returned with nothing ready"
    b.send(b"x")
    waiter.join(DEADLINE_S)
    assert not waiter.is_alive(), "poll(None) did not return after an event"
    assert result[0].get(a.fileno(), 0) & READABLE


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        cli = socket.create_connection(listener.getsockname(), timeout=DEADLINE_S)
        srv, _ = listener.accept()
    srv.setblocking(False)
    try:
        yield srv, cli
    finally:
        srv.close()
        cli.close()


def test_reset_peer_is_reported(
    poller: Poller, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    srv, cli = tcp_pair
    poller.register(srv.fileno(), READABLE)
    assert ready(poller) == {}
    reset(cli)
    mask = ready(poller, DEADLINE_S).get(srv.fileno(), 0)
    assert mask & (READABLE | ERROR), "a reset must wake the reader"
    if poller.name != "select":
        # poll(2)/epoll(7) report the reset itself (select(2) has no such bit).
        assert mask & ERROR
    with pytest.raises(ConnectionResetError):
        srv.recv(10)


def test_error_is_reported_without_interest(
    poller: Poller, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    if poller.name == "select":
        pytest.skip("select(2) reports readiness only for the directions asked for")
    srv, cli = tcp_pair
    poller.register(srv.fileno(), 0)
    reset(cli)
    mask = ready(poller, DEADLINE_S).get(srv.fileno(), 0)
    assert mask & ERROR
    assert not mask & WRITABLE


def test_make_poller_names(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, backend)
    p = make_poller()
    try:
        assert p.name == backend, "$IMREACTOR_POLLER picks the backend"
    finally:
        p.close()
    with pytest.raises(ValueError, match="not available"):
        make_poller("no-such-poller")


def test_closed_fd_unregistered_first_is_never_reported(poller: Poller) -> None:
    # The loop's rule: unregister, then close. A new socket then gets the same fd
    # number and is registered anew; only its own readiness may be reported.
    a, b = socket.socketpair()
    fd = a.fileno()
    poller.register(fd, READABLE)
    b.send(b"old")
    assert ready(poller, DEADLINE_S).get(fd, 0) & READABLE
    poller.unregister(fd)
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        if c.fileno() != fd:
            pytest.skip("the fd number was not reused")
        poller.register(c.fileno(), READABLE)
        assert ready(poller, 0.05) == {}
        d.send(b"new")
        assert ready(poller, DEADLINE_S).get(fd, 0) & READABLE
    finally:
        poller.unregister(c.fileno())
        c.close()
        d.close()


def test_available_is_stable_after_making_every_poller() -> None:
    # Importing the .select backend once must not hide the select module from available().
    before = available()
    assert before[-1] == "select"
    for name in before:
        make_poller(name).close()
    assert available() == before


def test_fds_made_ready_in_registration_order_are_reported_in_that_order(
    poller: Poller,
) -> None:
    # The reactor dispatches in the order the poller reports. Every backend reports
    # fds that became ready in registration order in that order, whatever their fd
    # numbers: epoll and kqueue because they queue by readiness, poll and select by
    # registration -- which for those two also survives a modify() that leaves the
    # reading interest alone. (epoll's MOD to a ready direction queues the fd at once,
    # so the kernel's order moves there; that is not ours to fix.)
    pairs = [socket.socketpair() for _ in range(24)]
    try:
        order = pairs[12:] + pairs[:12]  # fd numbers not ascending, crossing 8 and 16
        for a, _ in order:
            poller.register(a.fileno(), READABLE)
        if poller.name in ("poll", "select"):
            for a, _ in order[::3]:
                poller.modify(a.fileno(), READABLE | WRITABLE)
                poller.modify(a.fileno(), READABLE)
        for _, b in order:
            b.send(b"!")
        expected = [a.fileno() for a, _ in order]
        deadline = time.monotonic() + DEADLINE_S
        reported: list[int] = []
        while len(reported) < len(expected) and time.monotonic() < deadline:
            reported = [fd for fd, _ in poller.poll(0.05)]
        assert reported == expected
    finally:
        for a, b in pairs:
            poller.unregister(a.fileno())
            a.close()
            b.close()
