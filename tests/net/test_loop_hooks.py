"""The loop's public hooks: the write batch connections collect into, the timer
queue's earliest live deadline, and debug mode's loop-thread checks."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from imreactor.net import EventLoop
from imreactor.net.connection import Connection, ThreadCheckedConnection
from imreactor.net.testing import FakeClock
from imreactor.net.timers import TimerQueue

from .helpers import Collect, Echo, Recorder, RunUntil, client, roundtrip

pytestmark = pytest.mark.timeout(30)


def test_write_batch_exists_only_inside_an_iteration(loop: EventLoop) -> None:
    seen: list[object] = []
    assert loop.write_batch is None
    loop.call_soon(lambda: seen.append(loop.write_batch))
    loop.run_once(0)
    assert seen == [[]]
    assert loop.write_batch is None


def test_writes_in_one_iteration_collect_into_the_batch_and_leave_it_empty(
    loop: EventLoop, run_until: RunUntil
) -> None:
    server = loop.listen("127.0.0.1", 0, Recorder)
    proto = Recorder()
    conn = loop.connect("127.0.0.1", server.port, proto)
    run_until(lambda: proto.made)
    batches: list[list[Connection]] = []

    def write_twice() -> None:
        conn.write(b"a")
        conn.write(b"b")
        assert loop.write_batch is not None
        batches.append(list(loop.write_batch))

    loop.call_soon(write_twice)
    loop.run_once(0)
    assert batches == [[conn]]  # one entry for the connection, however many writes
    assert loop.write_batch is None
    assert loop._spare_batch == []  # flushed and emptied for the next iteration
    conn.close()
    server.close()


def test_next_deadline_skips_cancelled_timers() -> None:
    timers = TimerQueue()
    first = timers.call_at(1.0, lambda: None)
    timers.call_at(2.0, lambda: None)
    assert timers.next_deadline() == 1.0
    first.cancel()
    assert timers.next_deadline() == 2.0
    assert len(timers) == 1


def test_a_cancelled_earliest_timer_does_not_shorten_the_poll(clock: FakeClock) -> None:
    loop = EventLoop("poll", clock=clock)
    try:
        waits: list[float | None] = []
        real_poll = loop.poller.poll

        def recording_poll(timeout: float | None) -> list[tuple[int, int]]:
            waits.append(timeout)
            return real_poll(0)

        loop.poller.poll = recording_poll  # type: ignore[method-assign]
        early = loop.call_later(1.0, lambda: None)
        loop.call_later(5.0, lambda: None)
        early.cancel()
        loop.run_once(10.0)
        assert waits == [5.0]
    finally:
        loop.close()


def _in_thread(call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in another thread; what it raised, or None."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    return raised[0] if raised else None


def _running(loop: EventLoop) -> threading.Thread:
    """Run ``loop`` in a new thread; returns once it runs."""
    started = threading.Event()
    loop.call_soon(started.set)
    thread = threading.Thread(target=loop.run, name="loop")
    thread.start()
    assert started.wait(10)
    return thread


@pytest.mark.parametrize("env", ["1", "yes"])
def test_debug_mode_from_the_environment(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMREACTOR_DEBUG", env)
    loop = EventLoop()
    try:
        assert loop.debug
    finally:
        loop.close()


@pytest.mark.parametrize("env", ["", "0"])
def test_debug_mode_off(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMREACTOR_DEBUG", env)
    loop = EventLoop()
    try:
        assert not loop.debug
        assert "call_soon" not in vars(loop)  # the plain method, unwrapped
    finally:
        loop.close()


def test_debug_loop_refuses_calls_from_another_thread(backend: str) -> None:
    loop = EventLoop(backend, debug=True)
    thread = _running(loop)
    try:
        exc = _in_thread(lambda: loop.call_soon(lambda: None))
        assert isinstance(exc, RuntimeError)
        assert "EventLoop.call_soon called from thread" in str(exc)
        exc = _in_thread(lambda: loop.call_later(1.0, lambda: None))
        assert isinstance(exc, RuntimeError)
        assert "EventLoop.call_later" in str(exc)
        # The two thread-safe entry points stay usable.
        ran = threading.Event()
        assert _in_thread(lambda: loop.call_soon_threadsafe(ran.set)) is None
        assert ran.wait(10)
    finally:
        loop.stop()
        thread.join(10)
        loop.close()


def test_debug_loop_allows_its_own_thread_and_a_stopped_loop(backend: str) -> None:
    loop = EventLoop(backend, debug=True)
    try:
        ran: list[int] = []
        loop.call_soon(ran.append, 1)  # not running yet: whoever drives it owns it
        loop.call_soon(lambda: loop.call_soon(ran.append, 2))
        loop.run_once(0)
        loop.run_once(0)
        assert ran == [1, 2]
    finally:
        loop.close()


def test_debug_connection_refuses_writes_from_another_thread(backend: str) -> None:
    loop = EventLoop(backend, debug=True)
    echoes = Collect(Echo)
    server = loop.listen("127.0.0.1", 0, echoes)
    sock = client(server.port)
    try:
        assert roundtrip(loop, sock, b"x") == b"x"
        [proto] = echoes.made
        conn = proto.tcp()
        assert type(conn) is ThreadCheckedConnection
        thread = _running(loop)
        try:
            exc = _in_thread(lambda: conn.write(b"y"))
            assert isinstance(exc, RuntimeError)
            assert "Connection.write called from thread" in str(exc)
            exc = _in_thread(conn.close)
            assert isinstance(exc, RuntimeError)
            assert "Connection.close" in str(exc)
        finally:
            loop.stop()
            thread.join(10)
        assert roundtrip(loop, sock, b"z") == b"z"  # untouched by the refused calls
    finally:
        sock.close()
        for made in echoes.made:
            made.tcp().abort()
        server.close()
        loop.close()


def test_normal_connections_are_plain(loop: EventLoop) -> None:
    echoes = Collect(Echo)
    server = loop.listen("127.0.0.1", 0, echoes)
    sock = client(server.port)
    try:
        assert roundtrip(loop, sock, b"x") == b"x"
        assert type(echoes.made[0].tcp()) is Connection
    finally:
        sock.close()
        server.close()
