"""The netlib facade, over real loopback sockets, once per poller backend.

Every test runs on a fresh default context (``netlib_init`` … ``netlib_destroy``)
whose loop uses the backend named by ``$IMREACTOR_POLLER``; the example servers
started as subprocesses inherit it.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imreactor.net import Protocol, Transport, available_pollers
from imreactor.net import netlib as netlib_module
from imreactor.net.connection import PeerTooSlow
from imreactor.net.netlib import (
    MAX_SEND_BUFFER_BYTES,
    NETLIB_ERROR,
    NETLIB_INVALID_HANDLE,
    NETLIB_MSG_CLOSE,
    NETLIB_MSG_CONFIRM,
    NETLIB_MSG_CONNECT,
    NETLIB_MSG_LOOP,
    NETLIB_MSG_READ,
    NETLIB_MSG_TIMER,
    NETLIB_MSG_WRITE,
    NETLIB_OK,
    NETLIB_OPT_GET_LOCAL_IP,
    NETLIB_OPT_GET_LOCAL_PORT,
    NETLIB_OPT_GET_REMOTE_IP,
    NETLIB_OPT_GET_REMOTE_PORT,
    NETLIB_OPT_SET_CALLBACK,
    NETLIB_OPT_SET_CALLBACK_DATA,
    NETLIB_OPT_SET_RECV_BUF_SIZE,
    NETLIB_OPT_SET_SEND_BUF_SIZE,
    RECV_BUFFER_HIGH_WATER_BYTES,
    netlib_add_loop,
    netlib_close,
    netlib_connect,
    netlib_delete_timer,
    netlib_destroy,
    netlib_eventloop,
    netlib_get_loop,
    netlib_init,
    netlib_is_running,
    netlib_listen,
    netlib_option,
    netlib_recv,
    netlib_register_timer,
    netlib_send,
    netlib_stop_event,
)

from . import pki

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOST = "127.0.0.1"
ALL_OPTIONS = range(1, 9)

Event = tuple[int, int, Any]  # (msg, handle, param)


@pytest.fixture(autouse=True, params=available_pollers())
def netlib_context(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("IMREACTOR_POLLER", request.param)
    assert netlib_init() == NETLIB_OK
    assert netlib_get_loop().backend == request.param
    yield request.param
    assert netlib_destroy() == NETLIB_OK


# -- helpers -------------------------------------------------------------------------------


class Recorder:
    """A netlib callback that records ``(msg, handle, param)`` and the data it was given."""

    def __init__(self, on_event: Callable[[int, int, Any], object] | None = None) -> None:
        self.events: list[Event] = []
        self.data: list[Any] = []
        self.on_event = on_event

    def __call__(self, data: Any, msg: int, handle: int, param: Any) -> None:
        self.events.append((msg, handle, param))
        self.data.append(data)
        if self.on_event is not None:
            self.on_event(msg, handle, param)

    def msgs(self, handle: int | None = None) -> list[int]:
        return [msg for msg, h, _ in self.events if handle is None or h == handle]

    def handles(self, msg: int) -> list[int]:
        return [h for m, h, _ in self.events if m == msg]


def run_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Run the default loop until ``predicate()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    token = object()

    def check(data: Any, msg: int, handle: int, param: Any) -> None:
        if predicate() or time.monotonic() > deadline:
            netlib_stop_event()

    assert netlib_register_timer(check, token, 5) == NETLIB_OK
    try:
        if not predicate():
            netlib_eventloop(20)
    finally:
        assert netlib_delete_timer(check, token) == NETLIB_OK
    assert predicate(), "the condition was not reached in time"


def run_for(ms: int) -> None:
    """Run the default loop for about ``ms`` milliseconds."""
    token = object()

    def stop(data: Any, msg: int, handle: int, param: Any) -> None:
        netlib_stop_event()

    assert netlib_register_timer(stop, token, ms) == NETLIB_OK
    netlib_eventloop(20)
    assert netlib_delete_timer(stop, token) == NETLIB_OK


def drain(handle: int, into: bytearray, chunk: int = 4096) -> int:
    """``netlib_recv`` until it returns <= 0 (what an application does on READ)."""
    buf = bytearray(chunk)
    while True:
        n = netlib_recv(handle, buf)
        if n <= 0:
            return n
        into += buf[:n]


def echo_callback(data: Any, msg: int, handle: int, param: Any) -> None:
    """Server-side connection callback: echo, reusing one small buffer on purpose."""
    if msg == NETLIB_MSG_READ:
        buf = bytearray(7)
        view = memoryview(buf)
        while (n := netlib_recv(handle, buf)) > 0:
            assert netlib_send(handle, view[:n]) == n


def echo_listener(data: Any, msg: int, handle: int, param: Any) -> None:
    if msg == NETLIB_MSG_CONNECT:
        assert netlib_option(handle, NETLIB_OPT_SET_CALLBACK, echo_callback) == NETLIB_OK


def local_port(handle: int) -> int:
    port = netlib_option(handle, NETLIB_OPT_GET_LOCAL_PORT)
    assert port > 0
    return port


def listen_echo() -> tuple[int, int]:
    """An echo server on the default loop: (listening handle, port)."""
    listener = netlib_listen(HOST, 0, echo_listener, None)
    assert listener > 0
    return listener, local_port(listener)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def fd_of(handle: int) -> int:
    # White-box: the test of handle reuse must show that the fd number *was* reused.
    ctx = netlib_module._default
    assert ctx is not None
    rec = ctx.handles[handle]
    assert isinstance(rec, netlib_module._ConnHandle)
    return rec.conn.fileno


def connected_pair() -> tuple[int, int, Recorder, Recorder]:
    """A netlib client connected to a netlib listener that records everything.

    Returns (client handle, server handle, client recorder, server recorder); the
    server handle's callback is the server recorder (set on CONNECT).
    """
    server_rec = Recorder()
    accepted: list[int] = []

    def on_listen(data: Any, msg: int, handle: int, param: Any) -> None:
        if msg == NETLIB_MSG_CONNECT:
            accepted.append(handle)
            assert netlib_option(handle, NETLIB_OPT_SET_CALLBACK, server_rec) == NETLIB_OK

    listener = netlib_listen(HOST, 0, on_listen, None)
    assert listener > 0
    client_rec = Recorder()
    client = netlib_connect(HOST, local_port(listener), client_rec, None)
    assert client > 0
    run_until(lambda: bool(accepted) and NETLIB_MSG_CONFIRM in client_rec.msgs())
    assert netlib_close(listener) == NETLIB_OK
    return client, accepted[0], client_rec, server_rec


# -- constants, init, destroy --------------------------------------------------------------


def test_constants_keep_the_original_values() -> None:
    msgs = [
        NETLIB_MSG_CONNECT,
        NETLIB_MSG_CONFIRM,
        NETLIB_MSG_READ,
        NETLIB_MSG_WRITE,
        NETLIB_MSG_CLOSE,
        NETLIB_MSG_TIMER,
        NETLIB_MSG_LOOP,
    ]
    assert msgs == list(range(1, 8))
    options = [
        NETLIB_OPT_SET_CALLBACK,
        NETLIB_OPT_SET_CALLBACK_DATA,
        NETLIB_OPT_GET_REMOTE_IP,
        NETLIB_OPT_GET_REMOTE_PORT,
        NETLIB_OPT_GET_LOCAL_IP,
        NETLIB_OPT_GET_LOCAL_PORT,
        NETLIB_OPT_SET_SEND_BUF_SIZE,
        NETLIB_OPT_SET_RECV_BUF_SIZE,
    ]
    assert options == list(ALL_OPTIONS)
    assert (NETLIB_OK, NETLIB_ERROR, NETLIB_INVALID_HANDLE) == (0, -1, -1)


def test_init_and_destroy_are_idempotent_and_destroy_starts_afresh() -> None:
    loop = netlib_get_loop()
    assert netlib_init() == NETLIB_OK
    assert netlib_get_loop() is loop
    listener, _ = listen_echo()
    assert netlib_destroy() == NETLIB_OK
    assert netlib_destroy() == NETLIB_OK
    # The old handle does not survive into the next context, and numbers go on.
    assert netlib_close(listener) == NETLIB_ERROR
    assert netlib_init() == NETLIB_OK
    assert netlib_get_loop() is not loop
    listener2, _ = listen_echo()
    assert listener2 > listener
    assert netlib_close(listener) == NETLIB_ERROR


def test_functions_create_the_context_lazily() -> None:
    assert netlib_destroy() == NETLIB_OK
    assert not netlib_is_running()
    assert netlib_send(1, b"x") == NETLIB_ERROR  # no context: just an unknown handle
    listener, port = listen_echo()  # creates one
    assert listener > 0 and port > 0


def test_destroy_is_refused_while_the_loop_runs() -> None:
    results: list[int] = []

    def tick(data: Any, msg: int, handle: int, param: Any) -> None:
        results.append(netlib_destroy())
        netlib_stop_event()

    netlib_register_timer(tick, None, 10)
    netlib_eventloop(20)
    assert results == [NETLIB_ERROR]


def test_destroy_closes_open_connections() -> None:
    with socket.create_server((HOST, 0)) as server:
        rec = Recorder()
        handle = netlib_connect(HOST, server.getsockname()[1], rec, None)
        run_until(lambda: rec.msgs() == [NETLIB_MSG_CONFIRM])
        peer, _ = server.accept()
        with peer:
            assert netlib_destroy() == NETLIB_OK
            peer.settimeout(5)
            with pytest.raises(ConnectionResetError):  # aborted: reset, not ended
                peer.recv(10)
    assert netlib_send(handle, b"x") == NETLIB_ERROR
    assert rec.msgs() == [NETLIB_MSG_CONFIRM]  # no event after destroy


# -- unknown handles -----------------------------------------------------------------------


@pytest.mark.parametrize("handle", [0, -1, 1 << 40])
def test_every_function_returns_error_for_an_unknown_handle(handle: int) -> None:
    listen_echo()  # a live handle exists: the unknown ones must still be unknown
    buf = bytearray(10)
    assert netlib_send(handle, b"data") == NETLIB_ERROR
    assert netlib_recv(handle, buf) == NETLIB_ERROR
    assert netlib_close(handle) == NETLIB_ERROR
    for opt in ALL_OPTIONS:
        assert netlib_option(handle, opt, 4096) == NETLIB_ERROR
    assert buf == bytearray(10)


def test_a_listening_handle_is_not_a_connection() -> None:
    listener, _ = listen_echo()
    assert netlib_send(listener, b"x") == NETLIB_ERROR
    assert netlib_recv(listener, bytearray(4)) == NETLIB_ERROR
    assert netlib_option(listener, NETLIB_OPT_GET_REMOTE_IP) == NETLIB_ERROR
    assert netlib_option(listener, NETLIB_OPT_GET_REMOTE_PORT) == NETLIB_ERROR


def test_bad_ports_are_refused() -> None:
    cb = Recorder()
    assert netlib_connect(HOST, 70000, cb, None) == NETLIB_INVALID_HANDLE
    assert netlib_connect(HOST, 0, cb, None) == NETLIB_INVALID_HANDLE
    assert netlib_connect(HOST, -1, cb, None) == NETLIB_INVALID_HANDLE
    assert netlib_listen(HOST, 70000, cb, None) == NETLIB_ERROR
    assert cb.events == []


def test_listen_on_a_busy_port_returns_error() -> None:
    _, port = listen_echo()
    assert netlib_listen(HOST, port, Recorder(), None) == NETLIB_ERROR


# -- connecting and accepting --------------------------------------------------------------


def test_connect_gives_confirm_and_the_listener_gets_connect() -> None:
    listen_rec = Recorder()
    listener = netlib_listen(HOST, 0, listen_rec, "listener data")
    client_rec = Recorder()
    client = netlib_connect(HOST, local_port(listener), client_rec, "client data")
    assert client > listener
    assert client_rec.events == []  # never before netlib_connect returns
    run_until(lambda: bool(listen_rec.events) and bool(client_rec.events))
    assert client_rec.events == [(NETLIB_MSG_CONFIRM, client, None)]
    assert client_rec.data == ["client data"]
    [(msg, accepted, param)] = listen_rec.events
    assert (msg, param) == (NETLIB_MSG_CONNECT, None)
    assert accepted not in (listener, client)
    assert listen_rec.data == ["listener data"]


def test_an_accepted_handle_starts_with_the_listeners_callback_and_data() -> None:
    listen_rec = Recorder()
    listener = netlib_listen(HOST, 0, listen_rec, "listener data")
    client = netlib_connect(HOST, local_port(listener), Recorder(), None)
    assert netlib_send(client, b"hello") == 5
    run_until(lambda: NETLIB_MSG_READ in listen_rec.msgs())
    accepted = listen_rec.handles(NETLIB_MSG_CONNECT)[0]
    assert listen_rec.events[1] == (NETLIB_MSG_READ, accepted, None)
    assert listen_rec.data == ["listener data", "listener data"]
    got = bytearray()
    assert drain(accepted, got) == NETLIB_ERROR
    assert got == b"hello"


def test_set_callback_data_changes_what_the_callback_gets() -> None:
    client, server, _, server_rec = connected_pair()
    assert netlib_option(server, NETLIB_OPT_SET_CALLBACK_DATA, "new data") == NETLIB_OK
    netlib_send(client, b"x")
    run_until(lambda: NETLIB_MSG_READ in server_rec.msgs())
    assert server_rec.data == ["new data"]


def test_refused_connect_gives_close_and_no_confirm() -> None:
    rec = Recorder()
    handle = netlib_connect(HOST, free_port(), rec, None)
    assert handle > 0
    run_until(lambda: bool(rec.events))
    [(msg, h, param)] = rec.events
    assert (msg, h) == (NETLIB_MSG_CLOSE, handle)
    assert isinstance(param, ConnectionRefusedError) or (
        isinstance(param, OSError) and param.errno == errno.ECONNREFUSED
    )
    run_for(50)
    assert len(rec.events) == 1  # CLOSE exactly once
    assert netlib_send(handle, b"x") == NETLIB_ERROR
    assert netlib_close(handle) == NETLIB_ERROR


def test_data_sent_while_connecting_is_sent_once_connected() -> None:
    _, port = listen_echo()
    got = bytearray()
    rec = Recorder(lambda msg, handle, param: drain(handle, got) if msg == NETLIB_MSG_READ else 0)
    handle = netlib_connect(HOST, port, rec, None)
    assert netlib_send(handle, b"early bird") == 10
    run_until(lambda: got == b"early bird")
    assert rec.msgs()[0] == NETLIB_MSG_CONFIRM


def test_closing_the_listener_stops_accepting_but_keeps_its_connections() -> None:
    listener, port = listen_echo()
    got = bytearray()
    rec = Recorder(lambda msg, handle, param: drain(handle, got) if msg == NETLIB_MSG_READ else 0)
    client = netlib_connect(HOST, port, rec, None)
    run_until(lambda: NETLIB_MSG_CONFIRM in rec.msgs())
    run_for(50)  # let the listener accept it
    assert netlib_close(listener) == NETLIB_OK
    assert netlib_close(listener) == NETLIB_ERROR
    assert netlib_option(listener, NETLIB_OPT_GET_LOCAL_PORT) == NETLIB_ERROR
    late = Recorder()
    late_handle = netlib_connect(HOST, port, late, None)
    netlib_send(client, b"still here")
    run_until(lambda: got == b"still here" and bool(late.events))
    assert late.msgs() == [NETLIB_MSG_CLOSE]
    assert late.handles(NETLIB_MSG_CLOSE) == [late_handle]


# -- data ----------------------------------------------------------------------------------


def test_echo_in_process() -> None:
    _, port = listen_echo()
    payload = os.urandom(200_000)
    got = bytearray()
    rec = Recorder(lambda msg, handle, param: drain(handle, got) if msg == NETLIB_MSG_READ else 0)
    client = netlib_connect(HOST, port, rec, None)
    assert netlib_send(client, payload) == len(payload)
    run_until(lambda: len(got) >= len(payload))
    # The server echoes through a 7-byte buffer it reuses at once: netlib_send
    # must have copied every chunk, or the echo would come back scrambled.
    assert got == payload


def test_recv_fills_the_buffer_like_c_recv() -> None:
    client, server, _, server_rec = connected_pair()
    assert netlib_recv(server, bytearray(10)) == NETLIB_ERROR  # nothing yet: "would block"
    assert netlib_send(client, b"0123456789abcdef") == 16
    run_until(lambda: NETLIB_MSG_READ in server_rec.msgs())
    buf = bytearray(b"..........")
    assert netlib_recv(server, memoryview(buf)[:4]) == 4
    assert buf == b"0123......"
    assert netlib_recv(server, bytearray(0)) == 0
    assert netlib_recv(server, b"read-only") == NETLIB_ERROR  # type: ignore[arg-type]
    assert netlib_recv(server, memoryview(b"read-only")) == NETLIB_ERROR
    assert netlib_recv(server, buf) == 10
    assert buf == b"456789abcd"
    big = bytearray(100)
    assert netlib_recv(server, big) == 2
    assert big[:2] == b"ef"
    assert netlib_recv(server, big) == NETLIB_ERROR


def test_read_fires_for_each_arrival_even_if_not_drained() -> None:
    client, server, _, server_rec = connected_pair()
    netlib_send(client, b"one")
    run_until(lambda: server_rec.msgs().count(NETLIB_MSG_READ) == 1)
    netlib_send(client, b"two")
    run_until(lambda: server_rec.msgs().count(NETLIB_MSG_READ) == 2)
    got = bytearray()
    drain(server, got)
    assert got == b"onetwo"


def test_send_returns_the_length_in_bytes() -> None:
    client, server, _, server_rec = connected_pair()
    words = memoryview(bytearray(8)).cast("I")  # 2 items, 8 bytes
    assert netlib_send(client, words) == 8
    assert netlib_send(client, b"") == 0
    assert netlib_send(client, "text") == NETLIB_ERROR  # type: ignore[arg-type]
    assert netlib_send(client, 5) == NETLIB_ERROR  # type: ignore[arg-type]
    run_until(lambda: NETLIB_MSG_READ in server_rec.msgs())
    got = bytearray()
    drain(server, got)
    assert got == bytes(8)


def test_write_fires_once_after_a_backlog_drains() -> None:
    with socket.socket() as server:
        # A small receive buffer on the peer (accepted sockets inherit it) and a
        # small send buffer on our side make sure the payload cannot fit in the kernel.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.bind((HOST, 0))
        server.listen()
        rec = Recorder()
        handle = netlib_connect(HOST, server.getsockname()[1], rec, None)
        run_until(lambda: rec.msgs() == [NETLIB_MSG_CONFIRM])
        peer, _ = server.accept()
        with peer:
            peer.setblocking(False)
            received = bytearray()

            def read_peer() -> None:
                while True:
                    try:
                        data = peer.recv(65536)
                    except BlockingIOError:
                        return
                    if not data:
                        return
                    received.extend(data)

            # Output the kernel takes at once is never a backlog: no WRITE.
            assert netlib_send(handle, b"small") == 5

            def peer_got_small() -> bool:
                read_peer()
                return received == b"small"

            run_until(peer_got_small)
            run_for(50)
            assert NETLIB_MSG_WRITE not in rec.msgs()

            received.clear()
            assert netlib_option(handle, NETLIB_OPT_SET_SEND_BUF_SIZE, 4096) == NETLIB_OK
            payload = os.urandom(1 << 20)
            assert netlib_send(handle, payload) == len(payload)
            assert netlib_send(handle, b"tail") == 4
            run_for(150)  # nobody reads: the backlog stays
            assert NETLIB_MSG_WRITE not in rec.msgs()

            reading = [True]

            def on_loop(data: Any, msg: int, h: int, param: Any) -> None:
                if reading[0]:
                    read_peer()

            netlib_add_loop(on_loop, None)
            run_until(lambda: NETLIB_MSG_WRITE in rec.msgs())
            assert rec.events[-1] == (NETLIB_MSG_WRITE, handle, None)
            run_until(lambda: len(received) == len(payload) + 4)
            assert received == payload + b"tail"
            run_for(50)
            assert rec.msgs() == [NETLIB_MSG_CONFIRM, NETLIB_MSG_WRITE]
            reading[0] = False


def test_reading_pauses_while_the_application_does_not_recv() -> None:
    client, server, _, _ = connected_pair()
    payload = os.urandom(3 * RECV_BUFFER_HIGH_WATER_BYTES)
    assert netlib_send(client, payload) == len(payload)
    run_for(300)  # the server application ignores READ meanwhile
    got = bytearray()
    drain(server, got, chunk=65536)
    # What netlib buffered stopped near the high water mark (plus one read).
    assert RECV_BUFFER_HIGH_WATER_BYTES <= len(got) <= RECV_BUFFER_HIGH_WATER_BYTES + 128 * 1024
    reader = Recorder(lambda m, h, p: drain(h, got, 65536) if m == NETLIB_MSG_READ else 0)
    assert netlib_option(server, NETLIB_OPT_SET_CALLBACK, reader) == NETLIB_OK
    run_until(lambda: len(got) == len(payload))
    assert got == payload


def test_a_peer_that_never_reads_is_cut_off_at_the_send_buffer_limit() -> None:
    with socket.socket() as server:
        # Small kernel buffers on both sides: nearly all of it must queue in the process.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.bind((HOST, 0))
        server.listen()
        rec = Recorder()
        handle = netlib_connect(HOST, server.getsockname()[1], rec, None)
        run_until(lambda: rec.msgs() == [NETLIB_MSG_CONFIRM])
        assert netlib_option(handle, NETLIB_OPT_SET_SEND_BUF_SIZE, 4096) == NETLIB_OK
        peer, _ = server.accept()
        with peer:
            too_much = bytes(MAX_SEND_BUFFER_BYTES + (1 << 20))
            assert netlib_send(handle, too_much) == len(too_much)
            run_until(lambda: NETLIB_MSG_CLOSE in rec.msgs())
    [(msg, h, param)] = rec.events[1:]
    assert (msg, h) == (NETLIB_MSG_CLOSE, handle)
    assert isinstance(param, PeerTooSlow)


# -- closing -------------------------------------------------------------------------------


def test_close_is_graceful_and_close_fires_once() -> None:
    with socket.create_server((HOST, 0)) as server:
        rec = Recorder()
        handle = netlib_connect(HOST, server.getsockname()[1], rec, None)
        run_until(lambda: rec.msgs() == [NETLIB_MSG_CONFIRM])
        peer, _ = server.accept()
        with peer:
            payload = os.urandom(1 << 20)
            assert netlib_send(handle, payload) == len(payload)
            assert netlib_close(handle) == NETLIB_OK
            assert netlib_close(handle) == NETLIB_ERROR
            assert netlib_send(handle, b"x") == NETLIB_ERROR
            assert netlib_recv(handle, bytearray(1)) == NETLIB_ERROR
            assert netlib_option(handle, NETLIB_OPT_GET_REMOTE_PORT) == NETLIB_ERROR
            peer.setblocking(False)
            received = bytearray()
            eof = [False]

            def on_loop(data: Any, msg: int, h: int, param: Any) -> None:
                while not eof[0]:
                    try:
                        chunk = peer.recv(65536)
                    except BlockingIOError:
                        return
                    if not chunk:
                        eof[0] = True
                        peer.close()  # our side of the close: the connection ends
                    received.extend(chunk)

            netlib_add_loop(on_loop, None)
            run_until(lambda: NETLIB_MSG_CLOSE in rec.msgs())
            assert received == payload  # everything queued went out before the FIN
            assert rec.events == [
                (NETLIB_MSG_CONFIRM, handle, None),
                (NETLIB_MSG_CLOSE, handle, None),
            ]
            run_for(50)
            assert rec.msgs().count(NETLIB_MSG_CLOSE) == 1


def test_peer_close_gives_close_and_ends_the_handle() -> None:
    client, server, client_rec, server_rec = connected_pair()
    assert netlib_close(client) == NETLIB_OK
    run_until(
        lambda: NETLIB_MSG_CLOSE in server_rec.msgs() and NETLIB_MSG_CLOSE in client_rec.msgs()
    )
    assert server_rec.events == [(NETLIB_MSG_CLOSE, server, None)]
    assert netlib_send(server, b"x") == NETLIB_ERROR
    assert netlib_recv(server, bytearray(1)) == NETLIB_ERROR
    assert netlib_close(server) == NETLIB_ERROR
    for opt in ALL_OPTIONS:
        assert netlib_option(server, opt, 4096) == NETLIB_ERROR


def test_the_close_callback_can_read_the_rest_and_close_again() -> None:
    seen: dict[str, Any] = {}

    def on_event(msg: int, handle: int, param: Any) -> None:
        if msg == NETLIB_MSG_CLOSE:  # READ is ignored until now, on purpose
            got = bytearray()
            seen["last"] = drain(handle, got)
            seen["data"] = bytes(got)
            seen["port"] = netlib_option(handle, NETLIB_OPT_GET_REMOTE_PORT)
            seen["send"] = netlib_send(handle, b"too late")
            seen["close"] = netlib_close(handle)

    with socket.create_server((HOST, 0)) as server:
        rec = Recorder(on_event)
        server_port = server.getsockname()[1]
        handle = netlib_connect(HOST, server_port, rec, None)
        peer, peer_address = server.accept()
        peer.sendall(b"last words")
        peer.close()
        run_until(lambda: NETLIB_MSG_CLOSE in rec.msgs())
    assert seen == {
        "last": 0,  # end of stream, like recv(2)
        "data": b"last words",
        "port": server_port,
        "send": NETLIB_ERROR,
        "close": NETLIB_OK,
    }
    run_for(50)
    assert rec.msgs().count(NETLIB_MSG_CLOSE) == 1
    assert netlib_close(handle) == NETLIB_ERROR
    assert peer_address[1] > 0


def test_a_failing_callback_closes_only_its_connection() -> None:
    _, port = listen_echo()
    boom = RuntimeError("boom")
    got = bytearray()

    def raising(msg: int, handle: int, param: Any) -> None:
        if msg == NETLIB_MSG_READ:
            raise boom

    bad = Recorder(raising)
    good = Recorder(lambda msg, handle, param: drain(handle, got) if msg == NETLIB_MSG_READ else 0)
    bad_handle = netlib_connect(HOST, port, bad, None)
    good_handle = netlib_connect(HOST, port, good, None)
    netlib_send(bad_handle, b"ping")
    run_until(lambda: NETLIB_MSG_CLOSE in bad.msgs())
    assert bad.events[-1] == (NETLIB_MSG_CLOSE, bad_handle, boom)
    netlib_send(good_handle, b"still fine")
    run_until(lambda: got == b"still fine")
    assert NETLIB_MSG_CLOSE not in good.msgs()


def test_handle_numbers_are_never_reused_even_when_fds_are() -> None:
    listener, port = listen_echo()
    accepted: list[int] = []

    def on_listen(data: Any, msg: int, handle: int, param: Any) -> None:
        echo_listener(data, msg, handle, param)
        accepted.append(handle)

    netlib_option(listener, NETLIB_OPT_SET_CALLBACK, on_listen)
    seen_handles: list[int] = [listener]
    previous: tuple[int, int, int] | None = None  # (client handle, client fd, server fd)
    for round_ in range(4):
        rec = Recorder()
        client = netlib_connect(HOST, port, rec, None)
        want = round_ + 1  # accepted connections so far, this one included

        def confirmed_and_accepted(rec: Recorder = rec, want: int = want) -> bool:
            return NETLIB_MSG_CONFIRM in rec.msgs() and len(accepted) == want

        run_until(confirmed_and_accepted)
        server = accepted[-1]
        assert max(seen_handles) < client < server  # the server side learns of it later
        if previous is not None:
            old_handle, old_client_fd, old_server_fd = previous
            # The kernel hands out the lowest free fd: the new sockets took the
            # numbers of the closed ones, yet the old handle names nothing.
            assert fd_of(client) in (old_client_fd, old_server_fd)
            assert netlib_send(old_handle, b"stale") == NETLIB_ERROR
            assert netlib_option(old_handle, NETLIB_OPT_GET_LOCAL_PORT) == NETLIB_ERROR
        previous = (client, fd_of(client), fd_of(server))
        seen_handles += [client, server]
        netlib_close(client)

        def closed(rec: Recorder = rec) -> bool:
            return NETLIB_MSG_CLOSE in rec.msgs()

        run_until(closed)
        run_for(30)  # the server side sees the EOF and closes too
    assert len(set(seen_handles)) == len(seen_handles)
    assert seen_handles[1:] == sorted(seen_handles[1:])


# -- options -------------------------------------------------------------------------------


def test_get_options_return_the_addresses() -> None:
    listener = netlib_listen(HOST, 0, echo_listener, None)
    port = local_port(listener)
    assert netlib_option(listener, NETLIB_OPT_GET_LOCAL_IP) == HOST
    client_rec = Recorder()
    client = netlib_connect(HOST, port, client_rec, None)
    # While connecting the remote address is the one asked for.
    assert netlib_option(client, NETLIB_OPT_GET_REMOTE_IP) == HOST
    assert netlib_option(client, NETLIB_OPT_GET_REMOTE_PORT) == port
    run_until(lambda: NETLIB_MSG_CONFIRM in client_rec.msgs())
    assert netlib_option(client, NETLIB_OPT_GET_REMOTE_IP) == HOST
    assert netlib_option(client, NETLIB_OPT_GET_REMOTE_PORT) == port
    assert netlib_option(client, NETLIB_OPT_GET_LOCAL_IP) == HOST
    client_port = netlib_option(client, NETLIB_OPT_GET_LOCAL_PORT)
    assert client_port > 0 and client_port != port
    ctx = netlib_module._default
    assert ctx is not None
    [server] = [h for h in ctx.handles if h not in (listener, client)]
    assert netlib_option(server, NETLIB_OPT_GET_REMOTE_PORT) == client_port
    assert netlib_option(server, NETLIB_OPT_GET_REMOTE_IP) == HOST
    assert netlib_option(server, NETLIB_OPT_GET_LOCAL_PORT) == port


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _have_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_addresses_work_too() -> None:
    listener = netlib_listen("::1", 0, echo_listener, None)
    assert listener > 0
    assert netlib_option(listener, NETLIB_OPT_GET_LOCAL_IP) == "::1"
    got = bytearray()
    rec = Recorder(lambda m, h, p: drain(h, got) if m == NETLIB_MSG_READ else 0)
    client = netlib_connect("::1", local_port(listener), rec, None)
    netlib_send(client, b"six")
    run_until(lambda: got == b"six")
    assert netlib_option(client, NETLIB_OPT_GET_REMOTE_IP) == "::1"


def test_set_options_validate_their_values() -> None:
    client, _, client_rec, _ = connected_pair()
    listener = netlib_listen(HOST, 0, echo_listener, None)
    for handle in (client, listener):
        for opt in (NETLIB_OPT_SET_SEND_BUF_SIZE, NETLIB_OPT_SET_RECV_BUF_SIZE):
            assert netlib_option(handle, opt, 65536) == NETLIB_OK
            for bad in (0, -1, "4096", True, None, 1 << 80):
                assert netlib_option(handle, opt, bad) == NETLIB_ERROR
        assert netlib_option(handle, NETLIB_OPT_SET_CALLBACK, "not callable") == NETLIB_ERROR
        assert netlib_option(handle, 0, None) == NETLIB_ERROR
        assert netlib_option(handle, 99, None) == NETLIB_ERROR
    ctx = netlib_module._default
    assert ctx is not None
    rec = ctx.handles[client]
    assert isinstance(rec, netlib_module._ConnHandle) and rec.conn.socket is not None
    # Linux doubles the value asked for; any platform keeps at least the value.
    assert rec.conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 65536
    assert rec.callback is client_rec  # the refused SET_CALLBACK changed nothing


# -- timers, loop callbacks, running -------------------------------------------------------


def test_timer_fires_every_interval_in_milliseconds() -> None:
    rec = Recorder()
    started = time.monotonic()
    assert netlib_register_timer(rec, "data", 20) == NETLIB_OK
    run_for(300)
    elapsed_ms = (time.monotonic() - started) * 1000
    assert rec.events[0] == (NETLIB_MSG_TIMER, 0, None)
    assert set(rec.events) == {(NETLIB_MSG_TIMER, 0, None)}
    assert set(rec.data) == {"data"}
    assert 0.5 * elapsed_ms / 20 <= len(rec.events) <= elapsed_ms / 20 + 1


def test_registering_the_same_timer_again_updates_its_interval() -> None:
    slow_then_fast = Recorder()
    netlib_register_timer(slow_then_fast, "a", 60_000)
    netlib_register_timer(slow_then_fast, "a", 20)
    fast_then_slow = Recorder()
    netlib_register_timer(fast_then_slow, "b", 20)
    netlib_register_timer(fast_then_slow, "b", 60_000)
    run_for(200)
    assert len(slow_then_fast.events) >= 4  # the 60 s interval was replaced
    assert fast_then_slow.events == []  # and the 20 ms one too: not a second timer
    assert netlib_get_loop().pending_timers == 2


def test_same_timer_means_equal_callback_and_equal_or_identical_data() -> None:
    class Ticker:
        def __init__(self) -> None:
            self.calls = 0

        def tick(self, data: Any, msg: int, handle: int, param: Any) -> None:
            self.calls += 1

    ticker = Ticker()
    context = {"unhashable": True}
    # A new bound method object each time, and data equal but not identical.
    netlib_register_timer(ticker.tick, ("key", 1), 60_000)
    netlib_register_timer(ticker.tick, ("key", 1), 60_000)
    netlib_register_timer(ticker.tick, context, 60_000)
    netlib_register_timer(ticker.tick, context, 60_000)
    netlib_register_timer(ticker.tick, {"unhashable": True}, 60_000)  # another object
    netlib_register_timer(Ticker().tick, ("key", 1), 60_000)  # another callback
    assert netlib_get_loop().pending_timers == 4
    assert netlib_delete_timer(ticker.tick, ("key", 1)) == NETLIB_OK
    assert netlib_delete_timer(ticker.tick, context) == NETLIB_OK
    assert netlib_delete_timer(ticker.tick, {"unhashable": True}) == NETLIB_ERROR
    assert netlib_get_loop().pending_timers == 2


def test_bad_intervals_are_refused() -> None:
    rec = Recorder()
    for interval in (0, -5, True):
        assert netlib_register_timer(rec, None, interval) == NETLIB_ERROR
    assert netlib_register_timer(rec, None, 2.5) == NETLIB_OK


def test_delete_timer() -> None:
    deleted = Recorder()
    netlib_register_timer(deleted, None, 10)
    run_for(60)
    count = len(deleted.events)
    assert count >= 1
    assert netlib_delete_timer(deleted, None) == NETLIB_OK
    assert netlib_delete_timer(deleted, None) == NETLIB_ERROR
    run_for(60)
    assert len(deleted.events) == count


def test_a_timer_can_delete_itself() -> None:
    def once(msg: int, handle: int, param: Any) -> None:
        assert netlib_delete_timer(rec, "once") == NETLIB_OK

    rec = Recorder(once)
    netlib_register_timer(rec, "once", 10)
    run_for(100)
    assert len(rec.events) == 1


def test_stop_from_a_timer_callback() -> None:
    running_inside: list[bool] = []

    def stop(data: Any, msg: int, handle: int, param: Any) -> None:
        running_inside.append(netlib_is_running())
        netlib_eventloop()  # already running: returns at once
        netlib_stop_event()

    assert not netlib_is_running()
    netlib_register_timer(stop, None, 30)
    started = time.monotonic()
    netlib_eventloop(10_000)
    assert time.monotonic() - started < 5
    assert running_inside == [True]
    assert not netlib_is_running()


def test_stop_from_another_thread() -> None:
    def stopper() -> None:
        deadline = time.monotonic() + 5
        while not netlib_is_running() and time.monotonic() < deadline:
            time.sleep(0.005)
        netlib_stop_event()

    thread = threading.Thread(target=stopper)
    thread.start()
    started = time.monotonic()
    netlib_eventloop(60_000)  # a long wait: only the wakeup can end it early
    thread.join()
    assert time.monotonic() - started < 5
    assert not netlib_is_running()


def test_stop_before_the_loop_runs_is_ignored() -> None:
    netlib_stop_event()
    rec = Recorder()
    netlib_register_timer(rec, None, 10)
    run_for(60)
    assert len(rec.events) >= 2


def test_add_loop_runs_once_per_iteration_in_order() -> None:
    calls: list[tuple[str, int, int, Any]] = []

    def first(data: Any, msg: int, handle: int, param: Any) -> None:
        calls.append((data, msg, handle, param))

    def second(data: Any, msg: int, handle: int, param: Any) -> None:
        calls.append((data, msg, handle, param))
        if len(calls) == 10:
            netlib_stop_event()

    assert netlib_add_loop(first, "first") == NETLIB_OK
    assert netlib_add_loop(second, "second") == NETLIB_OK
    netlib_eventloop(1)
    assert calls == [("first", NETLIB_MSG_LOOP, 0, None), ("second", NETLIB_MSG_LOOP, 0, None)] * 5


def test_wait_timeout_is_in_milliseconds() -> None:
    iterations = [0]

    def count(data: Any, msg: int, handle: int, param: Any) -> None:
        iterations[0] += 1

    def stop(data: Any, msg: int, handle: int, param: Any) -> None:
        netlib_stop_event()

    netlib_add_loop(count, None)
    netlib_register_timer(stop, None, 500)
    netlib_eventloop(50)
    # An idle loop wakes every 50 ms: about 10 iterations (not 1, not thousands).
    assert 5 <= iterations[0] <= 20


def test_object_api_code_shares_the_default_loop() -> None:
    class Echo(Protocol):
        def connection_made(self, conn: Transport) -> None:
            self.conn = conn

        def data_received(self, data: bytes) -> None:
            self.conn.write(data.upper())

    server = netlib_get_loop().listen(HOST, 0, Echo)
    try:
        got = bytearray()
        rec = Recorder(lambda m, h, p: drain(h, got) if m == NETLIB_MSG_READ else 0)
        handle = netlib_connect(HOST, server.port, rec, None)
        netlib_send(handle, b"mixed")
        run_until(lambda: got == b"MIXED")
    finally:
        server.close()


# -- the examples, for real ----------------------------------------------------------------


class EchoServerProcess:
    """``examples/netlib_echo_server.py`` in a subprocess."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "netlib_echo_server.py"), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the example server did not start: {line!r}")
        self.port = int(line.split()[2])

    def stop(self) -> str:
        """SIGTERM; returns the rest of its output once it exited with status 0."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, out
        return out.strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def echo_server() -> Iterator[EchoServerProcess]:
    server = EchoServerProcess()
    try:
        yield server
    finally:
        server.kill()


def run_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "netlib_echo_client.py"), "--port", str(port), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_example_client_and_server(echo_server: EchoServerProcess) -> None:
    args = ("--connections", "4", "--rounds", "20", "--size", "100000")
    result = run_client(echo_server.port, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "OK 4 20 8000000"
    assert echo_server.stop() == "STOPPED 4 8000000"


def test_example_server_with_in_process_clients(echo_server: EchoServerProcess) -> None:
    payloads = [os.urandom(300_000) for _ in range(3)]
    received: dict[int, bytearray] = {}
    handles: list[int] = []

    def on_event(msg: int, handle: int, param: Any) -> None:
        if msg == NETLIB_MSG_CONFIRM:
            netlib_send(handle, payloads[handles.index(handle)])
        elif msg == NETLIB_MSG_READ:
            drain(handle, received.setdefault(handle, bytearray()), chunk=65536)

    rec = Recorder(on_event)
    for _ in payloads:
        handle = netlib_connect(HOST, echo_server.port, rec, None)
        assert handle != NETLIB_INVALID_HANDLE
        handles.append(handle)
    run_until(lambda: all(len(received.get(h, b"")) >= 300_000 for h in handles))
    assert [received[h] for h in handles] == payloads
    for handle in handles:
        assert netlib_close(handle) == NETLIB_OK
    run_until(lambda: rec.msgs().count(NETLIB_MSG_CLOSE) == 3)
    assert all(param is None for msg, _, param in rec.events if msg == NETLIB_MSG_CLOSE)
    assert echo_server.stop() == "STOPPED 3 900000"


def test_example_client_reports_a_refused_connection() -> None:
    result = run_client(free_port(), "--timeout-ms", "5000")
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL ")
    assert "refused" in result.stdout


# -- TLS (not in the original) -------------------------------------------------------------


def test_tls_listen_and_connect_echo() -> None:
    listener = netlib_listen(HOST, 0, echo_listener, None, ssl=pki.server_ctx())
    assert listener > 0
    client_rec = Recorder()
    client = netlib_connect(
        HOST, local_port(listener), client_rec, None, ssl=pki.client_ctx(), server_hostname=HOST
    )
    assert client > 0
    run_until(lambda: NETLIB_MSG_CONFIRM in client_rec.msgs())
    assert netlib_send(client, b"over tls") == 8
    got = bytearray()
    run_until(lambda: drain(client, got) is not None and bytes(got) == b"over tls")
    assert netlib_option(client, NETLIB_OPT_GET_REMOTE_PORT) == local_port(listener)
    assert netlib_option(client, NETLIB_OPT_SET_SEND_BUF_SIZE, 65536) == NETLIB_OK
    assert netlib_close(client) == NETLIB_OK
    assert netlib_close(listener) == NETLIB_OK


def test_tls_connect_with_a_wrong_host_name_closes_with_the_verification_error() -> None:
    listener = netlib_listen(HOST, 0, echo_listener, None, ssl=pki.server_ctx())
    client_rec = Recorder()
    client = netlib_connect(
        HOST, local_port(listener), client_rec, None, ssl=pki.client_ctx(), server_hostname="x.y"
    )
    run_until(lambda: NETLIB_MSG_CLOSE in client_rec.msgs())
    [(msg, handle, param)] = client_rec.events
    assert (msg, handle) == (NETLIB_MSG_CLOSE, client)
    assert isinstance(param, ssl.SSLCertVerificationError)
    assert netlib_close(listener) == NETLIB_OK


def test_plain_tcp_to_a_netlib_tls_listener_never_becomes_a_handle() -> None:
    listen_rec = Recorder()
    listener = netlib_listen(HOST, 0, listen_rec, None, ssl=pki.server_ctx())
    client_rec = Recorder()
    client = netlib_connect(HOST, local_port(listener), client_rec, None)  # no TLS
    run_until(lambda: NETLIB_MSG_CONFIRM in client_rec.msgs())
    assert netlib_send(client, b"\x16\x03\x01\x00\x05hello") > 0  # not a ClientHello
    run_until(lambda: NETLIB_MSG_CLOSE in client_rec.msgs())
    assert listen_rec.events == []
    assert netlib_close(listener) == NETLIB_OK
