"""The fault proxy itself: each fault does what the scenarios rely on, over real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from faultproxy import FaultProxy


class EchoServer:
    """A plain-socket echo upstream that records the size of every read it makes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.reads: list[int] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    self.reads.append(len(data))
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.address) as p:
        yield p


def dial(proxy: FaultProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def test_bytes_go_both_ways_and_are_counted(proxy: FaultProxy) -> None:
    with dial(proxy) as s:
        s.sendall(b"hello")
        assert recv_exactly(s, 5) == b"hello"
    assert proxy.accepted == 1
    assert proxy.bytes == {"up": 5, "down": 5}


def test_latency_holds_each_direction_and_keeps_the_order(proxy: FaultProxy) -> None:
    proxy.set(latency_s=0.1, jitter_s=0.05)
    with dial(proxy) as s:
        started = time.monotonic()
        for i in range(20):
            s.sendall(bytes([i]))
        assert recv_exactly(s, 20) == bytes(range(20))
        # At least the smallest latency each way (0.05 s): a lower bound, not a speed test.
        assert time.monotonic() - started >= 0.1


def test_bandwidth_paces_what_leaves(proxy: FaultProxy) -> None:
    proxy.set("down", bytes_per_s=100_000)
    with dial(proxy) as s:
        started = time.monotonic()
        s.sendall(b"x" * 50_000)
        assert len(recv_exactly(s, 50_000)) == 50_000
        assert time.monotonic() - started >= 0.4  # 50 kB at 100 kB/s, less one chunk's slack


def test_slicing_delivers_one_byte_writes(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.set("up", slice=True)
    with dial(proxy) as s:
        s.sendall(b"0123456789" * 10)
        assert recv_exactly(s, 100) == b"0123456789" * 10
    assert len(echo.reads) > 1  # unsliced, one 100-byte send is one read


def test_a_black_hole_holds_everything_until_heal(proxy: FaultProxy, echo: EchoServer) -> None:
    with dial(proxy) as before:
        before.sendall(b"a")
        assert recv_exactly(before, 1) == b"a"
        proxy.partition()
        before.sendall(b"held")
        late = dial(proxy)  # accepted, but not connected upstream while the hole lasts
        late.sendall(b"late")
        before.settimeout(0.3)
        with pytest.raises(TimeoutError):
            before.recv(10)
        assert echo.accepted == 1
        proxy.heal()
        before.settimeout(5)
        assert recv_exactly(before, 4) == b"held"
        with late:
            assert recv_exactly(late, 4) == b"late"
        assert echo.accepted == 2


def test_reset_aborts_both_sides(proxy: FaultProxy) -> None:
    with dial(proxy) as s:
        s.sendall(b"x")
        recv_exactly(s, 1)
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            s.recv(1)
    assert proxy.connections() == 0


def test_half_open_connections_go_silent_and_new_ones_work(proxy: FaultProxy) -> None:
    with dial(proxy) as s:
        s.sendall(b"x")
        recv_exactly(s, 1)
        proxy.half_open()
        s.sendall(b"lost")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(10)  # no answer, and no close either
        with dial(proxy) as fresh:
            fresh.sendall(b"ok")
            assert recv_exactly(fresh, 2) == b"ok"
