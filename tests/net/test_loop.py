"""The event loop on every backend: run / stop / is_running, stop and call_soon_threadsafe
from other threads, call_soon order, poll timeouts taken from the next timer, per-iteration
loop callbacks, errors in handlers, timers and callbacks (logged; the loop keeps serving), and
signal delivery."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from imreactor.net import EventLoop
from imreactor.net.poller import READABLE, make_poller
from imreactor.net.testing import FakeClock

from .helpers import (
    DEADLINE_S,
    Collect,
    Echo,
    Recorder,
    RunUntil,
    Watchdog,
    client,
    roundtrip,
    run_for,
)

pytestmark = pytest.mark.timeout(30)


def test_run_until_stop(loop: EventLoop) -> None:
    seen: list[bool] = []

    def inside() -> None:
        seen.append(loop.is_running)
        seen.append(loop.in_loop_thread())
        loop.stop()

    assert not loop.is_running
    loop.call_soon(inside)
    with Watchdog(loop) as dog:
        loop.run()
    assert not dog.fired
    assert seen == [True, True]
    assert not loop.is_running
    # A stopped loop runs again.
    loop.call_soon(loop.stop)
    loop.run()
    assert not loop.is_running


def test_run_refuses_reentry_and_a_closed_loop(backend: str) -> None:
    loop = EventLoop(backend)
    errors: list[BaseException] = []

    def reenter() -> None:
        try:
            loop.run()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(reenter)
    loop.run()
    assert len(errors) == 1
    loop.close()
    loop.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        loop.run()


def test_stop_from_another_thread_wakes_an_idle_loop(loop: EventLoop) -> None:
    # Nothing is scheduled: the loop sleeps in poll(None) and only the wakeup fd can end it.
    started = threading.Event()
    loop.call_soon(started.set)

    def stop_when_started() -> None:
        if started.wait(DEADLINE_S):
            loop.stop()

    stopper = threading.Thread(target=stop_when_started)
    stopper.start()
    with Watchdog(loop) as dog:
        loop.run()
    stopper.join()
    assert not dog.fired, "stop() from another thread did not wake the loop"


def test_call_soon_runs_in_fifo_order_with_arguments(loop: EventLoop, run_until: RunUntil) -> None:
    order: list[tuple[str, int]] = []
    iteration = [0]
    loop.add_loop_callback(lambda: iteration.__setitem__(0, iteration[0] + 1))

    def later(tag: str) -> None:
        order.append((tag, iteration[0]))

    def first() -> None:
        order.append(("first", iteration[0]))
        loop.call_soon(later, "scheduled-by-first")

    loop.call_soon(first)
    for i in range(5):
        loop.call_soon(later, f"n{i}")
    run_until(lambda: len(order) == 7)
    assert [tag for tag, _ in order] == [
        "first",
        "n0",
        "n1",
        "n2",
        "n3",
        "n4",
        "scheduled-by-first",
    ]
    # A callback scheduled by a callback waits for the next iteration (no starvation of I/O).
    assert order[-1][1] == order[0][1] + 1


def test_call_soon_threadsafe_from_many_threads(loop: EventLoop) -> None:
    threads, per_thread = 8, 500
    total = threads * per_thread
    got: list[tuple[int, int]] = []
    run_on: set[int] = set()

    def deliver(thread_no: int, i: int) -> None:
        got.append((thread_no, i))
        run_on.add(threading.get_ident())
        if len(got) == total:
            loop.stop()

    go = threading.Event()

    def produce(thread_no: int) -> None:
        go.wait(DEADLINE_S)
        for i in range(per_thread):
            loop.call_soon_threadsafe(deliver, thread_no, i)
            if i % 100 == 0:
                time.sleep(0.001)  # let the loop fall asleep now and then

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    loop.call_soon(go.set)
    # run(), not run_until: no poll timeout is capped, so every wakeup is the threads' doing.
    with Watchdog(loop) as dog:
        loop.run()
    for worker in workers:
        worker.join()
    assert not dog.fired, f"only {len(got)} of {total} callbacks were delivered"
    assert len(got) == total
    assert run_on == {threading.get_ident()}, "callbacks must run on the loop thread"
    for n in range(threads):
        assert [i for t, i in got if t == n] == list(range(per_thread)), "per-thread order kept"


def test_a_timer_wakes_an_idle_loop(loop: EventLoop) -> None:
    iterations = [0]
    loop.add_loop_callback(lambda: iterations.__setitem__(0, iterations[0] + 1))
    fired: list[float] = []
    start = time.monotonic()

    def due() -> None:
        fired.append(time.monotonic())
        loop.stop()

    loop.call_later(0.05, due)
    with Watchdog(loop) as dog:
        loop.run()
    assert not dog.fired, "the timer never fired"
    assert fired[0] - start >= 0.045, "fired early"
    # The poll timeout came from the deadline: a few iterations, not a busy loop.
    assert iterations[0] <= 10, f"{iterations[0]} iterations for one 50 ms timer"


def test_max_wait_caps_the_poll(loop: EventLoop) -> None:
    iterations = [0]
    loop.add_loop_callback(lambda: iterations.__setitem__(0, iterations[0] + 1))
    loop.call_later(0.3, loop.stop)
    with Watchdog(loop) as dog:
        loop.run(max_wait_s=0.01)
    assert not dog.fired
    # Without the cap: 1 or 2 iterations. With it: about 30.
    assert iterations[0] >= 5


class RecordingPoller:
    """The backend under test, recording the timeout of every poll."""

    def __init__(self, backend: str) -> None:
        self.inner = make_poller(backend)
        self.name = self.inner.name
        self.register = self.inner.register
        self.modify = self.inner.modify
        self.unregister = self.inner.unregister
        self.close = self.inner.close
        self.timeouts: list[float | None] = []

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        self.timeouts.append(timeout)
        return self.inner.poll(0)


def test_the_poll_timeout_is_the_earliest_live_timer(backend: str) -> None:
    clock = FakeClock(100.0)
    poller = RecordingPoller(backend)
    loop = EventLoop(poller, clock=clock)
    try:
        loop.run_once(None)
        assert poller.timeouts[-1] is None, "no timer, no cap: wait for I/O"
        first = loop.call_later(1.5, lambda: None)
        loop.call_later(4.0, lambda: None)
        loop.run_once(None)
        assert poller.timeouts[-1] == pytest.approx(1.5)
        clock.advance(0.5)
        loop.run_once(None)
        assert poller.timeouts[-1] == pytest.approx(1.0), "the deadline minus the time now"
        loop.run_once(0.25)
        assert poller.timeouts[-1] == pytest.approx(0.25), "capped by max_wait_s"
        first.cancel()
        loop.run_once(None)
        assert poller.timeouts[-1] == pytest.approx(3.5), "a cancelled timer is skipped"
        clock.advance(10.0)
        loop.run_once(None)
        assert poller.timeouts[-1] == 0.0, "overdue: poll without waiting"
        loop.call_soon(lambda: None)
        loop.call_later(60.0, lambda: None)
        loop.run_once(None)
        assert poller.timeouts[-1] == 0.0, "ready callbacks: poll without waiting"
    finally:
        loop.close()


def test_loop_callbacks_run_every_iteration_and_remove_themselves(
    loop: EventLoop,
) -> None:
    every: list[int] = []
    thrice: list[int] = []
    order: list[str] = []

    def count_thrice() -> None:
        thrice.append(1)
        if len(thrice) == 3:
            entry.remove()
            entry.remove()  # idempotent

    loop.add_loop_callback(every.append, 1)
    entry = loop.add_loop_callback(count_thrice)
    loop.add_loop_callback(order.append, "loop-callback")
    loop.call_soon(order.append, "call_soon")
    for _ in range(10):
        loop.run_once(0)
    assert len(every) == 10
    assert len(thrice) == 3
    assert order[:2] == ["call_soon", "loop-callback"], "ready callbacks run before loop callbacks"


def test_callback_timer_and_loop_callback_errors_are_logged(
    loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def boom(what: str) -> None:
        raise ValueError(f"boom in {what}")

    loop.call_soon(boom, "callback")
    loop.call_soon(ran.append, "callback after")
    loop.call_later(0, boom, "timer")
    loop.call_later(0, ran.append, "timer after")
    ticks: list[int] = []

    def failing_tick() -> None:
        ticks.append(1)
        raise ValueError("boom in repeating timer")

    loop.call_every(0.001, failing_tick, first_s=0)
    entry = loop.add_loop_callback(boom, "loop callback")
    with caplog.at_level(logging.ERROR, logger="imreactor.net"):
        deadline = time.monotonic() + DEADLINE_S
        while (len(ran) < 2 or len(ticks) < 3) and time.monotonic() < deadline:
            loop.run_once(0.01)
    entry.remove()
    assert sorted(ran) == ["callback after", "timer after"]
    assert len(ticks) >= 3, "a repeating timer that raised stays scheduled"
    messages = "\n".join(r.getMessage() for r in caplog.records)
    for what in ("callback", "timer", "loop callback"):
        assert any(
            r.exc_info and f"boom in {what}" in str(r.exc_info[1]) for r in caplog.records
        ), f"the error in the {what} was not logged: {messages}"


class Raising(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        raise RuntimeError("handler bug")


def test_a_failing_handler_aborts_only_its_connection(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Collect(Raising)
    bad_server = loop.listen("127.0.0.1", 0, factory)
    echo = Collect(Echo)
    good_server = loop.listen("127.0.0.1", 0, echo)
    with client(good_server.port) as good, client(bad_server.port) as bad:
        assert roundtrip(loop, good, b"before") == b"before"

        with caplog.at_level(logging.ERROR, logger="imreactor.net"):
            bad.sendall(b"trigger")
            run_until(lambda: len(factory) == 1 and factory.made[0].closed)
        victim = factory.made[0]
        run_for(loop, 0.05)
        assert len(victim.lost) == 1
        assert isinstance(victim.lost[0], RuntimeError)
        assert any(
            r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records
        ), "the handler's exception was not logged"
        try:
            assert bad.recv(10) == b""
        except ConnectionResetError:
            pass  # aborted with input unread: the peer may get an RST instead of a FIN

        assert roundtrip(loop, good, b"after") == b"after"
        assert echo.made[0].lost == []


class _RaisingHandler:
    """A raw IOHandler whose handle_read raises and whose handle_error raises too."""

    def __init__(self, loop: EventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.errors: list[BaseException] = []

    def handle_read(self) -> None:
        raise OSError("read failed")

    def handle_write(self) -> None:
        pass

    def handle_error(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.loop.remove_handler(self.sock.fileno())
        raise RuntimeError("handle_error failed too")


def test_an_error_in_handle_error_is_logged_and_the_loop_goes_on(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = socket.socketpair()
    try:
        handler = _RaisingHandler(loop, a)
        loop.add_handler(a.fileno(), READABLE, handler)
        b.send(b"x")
        done: list[int] = []
        with caplog.at_level(logging.ERROR, logger="imreactor.net"):
            run_until(lambda: handler.errors)
            loop.call_soon(done.append, 1)
            run_until(lambda: done)
        assert isinstance(handler.errors[0], OSError)
        assert any("handle_error" in r.getMessage() for r in caplog.records)
    finally:
        a.close()
        b.close()


@pytest.fixture
def restore_sigterm() -> Iterator[None]:
    old_handler = signal.getsignal(signal.SIGTERM)
    old_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(old_fd)
    yield None
    signal.signal(signal.SIGTERM, old_handler)
    signal.set_wakeup_fd(old_fd)


@pytest.mark.usefixtures("restore_sigterm")
def test_sigterm_reaches_the_handler_on_the_loop_thread(loop: EventLoop) -> None:
    got: list[tuple[str, int]] = []

    def on_term(tag: str) -> None:
        got.append((tag, threading.get_ident()))
        loop.stop()

    loop.add_signal_handler(signal.SIGTERM, on_term, "term")
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
    with Watchdog(loop) as dog:
        loop.run()
    assert not dog.fired, "the signal handler never ran"
    assert got == [("term", threading.get_ident())]
    assert loop.remove_signal_handler(signal.SIGTERM)
    assert not loop.remove_signal_handler(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_iterations_idle_time_and_worst_iteration_are_counted(loop: EventLoop) -> None:
    # The counters a metrics exporter reads: waiting in the poller is idle time, the
    # work between two polls is busy time, and the worst of it is kept until reset.
    loop.run_once(0)
    first = loop.iterations
    loop.run_once(0.05)  # nothing ready: the whole timeout is spent waiting
    assert loop.iterations == first + 1
    assert loop.idle_s >= 0.04
    loop.max_busy_s = 0.0
    loop.call_soon(time.sleep, 0.05)  # one iteration that works for 50 ms
    loop.run_once(0)
    loop.run_once(0)  # its busy time is taken when the next poll starts
    assert loop.max_busy_s >= 0.05
    idle = loop.idle_s
    loop.run_once(0)
    assert loop.idle_s >= idle
