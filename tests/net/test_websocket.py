"""The WebSocket transport over real loopback sockets, on every backend: the upgrade and
what it refuses (plain HTTP, garbage, a wrong Origin, a slow request), one message per
``data_received`` and per ``write``, fragments, the refusals with their close codes
(text 1003, oversize 1009, a message that is not one PDU 1007, protocol errors 1002),
orderly and abrupt ends, pings tied to the protocol's keepalive, and WSS. Then the client
side (:class:`WebSocketClientTransport`, through ``loop.connect(..., websocket=...)``)
against the server side, both on one loop: messages both ways, WSS, the closes, and each
way an upgrade can fail (refused origin, not a WebSocket server, no answer, no server)."""

from __future__ import annotations

import logging
import struct

import pytest
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from wsclient import WsClient

from imreactor.net import ConnState, EventLoop, FlowControl, PeerTooSlow, Protocol, Transport
from imreactor.net.websocket import (
    WebSocketClientTransport,
    WebSocketClosed,
    WebSocketHandshakeTimeout,
    WebSocketTransport,
    accepting,
    binary_frame,
    connect_websocket,
    ws_url,
)
from imreactor.pdu.framing import one_pdu_check
from imreactor.pdu.header import encode_pdu

from . import pki
from .helpers import Collect, Echo, Recorder, RunUntil, refused_port, run_for

pytestmark = pytest.mark.timeout(60)


class Alive(Echo):
    """An echo that counts keepalive_received calls."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[bytes] = []
        self.alive = 0

    def data_received(self, data: bytes) -> None:
        self.messages.append(data)
        super().data_received(data)

    def keepalive_received(self) -> None:
        self.alive += 1


def _serve(loop: EventLoop, tls: bool = False, **kw: object) -> tuple[Collect[Alive], int]:
    made = Collect(Alive)
    factory = accepting(loop, made, **kw)  # type: ignore[arg-type]
    server = loop.listen("127.0.0.1", 0, factory, ssl=pki.server_ctx() if tls else None)
    return made, server.port


def _until(run_until: RunUntil, client: WsClient, predicate: object, what: str = "") -> None:
    def check() -> object:
        client.poll()
        return predicate()  # type: ignore[operator]

    run_until(check, what=what)


def _open(loop: EventLoop, run_until: RunUntil, port: int, **kw: object) -> WsClient:
    client = WsClient(port, **kw)  # type: ignore[arg-type]
    _until(run_until, client, lambda: client.response is not None, "the upgrade answer")
    return client


def test_messages_are_echoed_one_for_one(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop)
    client = _open(loop, run_until, port)
    assert client.open
    sent = [b"a", b"bc" * 100, bytes(70000)]
    for message in sent:
        client.send(message)
    _until(run_until, client, lambda: len(client.messages) == 3, "three echoes")
    assert client.messages == sent
    (proto,) = made.made
    assert proto.messages == sent  # one data_received per message, never merged or split
    assert isinstance(proto.conn, WebSocketTransport)
    assert proto.conn.request is not None and proto.conn.request.path == "/"


def test_fragments_make_one_message(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop)
    client = _open(loop, run_until, port)
    client.send_fragments(b"one ", b"two ", b"three")
    _until(run_until, client, lambda: client.messages, "the echo")
    assert made.made[0].messages == [b"one two three"]
    assert client.messages == [b"one two three"]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426),  # plain HTTP
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", None),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            400,  # no Sec-WebSocket-Key
        ),
        (b"\x16\x03\x01\x00\xa5garbage that is no HTTP at all\r\n\r\n", None),
    ],
    ids=["plain-http", "post", "no-key", "garbage"],
)
def test_bad_upgrade_requests_are_refused(
    loop: EventLoop,
    run_until: RunUntil,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    status: int | None,
) -> None:
    made, port = _serve(loop)
    client = WsClient(port, upgrade=False)
    client.send_raw(request_bytes)
    answer = bytearray()

    def closed() -> bool:
        try:
            while data := client.sock.recv(65536):
                answer.extend(data)
            return True  # EOF
        except BlockingIOError:
            return False

    with caplog.at_level(logging.WARNING, "imreactor.net.websocket"):
        run_until(closed, what="the server to close")
    if status is not None:
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), bytes(answer[:80])
    assert not made.made  # no protocol object for a connection that never upgraded
    assert any("WebSocket" in r.getMessage() for r in caplog.records)
    # The listener still serves others.
    assert _open(loop, run_until, port).open


def test_origin_allow_list(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop, origins=["https://chat.example"])
    good = _open(loop, run_until, port, origin="https://chat.example")
    bad = _open(loop, run_until, port, origin="https://evil.example")
    none = _open(loop, run_until, port)  # not a browser page: no Origin
    assert good.open and none.open
    assert bad.response is not None and bad.response.status_code == 403
    _until(run_until, bad, lambda: bad.eof, "the refused connection to end")
    assert len(made.made) == 2


def test_any_origin_without_a_list(loop: EventLoop, run_until: RunUntil) -> None:
    _, port = _serve(loop)
    assert _open(loop, run_until, port, origin="https://anywhere.example").open


def _refused(
    loop: EventLoop, run_until: RunUntil, client: WsClient, made: Collect[Alive], code: int
) -> None:
    _until(run_until, client, lambda: client.eof and made.made[0].lost, "the close")
    assert client.close_code == code
    (exc,) = made.made[0].lost
    assert isinstance(exc, WebSocketClosed) and exc.code == code


def test_text_messages_close_with_1003(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop)
    client = _open(loop, run_until, port)
    client.send(b"first")
    client.send_text("hello")
    _refused(loop, run_until, client, made, 1003)
    assert made.made[0].messages == [b"first"]


def test_oversize_message_closes_with_1009(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop, max_message_bytes=1000)
    client = _open(loop, run_until, port)
    client.send(bytes(1000))  # at the limit: fine
    client.send(bytes(1001))
    _refused(loop, run_until, client, made, 1009)
    assert made.made[0].messages == [bytes(1000)]


def test_oversize_fragmented_message_closes_with_1009(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop, max_message_bytes=1000)
    client = _open(loop, run_until, port)
    client.send_fragments(bytes(600), bytes(600))
    _refused(loop, run_until, client, made, 1009)
    assert made.made[0].messages == []


@pytest.mark.parametrize(
    "message",
    [
        encode_pdu(7, 0x0701, 1)[:10],  # shorter than a header
        encode_pdu(7, 0x0701, 1, b"body")[:-2],  # half a PDU
        encode_pdu(7, 0x0701, 1) * 2,  # two PDUs in one message
        struct.pack(">I", 5000) + bytes(4996),  # a PDU over the limit
    ],
    ids=["short", "split", "packed", "over-limit"],
)
def test_a_message_that_is_not_one_pdu_closes_with_1007(
    loop: EventLoop, run_until: RunUntil, message: bytes
) -> None:
    made, port = _serve(loop, message_check=one_pdu_check(4096))
    client = _open(loop, run_until, port)
    pdu = encode_pdu(7, 0x0701, 1, b"ok")
    client.send(pdu)
    client.send(message)
    _refused(loop, run_until, client, made, 1007)
    assert made.made[0].messages == [pdu]


def test_protocol_error_closes_with_1002(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop)
    client = _open(loop, run_until, port)
    client.send_raw(b"\x82\x01x")  # an unmasked frame: clients must mask
    _refused(loop, run_until, client, made, 1002)


def test_server_close_sends_1000(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop)
    client = _open(loop, run_until, port)
    client.send(b"last words")
    _until(run_until, client, lambda: made.made and made.made[0].messages, "the message")
    proto = made.made[0]
    proto.connection().write(b"bye")
    proto.connection().close()
    _until(run_until, client, lambda: client.eof and proto.lost, "the close")
    assert client.messages[-1] == b"bye"  # what was queued went first
    assert client.close_code == 1000
    assert proto.lost == [None]


def test_client_close_is_orderly(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop)
    client = _open(loop, run_until, port)
    client.close(1000)
    _until(run_until, client, lambda: made.made[0].lost and client.eof, "the close")
    assert made.made[0].lost == [None]
    assert client.close_code == 1000


def test_stream_cut_without_close_frame_is_a_reset(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop)
    client = _open(loop, run_until, port)
    client.shutdown()
    run_until(lambda: made.made[0].lost, what="connection_lost")
    (exc,) = made.made[0].lost
    assert isinstance(exc, ConnectionResetError)


def test_idle_peer_is_pinged_and_pongs_count_as_alive(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop, ping_interval_s=0.05)
    client = _open(loop, run_until, port)
    _until(run_until, client, lambda: made.made and made.made[0].alive >= 2, "pongs")
    assert client.frames and all(f.opcode.name == "PING" for f in client.frames)


def test_a_client_ping_counts_as_alive(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop, ping_interval_s=None)
    client = _open(loop, run_until, port)
    client.ping()
    _until(run_until, client, lambda: client.frames, "the pong")
    assert client.frames[0].opcode.name == "PONG"
    assert made.made[0].alive == 1


def test_upgrade_that_never_comes_times_out(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    made, port = _serve(loop, handshake_timeout_s=0.1)
    client = WsClient(port, upgrade=False)
    client.send_raw(b"GET / HTTP/1.1\r\n")  # and nothing more
    with caplog.at_level(logging.WARNING, "imreactor.net.websocket"):
        _until(run_until, client, lambda: client.eof, "the timeout")
    assert not made.made
    assert any("not complete in time" in r.getMessage() for r in caplog.records)


def test_paused_reading_holds_parsed_messages(loop: EventLoop, run_until: RunUntil) -> None:
    class Pauser(Alive):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.connection().pause_reading()

    made = Collect(Pauser)
    port = loop.listen("127.0.0.1", 0, accepting(loop, made)).port
    client = _open(loop, run_until, port)
    client.send(b"1")
    client.send(b"2")
    client.send(b"3")
    _until(run_until, client, lambda: made.made and made.made[0].messages, "the first")
    run_for(loop, 0.1)
    proto = made.made[0]
    assert proto.messages == [b"1"]  # the rest waits, though parsed in the same read
    for count in (2, 3):
        proto.connection().resume_reading()
        _until(run_until, client, lambda: len(proto.messages) == count, "one more after resume")  # noqa: B023
    assert proto.messages == [b"1", b"2", b"3"]


def test_wss(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop, tls=True)
    client = _open(loop, run_until, port, context=pki.client_ctx())
    assert client.open
    client.send(b"secret")
    _until(run_until, client, lambda: client.messages, "the echo")
    assert client.messages == [b"secret"]
    lower = made.made[0].connection()
    assert isinstance(lower, WebSocketTransport)
    assert type(lower.lower).__name__ == "TLSTransport"


def test_a_peer_that_stops_reading_is_closed_alone(loop: EventLoop, run_until: RunUntil) -> None:
    made = Collect(Alive)
    flow = FlowControl(high_water=64 * 1024, low_water=16 * 1024, max_buffer=256 * 1024)
    port = loop.listen("127.0.0.1", 0, accepting(loop, made), flow=flow).port
    stalled = _open(loop, run_until, port)
    reader = _open(loop, run_until, port)
    run_until(lambda: len(made.made) == 2, what="both upgraded")
    slow, fast = made.made
    assert "pause" not in slow.events
    chunk = bytes(64 * 1024)

    # The stalled client never reads again: its messages pile up until the cap.
    def write_more() -> bool:
        if not slow.lost:
            slow.connection().write(chunk)
        return bool(slow.lost)

    run_until(write_more, what="the cap")
    (exc,) = slow.lost
    assert isinstance(exc, PeerTooSlow)
    assert "pause" in slow.events  # it was told to stop producing first
    fast.connection().write(b"still here")
    _until(run_until, reader, lambda: reader.messages, "the other client's message")
    assert reader.messages == [b"still here"] and not fast.lost
    stalled.shutdown()


# -- the client side ---------------------------------------------------------------------------


class Messages(Recorder):
    """A client protocol that keeps each message as it came."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.messages.append(data)


def _client(
    loop: EventLoop, run_until: RunUntil, port: int, **kw: object
) -> tuple[Messages, WebSocketClientTransport]:
    proto = Messages()
    conn = loop.connect("127.0.0.1", port, proto, websocket="/chat", **kw)  # type: ignore[call-overload]
    assert isinstance(conn, WebSocketClientTransport)
    run_until(lambda: proto.made or proto.failed, what="the upgrade")
    return proto, conn


def test_client_and_server_exchange_messages_one_for_one(
    loop: EventLoop, run_until: RunUntil
) -> None:
    made, port = _serve(loop)
    proto, conn = _client(loop, run_until, port)
    assert proto.made and proto.connection() is conn
    assert conn.response is not None and conn.response.status_code == 101
    sent = [b"a", b"bc" * 100, bytes(200_000)]
    conn.writelines(sent)
    run_until(lambda: len(proto.messages) == 3, what="three echoes")
    assert proto.messages == sent  # one data_received per message both ways
    (server,) = made.made
    assert server.messages == sent
    assert server.conn is not None and server.conn.request is not None  # type: ignore[attr-defined]
    assert server.conn.request.path == "/chat"  # type: ignore[attr-defined]
    assert conn.remote_address[1] == port and conn.socket is not None


def test_client_over_wss(loop: EventLoop, run_until: RunUntil) -> None:
    _, port = _serve(loop, tls=True)
    proto, conn = _client(loop, run_until, port, ssl=pki.client_ctx(), server_hostname="localhost")
    assert proto.made, proto.failed
    assert type(conn.lower).__name__ == "TLSTransport"
    conn.write(b"secret")
    run_until(lambda: proto.messages, what="the echo")
    assert proto.messages == [b"secret"]


def test_client_close_ends_both_sides_orderly(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop)
    proto, conn = _client(loop, run_until, port)
    conn.write(b"last")
    conn.close()
    run_until(lambda: proto.lost and made.made and made.made[0].lost, what="both ends")
    assert made.made[0].messages == [b"last"]  # queued before the close frame
    assert proto.lost == [None] and made.made[0].lost == [None]
    assert conn.close_code == 1000


def test_server_close_code_reaches_the_client(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop)
    proto, _ = _client(loop, run_until, port)
    run_until(lambda: made.made, what="the server side")
    server = made.made[0].connection()
    assert isinstance(server, WebSocketTransport)
    server.close_with(4000, "go away")
    run_until(lambda: proto.lost, what="the close")
    (exc,) = proto.lost
    assert isinstance(exc, WebSocketClosed) and (exc.code, exc.reason) == (4000, "go away")


def test_client_pings_are_answered(loop: EventLoop, run_until: RunUntil) -> None:
    class Alive(Messages):
        alive = 0

        def keepalive_received(self) -> None:
            self.alive += 1

    _, port = _serve(loop, ping_interval_s=None)
    proto = Alive()
    conn = connect_websocket(loop, "127.0.0.1", port, proto, ping_interval_s=0.05)
    run_until(lambda: proto.alive >= 2, what="pongs")
    assert conn.state is ConnState.CONNECTED


def test_client_refused_by_origin(loop: EventLoop, run_until: RunUntil) -> None:
    made, port = _serve(loop, origins=["http://chat.example"])
    proto = Messages()
    conn = connect_websocket(loop, "127.0.0.1", port, proto, origin="http://evil.example")
    run_until(lambda: proto.failed, what="the refusal")
    (exc,) = proto.failed
    assert isinstance(exc, InvalidStatus) and exc.response.status_code == 403
    assert not proto.made and not made.made
    assert conn.response is not None and conn.response.status_code == 403


def _raw_server(loop: EventLoop, answer: bytes | None) -> int:
    """A TCP server that answers anything with ``answer`` then closes (None: stays silent)."""

    class Raw(Protocol):
        def connection_made(self, conn: Transport) -> None:
            self.conn = conn

        def data_received(self, data: bytes) -> None:
            if answer is not None:
                self.conn.write(answer)
                self.conn.close()

    return loop.listen("127.0.0.1", 0, Raw).port


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"\x00\x00\x00\x10 not HTTP at all", id="garbage"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", id="plain-http"),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
            id="wrong-accept",
        ),
    ],
)
def test_client_refuses_an_answer_that_is_no_upgrade(
    loop: EventLoop, run_until: RunUntil, answer: bytes
) -> None:
    proto = Messages()
    conn = loop.connect("127.0.0.1", _raw_server(loop, answer), proto, websocket="/")
    run_until(lambda: proto.failed, what="the failure")
    (exc,) = proto.failed
    assert isinstance(exc, InvalidHandshake), exc
    assert not proto.made and not proto.lost
    run_until(lambda: conn.state is ConnState.CLOSED, what="closed")


def test_client_upgrade_without_answer_times_out(loop: EventLoop, run_until: RunUntil) -> None:
    proto = Messages()
    loop.connect(
        "127.0.0.1", _raw_server(loop, None), proto, websocket="/", handshake_timeout_s=0.1
    )
    run_until(lambda: proto.failed, what="the timeout")
    assert isinstance(proto.failed[0], WebSocketHandshakeTimeout)


def test_client_connect_refused(loop: EventLoop, run_until: RunUntil) -> None:
    sock, port = refused_port()
    try:
        proto = Messages()
        closed: list[BaseException | None] = []
        conn = loop.connect("127.0.0.1", port, proto, websocket="/")
        conn.add_close_callback(lambda c, exc: closed.append(exc))
        run_until(lambda: proto.failed and closed, what="the refusal")
        assert isinstance(proto.failed[0], ConnectionRefusedError)
    finally:
        sock.close()


def test_ws_url() -> None:
    assert ws_url("127.0.0.1", 8800) == "ws://127.0.0.1:8800/"
    assert ws_url("::1", 8801, "/x", secure=True) == "wss://[::1]:8801/x"
    with pytest.raises(ValueError, match="starts with"):
        ws_url("h", 1, "x")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_binary_frame_is_the_librarys_frame(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert binary_frame(data, False) == Frame(Opcode.BINARY, data).serialize(mask=False)
    for masked in (binary_frame(data, True), binary_frame(bytearray(data), True)):
        reader = StreamReader()
        reader.feed_data(masked)
        parser = Frame.parse(reader.read_exact, mask=True)
        with pytest.raises(StopIteration) as parsed:
            next(parser)
        frame = parsed.value.value
        assert (frame.opcode, frame.fin, frame.data) == (Opcode.BINARY, True, data)


def test_frames_right_behind_the_upgrade_and_cut_anywhere_are_whole_messages(
    loop: EventLoop, run_until: RunUntil
) -> None:
    made, port = _serve(loop, message_check=one_pdu_check(1 << 20))
    pdus = [encode_pdu(7, 0x0701, n, bytes(n * 40)) for n in range(1, 5)]
    client = WsClient(port, upgrade=False)
    client.proto.send_request(client.proto.connect())
    upgrade = b"".join(client.proto.data_to_send())
    # The request and two frames in one segment: the frames are not lost in the upgrade.
    client.send_raw(upgrade + binary_frame(pdus[0], True) + binary_frame(pdus[1], True))
    _until(run_until, client, lambda: len(client.messages) == 2, "two echoes")
    # Then a ping between frames, all of it one byte at a time.
    stream = binary_frame(pdus[2], True) + b"\x89\x80abcd" + binary_frame(pdus[3], True)
    for byte in stream:
        client.send_raw(bytes([byte]))
        loop.run_once(0)
    _until(run_until, client, lambda: len(client.messages) == 4, "four echoes")
    assert client.messages == pdus
    (proto,) = made.made
    assert proto.messages == pdus and proto.alive == 1  # the ping counted as alive
    assert any(f.opcode is Opcode.PONG for f in client.frames)
