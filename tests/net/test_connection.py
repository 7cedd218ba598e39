"""TCP connections on every backend: the state machine, connect refused and timed out,
addresses and socket options, pause/resume reading, and ``connection_lost`` exactly once on
every way a connection ends, including closes from inside ``data_received`` and an fd
number reused within one batch of events."""

from __future__ import annotations

import errno
import os
import select
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest

from imreactor.net import Connection, ConnState, EventLoop, FlowControl, Transport
from imreactor.net.poller import READABLE

from .helpers import (
    DEADLINE_S,
    Collect,
    Echo,
    Recorder,
    RunUntil,
    client,
    recv_exactly,
    recv_until_eof,
    refused_port,
    reset,
    roundtrip,
    run_for,
)

pytestmark = pytest.mark.timeout(30)

IDLE, CONNECTING, CONNECTED, CLOSING, CLOSED = (
    ConnState.IDLE,
    ConnState.CONNECTING,
    ConnState.CONNECTED,
    ConnState.CLOSING,
    ConnState.CLOSED,
)


def test_states_of_an_outgoing_connection(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted)
    proto = Recorder()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    conn = Connection(loop, sock, proto)
    assert conn.state is IDLE
    conn._start_connect(("127.0.0.1", server.port), 5.0)
    assert conn.state is CONNECTING
    assert proto.events == [], "nothing is called back before the loop runs"

    run_until(lambda: proto.made and len(accepted) == 1)
    assert proto.states == [("made", CONNECTED)]
    assert conn.established
    peer = accepted.made[0]
    assert peer.states == [("made", CONNECTED)], "an accepted connection starts CONNECTED"

    conn.close()
    assert conn.state is CLOSING, "closed by us, waiting for the peer's FIN"
    run_until(lambda: proto.closed and peer.closed)
    assert conn.state is CLOSED
    assert proto.states[-1] == ("lost", CLOSED)
    assert proto.lost == [None] and peer.lost == [None]
    assert conn.established, "established stays True after the close"
    assert conn.fileno == -1 and conn.socket is None and conn.local_address is None


def test_connect_refused_calls_connection_failed_once(loop: EventLoop, run_until: RunUntil) -> None:
    blocker, port = refused_port()
    with blocker:
        proto = Recorder()
        closes: list[BaseException | None] = []
        conn = loop.connect("127.0.0.1", port, proto)
        conn.add_close_callback(lambda c, exc: closes.append(exc))
        assert proto.events == [], "connection_failed must not run inside connect()"
        run_until(lambda: proto.failed)
        run_for(loop, 0.1)
    assert proto.events == ["failed"], "no connection_made, no connection_lost"
    assert isinstance(proto.failed[0], ConnectionRefusedError)
    assert closes == proto.failed
    assert conn.state is CLOSED and not conn.established and conn.fileno == -1


@pytest.fixture
def full_backlog() -> Iterator[tuple[str, int]]:
    """A listener whose accept queue is full: the kernel drops new SYNs, so connects hang."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        select.select([], fillers, [], 0.2)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.3)
            try:
                probe.connect(address)
            except TimeoutError:
                pass
            else:
                pytest.skip("this kernel completes connects beyond a full accept queue")
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_connect_timeout(
    loop: EventLoop, run_until: RunUntil, full_backlog: tuple[str, int]
) -> None:
    proto = Recorder()
    conn = loop.connect(full_backlog[0], full_backlog[1], proto, timeout_s=0.2)
    run_until(lambda: proto.failed)
    run_for(loop, 0.05)
    assert proto.events == ["failed"]
    assert isinstance(proto.failed[0], TimeoutError)
    assert conn.state is CLOSED and conn.fileno == -1
    assert loop.pending_timers == 0


def test_writes_while_connecting_are_sent_once_connected(
    loop: EventLoop, run_until: RunUntil
) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted)
    conn = loop.connect("127.0.0.1", server.port, Recorder())
    conn.write(b"early ")
    conn.writelines([b"bird", b"s"])
    run_until(lambda: len(accepted) == 1 and accepted.made[0].received == b"early birds")


def test_connect_from_a_chosen_source_address(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted)
    conn = loop.connect("127.0.0.1", server.port, Recorder(), source=("127.0.0.2", 0))
    run_until(lambda: len(accepted) == 1 and conn.state is CONNECTED)
    assert accepted.made[0].connection().remote_address[0] == "127.0.0.2"
    assert conn.local_address[0] == "127.0.0.2"
    # A source that cannot be bound fails the call itself, before any connection exists.
    with pytest.raises(OSError):
        loop.connect("127.0.0.1", server.port, Recorder(), source=("192.0.2.1", 0))


def test_addresses_and_socket_options(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted)
    with client(server.port) as cli:
        run_until(lambda: len(accepted) == 1)
        conn = accepted.made[0].tcp()
        assert conn.local_address == cli.getpeername()
        assert conn.remote_address == cli.getsockname()
        sock = conn.socket
        assert sock is not None

        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "on by default"
        conn.set_nodelay(False)
        assert not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        conn.set_nodelay()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

        conn.set_send_buffer_size(50_000)
        assert 50_000 <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 100_000
        conn.set_recv_buffer_size(60_000)
        assert 60_000 <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 120_000

        conn.abort()
        assert conn.local_address is None and conn.remote_address is None
        conn.set_nodelay()  # harmless once closed
        conn.set_send_buffer_size(1)


def test_nodelay_off_on_request(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted, nodelay=False)
    outgoing = Recorder()
    conn = loop.connect("127.0.0.1", server.port, outgoing, nodelay=False)
    run_until(lambda: outgoing.made and len(accepted) == 1)
    for sock in (conn.socket, accepted.made[0].tcp().socket):
        assert sock is not None
        assert not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    default = Recorder()
    conn2 = loop.connect("127.0.0.1", server.port, default)
    run_until(lambda: default.made)
    assert conn2.socket is not None
    assert conn2.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_pause_and_resume_reading(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted)
    with client(server.port) as cli:
        run_until(lambda: len(accepted) == 1)
        proto = accepted.made[0]
        conn = proto.connection()
        assert conn.reading
        conn.pause_reading()
        assert not conn.reading
        cli.sendall(b"held back")
        run_for(loop, 0.1)
        assert proto.received == b""
        conn.resume_reading()
        run_until(lambda: proto.received == b"held back")


# -- connection_lost exactly once, whatever the path ----------------------------------------


class Server(Recorder):
    """Raises from data_received when told to."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if b"raise" in data:
            raise RuntimeError("handler bug")


Trigger = Callable[[EventLoop, Connection, socket.socket], None]


def _peer_eof(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    cli.close()


def _peer_reset(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    reset(cli)


def _close(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    conn.close()
    assert cli.recv(10) == b""
    cli.close()


def _close_twice(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    conn.close()
    conn.close()
    assert cli.recv(10) == b""
    conn.close()
    cli.close()


def _close_until_timeout(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    conn.close()  # the peer never closes: the close deadline (0.2 s here) aborts


def _abort(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    conn.abort()
    assert conn.state is CLOSED


def _abort_with_reason(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    conn.abort(ValueError("kicked"))


def _close_then_abort(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    conn.close()
    conn.abort()


def _abort_then_close(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    conn.abort()
    conn.close()
    conn.abort()


def _handler_exception(loop: EventLoop, conn: Connection, cli: socket.socket) -> None:
    cli.sendall(b"raise")


class Case(NamedTuple):
    trigger: Trigger
    expected: type[BaseException] | None


CASES = {
    "peer-eof": Case(_peer_eof, None),
    "peer-reset": Case(_peer_reset, ConnectionResetError),
    "close": Case(_close, None),
    "close-twice": Case(_close_twice, None),
    "close-timeout": Case(_close_until_timeout, None),
    "abort": Case(_abort, None),
    "abort-with-reason": Case(_abort_with_reason, ValueError),
    "close-then-abort": Case(_close_then_abort, None),
    "abort-then-close": Case(_abort_then_close, None),
    "handler-exception": Case(_handler_exception, RuntimeError),
}


@pytest.mark.parametrize("path", list(CASES))
def test_connection_lost_exactly_once(loop: EventLoop, run_until: RunUntil, path: str) -> None:
    case = CASES[path]
    accepted = Collect(Server)
    server = loop.listen("127.0.0.1", 0, accepted, flow=FlowControl(close_timeout_s=0.2))
    with client(server.port) as cli:
        run_until(lambda: len(accepted) == 1)
        proto = accepted.made[0]
        conn = proto.tcp()
        closes: list[BaseException | None] = []
        conn.add_close_callback(lambda c, exc: closes.append(exc))
        case.trigger(loop, conn, cli)
        assert proto.lost == [], "connection_lost never runs inside close() or abort()"
        run_until(lambda: proto.lost, what=f"connection_lost after {path}")
        run_for(loop, 0.1)
    assert len(proto.lost) == 1, proto.events
    assert proto.events.count("lost") == 1
    exc = proto.lost[0]
    if case.expected is None:
        assert exc is None
    else:
        assert isinstance(exc, case.expected)
    assert closes == proto.lost, "close callbacks run once, with the same exception"
    assert conn.state is CLOSED and conn.fileno == -1
    assert proto.states[-1] == ("lost", CLOSED)
    late: list[BaseException | None] = []
    conn.add_close_callback(lambda c, exc: late.append(exc))
    run_until(lambda: late)
    assert late == [None], "a close callback added after the close still runs once"


class CloseInside(Recorder):
    """Replies in several writes, then closes, all inside data_received."""

    def __init__(self, write_after_close: bool) -> None:
        super().__init__()
        self.write_after_close = write_after_close

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        conn = self.connection()
        conn.write(b"one,")
        conn.write(b"two,")
        conn.writelines([b"three,", b"four"])
        conn.close()
        if self.write_after_close:
            conn.write(b"after close")


@pytest.mark.parametrize("write_after_close", [False, True], ids=["", "write-after-close"])
def test_close_inside_data_received_sends_batched_writes_once(
    loop: EventLoop, run_until: RunUntil, write_after_close: bool
) -> None:
    accepted = Collect(lambda: CloseInside(write_after_close))
    server = loop.listen("127.0.0.1", 0, accepted)
    with client(server.port) as cli:
        cli.sendall(b"go")
        run_until(lambda: len(accepted) == 1 and accepted.made[0].data_calls == 1)
        assert recv_until_eof(cli) == b"one,two,three,four"
    run_until(lambda: accepted.made[0].lost)
    run_for(loop, 0.05)
    assert accepted.made[0].lost == [None]


class CloseFirst(Recorder):
    """Closes, then tries to write, inside data_received: the write must be dropped."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        conn = self.connection()
        conn.close()
        conn.write(b"too late")


def test_writes_after_close_inside_data_received_are_dropped(
    loop: EventLoop, run_until: RunUntil
) -> None:
    accepted = Collect(CloseFirst)
    server = loop.listen("127.0.0.1", 0, accepted)
    with client(server.port) as cli:
        cli.sendall(b"go")
        run_until(lambda: len(accepted) == 1 and accepted.made[0].data_calls == 1)
        assert recv_until_eof(cli) == b""
    run_until(lambda: accepted.made[0].lost)
    run_for(loop, 0.05)
    assert accepted.made[0].lost == [None], "a write after close() must not break the close"


def test_abort_inside_data_received_drops_batched_writes(
    loop: EventLoop, run_until: RunUntil
) -> None:
    class AbortInside(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            conn = self.connection()
            conn.write(b"never sent")
            conn.abort()

    accepted = Collect(AbortInside)
    server = loop.listen("127.0.0.1", 0, accepted)
    with client(server.port) as cli:
        cli.sendall(b"go")
        run_until(lambda: len(accepted) == 1 and accepted.made[0].lost)
        try:
            assert recv_until_eof(cli) == b""
        except ConnectionResetError:
            pass  # aborted with our input unread: an RST
    run_for(loop, 0.05)
    assert accepted.made[0].lost == [None]


# -- a stale event for a reused fd number ----------------------------------------------------


class CountingHandler:
    """A raw IOHandler that only counts what it is called for."""

    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0
        self.errors: list[BaseException] = []

    def handle_read(self) -> None:
        self.reads += 1

    def handle_write(self) -> None:
        self.writes += 1

    def handle_error(self, exc: BaseException) -> None:
        self.errors.append(exc)


@dataclass
class Scene:
    """What the first Killer to get data did, for the test to check."""

    protocols: list[Killer] = field(default_factory=list)
    killer: Killer | None = None
    old_fd: int = -1
    new_pair: tuple[socket.socket, socket.socket] | None = None
    handler: CountingHandler = field(default_factory=CountingHandler)


class Killer(Recorder):
    """On the first data of the scene, aborts the other connection and registers a new socket.

    Both connections become readable in the same poll; whichever is dispatched
    first kills the other, whose event is still further down the same batch. The
    new socket takes the lowest free fd: the one just closed.
    """

    def __init__(self, loop: EventLoop, scene: Scene) -> None:
        super().__init__()
        self.loop = loop
        self.scene = scene

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        scene = self.scene
        if scene.killer is not None:
            return
        victim = next(p for p in scene.protocols if p is not self).tcp()
        scene.killer = self
        scene.old_fd = victim.fileno
        victim.abort()
        a, b = socket.socketpair()
        if a.fileno() != scene.old_fd:
            # The kernel gave another number: put the new socket on the victim's (free
            # since the abort closed it), so the reuse happens on every run.
            os.dup2(a.fileno(), scene.old_fd)
            a.close()
            a = socket.socket(fileno=scene.old_fd)
        scene.new_pair = a, b
        self.loop.add_handler(a.fileno(), READABLE, scene.handler)


def test_an_event_for_a_closed_fd_never_reaches_the_socket_that_reuses_the_number(
    loop: EventLoop, run_until: RunUntil
) -> None:
    scene = Scene()

    def make() -> Killer:
        protocol = Killer(loop, scene)
        scene.protocols.append(protocol)
        return protocol

    server = loop.listen("127.0.0.1", 0, make)
    with client(server.port) as c1, client(server.port) as c2:
        run_until(lambda: len(scene.protocols) == 2 and all(p.made for p in scene.protocols))
        fds = [p.tcp().fileno for p in scene.protocols]
        c1.sendall(b"x")
        c2.sendall(b"y")
        # Both server sockets readable before the one poll that reports them together.
        assert _wait_readable(fds), "the data did not arrive"
        loop.run_once(0)
        assert scene.new_pair is not None, "neither connection got its data"
        a, b = scene.new_pair
        try:
            assert a.fileno() == scene.old_fd
            assert scene.handler.reads == 0, "the closed socket's event reached the new handler"
            b.send(b"real")
            run_until(lambda: scene.handler.reads > 0)  # its own events do arrive
            loop.remove_handler(a.fileno())
        finally:
            a.close()
            b.close()
    victim = next(p for p in scene.protocols if p is not scene.killer)
    run_until(lambda: victim.lost)
    assert victim.data_calls == 0
    assert victim.lost == [None]


def _wait_readable(fds: list[int]) -> bool:
    ready: set[int] = set()
    for _ in range(100):
        r, _, _ = select.select(fds, [], [], DEADLINE_S / 100)
        ready.update(r)
        if len(ready) == len(fds):
            return True
    return False


def test_echo_survives_many_small_writes(loop: EventLoop) -> None:
    server = loop.listen("127.0.0.1", 0, Echo)
    with client(server.port) as cli:
        payload = b"".join(b"%05d," % i for i in range(2000))
        assert roundtrip(loop, cli, payload) == payload


def test_econnrefused_is_an_oserror_with_errno(loop: EventLoop, run_until: RunUntil) -> None:
    blocker, port = refused_port()
    with blocker:
        proto = Recorder()
        loop.connect("127.0.0.1", port, proto)
        run_until(lambda: proto.failed)
    exc = proto.failed[0]
    assert isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED


# -- output collected during an iteration, flushed at its end --------------------------------


def _nothing_to_read(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def test_writes_of_an_iteration_are_sent_together_when_it_ends(
    loop: EventLoop, run_until: RunUntil
) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted)
    seen: list[tuple[bool, int]] = []
    with client(server.port) as cli:
        run_until(lambda: len(accepted) == 1)
        conn = accepted.made[0].connection()

        def from_a_callback() -> None:
            conn.write(b"one,")
            conn.write(bytearray(b"two,"))
            conn.writelines([b"three,", b"four"])
            seen.append((_nothing_to_read(cli), conn.write_buffer_size))

        loop.call_later(0, from_a_callback)
        run_until(lambda: seen)
        assert seen == [(True, 18)], "collected, counted, and not yet on the wire"
        assert recv_exactly(cli, 18) == b"one,two,three,four"
        assert conn.write_buffer_size == 0


def test_writes_outside_an_iteration_are_sent_at_once(loop: EventLoop, run_until: RunUntil) -> None:
    accepted = Collect(Recorder)
    server = loop.listen("127.0.0.1", 0, accepted)
    with client(server.port) as cli:
        run_until(lambda: len(accepted) == 1)
        accepted.made[0].connection().write(b"now")
        cli.settimeout(2.0)
        assert cli.recv(16) == b"now", "sent by write() itself, with no loop iteration"


class RelayToLast(Recorder):
    """Writes what it receives to the connection accepted after it."""

    peers: list[Transport]

    def connection_made(self, conn: Transport) -> None:
        super().connection_made(conn)
        self.peers.append(conn)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.peers[-1].write(b"relayed:" + data)


def test_output_collected_for_a_peer_is_sent_before_its_eof_closes_it(
    loop: EventLoop, run_until: RunUntil
) -> None:
    # A's data and B's EOF are dispatched in one iteration, A first: B's EOF must
    # not close B before what A's handler wrote to B (collected, not yet sent) is out.
    # A comes first on every backend: it was registered first (poll, select) and
    # became ready first (epoll, kqueue); test_poller pins that order down.
    peers: list[Transport] = []

    def make() -> RelayToLast:
        proto = RelayToLast()
        proto.peers = peers
        return proto

    accepted = Collect(make)
    server = loop.listen("127.0.0.1", 0, accepted)
    with client(server.port) as a:
        run_until(lambda: len(accepted) == 1)
        with client(server.port) as b:
            run_until(lambda: len(accepted) == 2)
            a.sendall(b"hi")
            b.shutdown(socket.SHUT_WR)
            events: list[tuple[int, int]] = []
            deadline = DEADLINE_S
            while len(events) < 2 and deadline > 0:  # both ready before the loop looks
                events = loop.poller.poll(0.01)
                deadline -= 0.01
            run_until(lambda: accepted.made[1].lost)
            assert accepted.made[0].data_calls == 1
            assert recv_until_eof(b) == b"relayed:hi"
