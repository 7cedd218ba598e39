"""Helpers shared by the reactor tests: loop drivers, recording protocols, plain clients."""

from __future__ import annotations

import socket
import threading
import time
import typing
from collections.abc import Callable

import pytest

from imreactor.net import Connection, ConnState, EventLoop, Protocol, Transport

#: Upper bound for anything a test waits for: generous, so that a slow machine passes,
#: and finite, so that a broken reactor fails the test instead of hanging it.
DEADLINE_S = 10.0
#: Longest single poll while driving a loop, so conditions set by other threads are seen.
STEP_S = 0.02

P = typing.TypeVar("P", bound=Protocol)


class RunUntil(typing.Protocol):
    """The ``run_until`` fixture: run the test's loop until ``predicate()`` is true."""

    def __call__(
        self, predicate: Callable[[], object], timeout_s: float = DEADLINE_S, what: str = ""
    ) -> None: ...


def drive_until(
    loop: EventLoop,
    predicate: Callable[[], object],
    timeout_s: float = DEADLINE_S,
    what: str = "",
) -> None:
    """Run iterations of ``loop`` until ``predicate()`` is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout_s:g} s: {what or predicate}")
        loop.run_once(STEP_S)


def run_for(loop: EventLoop, seconds: float) -> int:
    """Run iterations of ``loop`` for ``seconds`` of real time; returns how many ran.

    Used after a condition is met, to give a duplicate callback the chance to show up.
    """
    deadline = time.monotonic() + seconds
    iterations = 0
    while time.monotonic() < deadline:
        loop.run_once(STEP_S)
        iterations += 1
    return iterations


class Recorder(Protocol):
    """A protocol that records every callback it gets (and the connection state at the time)."""

    def __init__(self) -> None:
        self.conn: Transport | None = None
        self.events: list[str] = []
        self.states: list[tuple[str, ConnState]] = []
        self.received = bytearray()
        self.data_calls = 0
        self.lost: list[BaseException | None] = []
        self.failed: list[BaseException] = []

    def _note(self, event: str) -> None:
        self.events.append(event)
        if self.conn is not None:
            self.states.append((event, self.conn.state))

    def connection_made(self, conn: Transport) -> None:
        self.conn = conn
        self._note("made")

    def data_received(self, data: bytes) -> None:
        self.data_calls += 1
        self.received += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self._note("lost")

    def connection_failed(self, exc: BaseException) -> None:
        self.failed.append(exc)
        self._note("failed")

    def pause_writing(self) -> None:
        self._note("pause")

    def resume_writing(self) -> None:
        self._note("resume")

    @property
    def made(self) -> bool:
        return "made" in self.events

    @property
    def closed(self) -> bool:
        return bool(self.lost or self.failed)

    def connection(self) -> Transport:
        """The transport, which the test expects to exist."""
        assert self.conn is not None, "connection_made was not called"
        return self.conn

    def tcp(self) -> Connection:
        """The TCP connection (for what only TCP has: socket options, the fd)."""
        assert isinstance(self.conn, Connection), "connection_made was not called on TCP"
        return self.conn


class Echo(Recorder):
    """Writes back whatever it receives."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.connection().write(data)


class Collect(typing.Generic[P]):
    """A protocol factory that keeps every protocol it made, in order."""

    def __init__(self, make: Callable[[], P]) -> None:
        self.make = make
        self.made: list[P] = []

    def __call__(self) -> P:
        protocol = self.make()
        self.made.append(protocol)
        return protocol

    def __len__(self) -> int:
        return len(self.made)


def client(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A plain blocking client socket connected to ``host:port`` (timeouts: DEADLINE_S)."""
    sock = socket.create_connection((host, port), timeout=DEADLINE_S)
    sock.settimeout(DEADLINE_S)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes from a blocking socket (fails the test on early EOF)."""
    chunks = bytearray()
    while len(chunks) < size:
        data = sock.recv(size - len(chunks))
        if not data:
            pytest.fail(f"EOF after {len(chunks)} of {size} bytes")
        chunks += data
    return bytes(chunks)


def recv_until_eof(sock: socket.socket) -> bytes:
    """Read from a blocking socket until EOF."""
    chunks = bytearray()
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return bytes(chunks)
        chunks += data


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def refused_port() -> tuple[socket.socket, int]:
    """A bound, not listening socket and its port: connections to it are refused.

    The caller keeps the socket open (so no one else takes the port) and closes it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


class Watchdog:
    """Stops ``loop`` from another thread if it still runs after ``timeout_s``.

    For tests that call the blocking ``loop.run()``: a reactor that fails to stop
    on its own ends the test (``fired`` is then True) instead of hanging it.
    """

    def __init__(self, loop: EventLoop, timeout_s: float = DEADLINE_S) -> None:
        self.loop = loop
        self.fired = False
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        self.loop.stop()

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()


def roundtrip(loop: EventLoop, sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` from a client socket to an echo server on ``loop``; return the echo."""
    sock.sendall(payload)
    sock.setblocking(False)
    got = bytearray()
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(got) < len(payload):
            if time.monotonic() > deadline:
                pytest.fail(f"echo incomplete after {DEADLINE_S:g} s: {len(got)} bytes")
            loop.run_once(STEP_S)
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not data:
                pytest.fail(f"EOF after {len(got)} bytes of echo")
            got += data
    finally:
        sock.settimeout(DEADLINE_S)
    return bytes(got)


class SlowReader(threading.Thread):
    """Reads a blocking socket until EOF in small chunks, pausing now and then."""

    def __init__(self, sock: socket.socket, chunk: int = 16 * 1024, pause_every: int = 8) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.chunk = chunk
        self.pause_every = pause_every
        self.data = bytearray()
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            reads = 0
            while True:
                data = self.sock.recv(self.chunk)
                if not data:
                    return
                self.data += data
                reads += 1
                if reads % self.pause_every == 0:
                    time.sleep(0.001)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


def small_buffers_client(port: int, rcvbuf: int = 16 * 1024) -> socket.socket:
    """A blocking client whose receive buffer is small, so that a server's output queues up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(DEADLINE_S)
    sock.connect(("127.0.0.1", port))
    return sock
