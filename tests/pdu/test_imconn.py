"""The IM connection layer (imreactor.pdu.imconn): dispatch, bad input, keepalive, seq.

Covered with an event loop on a fake clock and in-memory connections (the FakeClock and
transport_pair of imreactor.net.testing):

- dispatch by command id (``register`` with an id or a class, the ``on`` decorator) to the
  handler with ``(conn, message, seq)``; commands nobody registered go to the dispatcher's
  default, or without one to ``bad_pdu`` ("unknown command"); a command id no message class
  has, or a known command under the wrong service id, to ``bad_pdu`` too;
- an undecodable body and a request missing required fields: ``bad_pdu`` with a message
  naming the class and the missing fields, logged with the ids, the connection kept;
- heartbeats: echoed byte for byte with ``echo_heartbeat``, ignored otherwise, never
  dispatched; sent after ``heartbeat_s`` without sending and not while we send; the link
  closed after ``timeout_s`` without receiving and not while the peer sends; one Keepalive
  timer for a whole group of connections;
- requests: the response callback gets the message; the wrong response class fails it;
  ``TimeoutError`` after ``timeout_s`` (a late answer then is counted and logged as late,
  once, and its seq not reused meanwhile); requests carry their budget in the header's
  reserved field where the policy says so;
  ``ConnectionError`` for every pending request when the link closes; seqs are never 0,
  wrap at 65535 and skip seqs still in use; a message that cannot be serialized raises
  and leaves nothing pending;
- relaying with ``send(partial=True)``: unknown fields and missing required fields survive
  parse + serialize byte for byte (hypothesis);

and over real loopback sockets (one EventLoop, listen + connect): dispatch and a response,
heartbeat echo, a real timeout with short LinkPolicy values kept off by the peer's own
heartbeats.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from google.protobuf.message import EncodeError, Message
from hypothesis import given
from hypothesis import strategies as st

from imreactor.net import EventLoop, Protocol, Server
from imreactor.net.connection import CLOSED, CONNECTED
from imreactor.net.testing import FakeClock, MemoryTransport, transport_pair
from imreactor.net.transport import ConnState
from imreactor.pdu.framing import Frame, FrameProtocol
from imreactor.pdu.header import HEADER_LEN, budget_ms, encode_pdu, parse_header
from imreactor.pdu.imconn import (
    CLIENT_SIDE,
    HEARTBEAT_PDU,
    LATE_SEQS_KEPT,
    SERVER_LINK,
    Dispatcher,
    ImConnection,
    Keepalive,
    LinkPolicy,
)
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_login_pb2, im_message_pb2
from imreactor.pdu.registry import ids_of
from imreactor.pdu.traffic import TRAFFIC

SID_MSG, CID_MSG_DATA = 0x0003, 0x0301
QUIET = LinkPolicy(heartbeat_s=None, timeout_s=None)


# -- doubles ---------------------------------------------------------------------------------


class Sink(Protocol):
    """The far end of an in-memory link: keeps every byte it receives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[BaseException | None] = []

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


class Side:
    """A protocol under test on one end of a transport pair, a :class:`Sink` on the other."""

    def __init__(self, loop: EventLoop, protocol: FrameProtocol) -> None:
        self.loop = loop
        self.sink = Sink()
        self.transport, _ = transport_pair(loop, protocol, self.sink)

    @property
    def state(self) -> ConnState:
        return self.transport.state

    def close(self) -> None:
        self.transport.close()

    def sent(self) -> list[bytes]:
        """The PDUs the protocol has written so far (delivering them first)."""
        settle(self.loop)
        data, offset, pdus = bytes(self.sink.data), 0, []
        while offset < len(data):
            length = parse_header(data, offset).length
            pdus.append(data[offset : offset + length])
            offset += length
        return pdus


def attach(loop: EventLoop, protocol: FrameProtocol) -> Side:
    return Side(loop, protocol)


def link(
    loop: EventLoop, a: FrameProtocol, b: FrameProtocol
) -> tuple[MemoryTransport, MemoryTransport]:
    return transport_pair(loop, a, b)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[EventLoop]:
    loop = EventLoop(clock=clock)
    yield loop
    loop.close()


def settle(loop: EventLoop, iterations: int = 10) -> None:
    """Run a few iterations without waiting: every in-memory hop takes one."""
    for _ in range(iterations):
        loop.run_once(0)


STEP_S = 0.25


def advance(loop: EventLoop, clock: FakeClock, seconds: float) -> None:
    """Move the fake clock forward in 0.25 s steps, letting the loop settle at each."""
    steps = round(seconds / STEP_S)
    assert steps * STEP_S == seconds
    for _ in range(steps):
        clock.advance(STEP_S)
        settle(loop)


Call = tuple[ImConnection, Any, int]


class Recorder:
    """A handler that records its calls."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def __call__(self, conn: ImConnection, message: Any, seq: int) -> None:
        self.calls.append((conn, message, seq))


class Refusals(ImConnection):
    """Records every bad_pdu reason (and keeps the default behaviour)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.refused: list[tuple[int, int, int, str]] = []
        self.kinds: list[str] = []

    def bad_pdu(
        self, service_id: int, command_id: int, seq: int, reason: str, kind: str = "refused"
    ) -> None:
        self.refused.append((service_id, command_id, seq, reason))
        self.kinds.append(kind)
        super().bad_pdu(service_id, command_id, seq, reason, kind)


class Closing(ImConnection):
    """Records on_closed."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.closed: list[BaseException | None] = []

    def on_closed(self, exc: BaseException | None) -> None:
        self.closed.append(exc)


def msg_data(**kw: Any) -> im_message_pb2.IMMsgData:
    fields: dict[str, Any] = {
        "from_user_id": 1,
        "to_session_id": 2,
        "msg_id": 3,
        "create_time": 4,
        "msg_type": base.MSG_TYPE_SINGLE_TEXT,
        "msg_data": b"hello",
    }
    fields.update(kw)
    return im_message_pb2.IMMsgData(**fields)


def login_req() -> im_login_pb2.IMLoginReq:
    return im_login_pb2.IMLoginReq(
        user_name="alice",
        password="5f4dcc3b5aa765d61d8327deb882cf99",
        online_status=base.USER_STATUS_ONLINE,
        client_type=base.CLIENT_TYPE_WINDOWS,
    )


def login_res(server_time: int = 77) -> im_login_pb2.IMLoginRes:
    return im_login_pb2.IMLoginRes(server_time=server_time, result_code=base.REFUSE_REASON_NONE)


def pdu_of(message: Message, seq: int = 0) -> bytes:
    """The PDU of ``message`` (serialized partially: tests send incomplete ones on purpose)."""
    return encode_pdu(*ids_of(message), seq, message.SerializePartialToString())


# -- dispatch --------------------------------------------------------------------------------


def test_dispatch_by_message_class_with_conn_message_seq(loop: EventLoop) -> None:
    by_class, by_id, by_deco = Recorder(), Recorder(), Recorder()
    dispatcher = Dispatcher[ImConnection]()
    dispatcher.register(im_message_pb2.IMMsgData, by_class)
    dispatcher.register(im_login_pb2.IMLoginReq, by_id)
    dispatcher.on(im_message_pb2.IMClientTimeReq)(by_deco)
    proto = ImConnection(dispatcher, policy=QUIET)
    stub = attach(loop, proto)

    message = msg_data()
    proto.data_received(
        pdu_of(message, seq=5)
        + pdu_of(login_req(), seq=6)
        + pdu_of(im_message_pb2.IMClientTimeReq())
    )
    assert by_class.calls == [(proto, message, 5)]
    assert type(by_class.calls[0][1]) is im_message_pb2.IMMsgData
    assert by_id.calls == [(proto, login_req(), 6)]
    assert by_deco.calls == [(proto, im_message_pb2.IMClientTimeReq(), 0)]
    assert proto.bad_pdus == 0
    assert stub.state is CONNECTED


def test_register_replaces_the_handler(loop: EventLoop) -> None:
    first, second = Recorder(), Recorder()
    dispatcher = Dispatcher[ImConnection]()
    dispatcher.register(im_message_pb2.IMMsgData, first)
    dispatcher.register(im_message_pb2.IMMsgData, second)
    proto = ImConnection(dispatcher, policy=QUIET)
    attach(loop, proto)
    proto.data_received(pdu_of(msg_data()))
    assert (len(first.calls), len(second.calls)) == (0, 1)


def test_unregistered_command_goes_to_the_default(loop: EventLoop) -> None:
    default, handled = Recorder(), Recorder()
    dispatcher = Dispatcher(default=default)
    dispatcher.register(im_message_pb2.IMMsgData, handled)
    proto = ImConnection(dispatcher, policy=QUIET)
    stub = attach(loop, proto)
    proto.data_received(pdu_of(login_req(), seq=9) + pdu_of(msg_data()))
    assert default.calls == [(proto, login_req(), 9)]
    assert len(handled.calls) == 1
    assert stub.state is CONNECTED


def test_unknown_command_without_default_is_logged_and_kept(
    loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    handled = Recorder()
    dispatcher = Dispatcher[ImConnection]()
    dispatcher.register(im_message_pb2.IMMsgData, handled)
    proto = Refusals(dispatcher, policy=QUIET)
    stub = attach(loop, proto)
    with caplog.at_level(logging.WARNING, logger="imreactor.pdu.imconn"):
        proto.data_received(pdu_of(login_req(), seq=4) + pdu_of(msg_data()))
    assert proto.refused == [(0x0001, 0x0103, 4, "unknown command 0x0103")]
    assert proto.bad_pdus == 1
    assert len(handled.calls) == 1  # the next PDU still served
    assert stub.state is CONNECTED
    messages = [r.getMessage() for r in caplog.records]
    assert any("command 0x0103 seq 4: unknown command 0x0103" in m for m in messages)


def test_command_without_a_message_class_is_refused(loop: EventLoop) -> None:
    default = Recorder()
    proto = Refusals(Dispatcher(default=default), policy=QUIET)
    stub = attach(loop, proto)
    proto.data_received(encode_pdu(0x0009, 0x0999, 1, b"\x08\x01"))
    # A known command id under the wrong service id has no message class either.
    proto.data_received(encode_pdu(0x0001, CID_MSG_DATA, 2, msg_data().SerializeToString()))
    assert default.calls == []
    assert proto.refused == [
        (0x0009, 0x0999, 1, "no message type for 0x0999"),
        (0x0001, CID_MSG_DATA, 2, "no message type for 0x0301"),
    ]
    assert stub.state is CONNECTED


# -- bad bodies ------------------------------------------------------------------------------


def test_undecodable_body_is_refused_and_the_connection_kept(
    loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    handled = Recorder()
    dispatcher = Dispatcher[ImConnection]()
    dispatcher.register(im_message_pb2.IMMsgData, handled)
    proto = Refusals(dispatcher, policy=QUIET)
    stub = attach(loop, proto)
    with caplog.at_level(logging.WARNING, logger="imreactor.pdu.imconn"):
        # Field 1 as a varint that never ends, then a length running past the body.
        proto.data_received(encode_pdu(SID_MSG, CID_MSG_DATA, 3, b"\x08\xff\xff\xff"))
        proto.data_received(encode_pdu(SID_MSG, CID_MSG_DATA, 4, b"\x32\x7fab"))
    assert handled.calls == []
    assert [r[:3] for r in proto.refused] == [
        (SID_MSG, CID_MSG_DATA, 3),
        (SID_MSG, CID_MSG_DATA, 4),
    ]
    assert all(r[3].startswith("undecodable IMMsgData: ") for r in proto.refused)
    assert len(caplog.records) == 2
    assert stub.state is CONNECTED
    proto.data_received(pdu_of(msg_data(), seq=5))
    assert [c[2] for c in handled.calls] == [5]


def test_missing_required_fields_are_refused_by_name(loop: EventLoop) -> None:
    handled = Recorder()
    dispatcher = Dispatcher[ImConnection]()
    dispatcher.register(im_login_pb2.IMLoginReq, handled)
    proto = Refusals(dispatcher, policy=QUIET)
    stub = attach(loop, proto)
    proto.data_received(pdu_of(im_login_pb2.IMLoginReq(user_name="alice"), seq=8))
    assert handled.calls == []
    assert proto.refused == [
        (
            0x0001,
            0x0103,
            8,
            "IMLoginReq lacks required fields: password, online_status, client_type",
        )
    ]
    assert proto.bad_pdus == 1
    assert stub.state is CONNECTED


def test_missing_required_field_of_a_nested_message_is_refused(loop: EventLoop) -> None:
    handled = Recorder()
    dispatcher = Dispatcher[ImConnection]()
    dispatcher.register(im_login_pb2.IMLoginRes, handled)
    proto = Refusals(dispatcher, policy=QUIET)
    attach(loop, proto)
    res = login_res()
    res.user_info.user_id = 1
    proto.data_received(pdu_of(res))
    assert handled.calls == []
    assert "user_info.user_gender" in proto.refused[0][3]


# -- heartbeats ------------------------------------------------------------------------------


def test_heartbeat_is_echoed_unchanged_when_the_policy_says_so(loop: EventLoop) -> None:
    default = Recorder()
    echo = ImConnection(Dispatcher(default=default), policy=LinkPolicy(None, None, True))
    quiet = ImConnection(Dispatcher(default=default), policy=QUIET)
    echo_stub, quiet_stub = attach(loop, echo), attach(loop, quiet)
    # Peers put other values in version, seq and reserved: the echo is the same bytes.
    odd = struct.pack(">IHHHHHH", 16, 6, 0, 7, 0x0701, 0x1234, 0x30)
    for proto in (echo, quiet):
        proto.data_received(HEARTBEAT_PDU + odd)
    assert echo_stub.sent() == [HEARTBEAT_PDU, odd]
    assert quiet_stub.sent() == []
    assert default.calls == []
    assert echo.bad_pdus == quiet.bad_pdus == 0


def test_heartbeat_sent_after_heartbeat_s_without_sending(
    loop: EventLoop, clock: FakeClock
) -> None:
    keepalive = Keepalive(loop, tick_s=1.0)
    proto = ImConnection(
        Dispatcher[ImConnection](), keepalive, LinkPolicy(heartbeat_s=5.0, timeout_s=None)
    )
    stub = attach(loop, proto)
    advance(loop, clock, 4.5)
    assert stub.sent() == []
    advance(loop, clock, 1.0)
    assert stub.sent() == [HEARTBEAT_PDU]  # at 5 s
    advance(loop, clock, 4.0)
    assert stub.sent() == [HEARTBEAT_PDU]
    advance(loop, clock, 1.0)
    assert stub.sent() == [HEARTBEAT_PDU, HEARTBEAT_PDU]


def test_no_heartbeat_while_traffic_flows(loop: EventLoop, clock: FakeClock) -> None:
    keepalive = Keepalive(loop, tick_s=1.0)
    proto = ImConnection(
        Dispatcher[ImConnection](), keepalive, LinkPolicy(heartbeat_s=5.0, timeout_s=None)
    )
    stub = attach(loop, proto)
    for _ in range(30):  # one message every 2 s for a minute
        proto.send(msg_data())
        advance(loop, clock, 2.0)
    assert HEARTBEAT_PDU not in stub.sent()
    assert len(stub.sent()) == 30
    advance(loop, clock, 6.0)  # silence: now it heartbeats
    assert stub.sent()[-1] == HEARTBEAT_PDU


def test_closed_after_timeout_s_without_receiving(
    loop: EventLoop, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    keepalive = Keepalive(loop, tick_s=1.0)
    proto = Closing(
        Dispatcher[ImConnection](), keepalive, LinkPolicy(heartbeat_s=None, timeout_s=30.0)
    )
    stub = attach(loop, proto)
    advance(loop, clock, 29.5)
    assert stub.state is CONNECTED
    with caplog.at_level(logging.INFO, logger="imreactor.pdu.imconn"):
        advance(loop, clock, 1.0)
    assert stub.state is CLOSED
    # Aborted with the reason: a peer silent this long gets no graceful close.
    assert [type(e) for e in proto.closed] == [TimeoutError]
    assert any("nothing received" in r.getMessage() for r in caplog.records)
    assert len(keepalive) == 0
    assert loop.pending_timers == 0  # the group's timer stops with its last connection


def test_not_closed_while_the_peer_sends(loop: EventLoop, clock: FakeClock) -> None:
    keepalive = Keepalive(loop, tick_s=1.0)
    proto = ImConnection(
        Dispatcher[ImConnection](), keepalive, LinkPolicy(heartbeat_s=None, timeout_s=30.0)
    )
    stub = attach(loop, proto)
    for _ in range(20):  # a heartbeat every 10 s for 200 s
        advance(loop, clock, 10.0)
        proto.data_received(HEARTBEAT_PDU)
    assert stub.state is CONNECTED
    advance(loop, clock, 31.0)
    assert stub.state is CLOSED


def test_one_keepalive_timer_for_a_group(loop: EventLoop, clock: FakeClock) -> None:
    keepalive = Keepalive(loop, tick_s=1.0)
    policy = LinkPolicy(heartbeat_s=5.0, timeout_s=None)
    protos = [ImConnection(Dispatcher[ImConnection](), keepalive, policy) for _ in range(50)]
    stubs = [attach(loop, p) for p in protos]
    assert len(keepalive) == 50
    assert loop.pending_timers == 1
    advance(loop, clock, 5.0)
    assert all(s.sent() == [HEARTBEAT_PDU] for s in stubs)
    for stub in stubs:
        stub.close()
    settle(loop)
    assert len(keepalive) == 0
    assert loop.pending_timers == 0


def test_heartbeats_keep_a_linked_pair_alive(loop: EventLoop, clock: FakeClock) -> None:
    keepalive = Keepalive(loop, tick_s=1.0)
    client = ImConnection(
        Dispatcher[ImConnection](), keepalive, LinkPolicy(heartbeat_s=5.0, timeout_s=None)
    )
    server = ImConnection(
        Dispatcher[ImConnection](),
        keepalive,
        LinkPolicy(heartbeat_s=None, timeout_s=8.0, echo_heartbeat=True),
    )
    cs, ss = link(loop, client, server)
    advance(loop, clock, 60.0)
    assert cs.state is CONNECTED and ss.state is CONNECTED
    # Each side heard from the other within the last heartbeat (the echoes arrive too).
    assert clock.now - client._last_recv <= 6.0
    assert clock.now - server._last_recv <= 6.0


# -- requests and responses ------------------------------------------------------------------


class Responses:
    def __init__(self) -> None:
        self.results: list[tuple[Any, BaseException | None]] = []

    def __call__(self, message: Any, exc: BaseException | None) -> None:
        self.results.append((message, exc))


def answering_server(loop: EventLoop) -> tuple[ImConnection, ImConnection]:
    """A client linked to a server that answers IMLoginReq with IMLoginRes(seq echoed)."""
    dispatcher = Dispatcher[ImConnection]()

    @dispatcher.on(im_login_pb2.IMLoginReq)
    def login(conn: ImConnection, message: im_login_pb2.IMLoginReq, seq: int) -> None:
        conn.send(login_res(server_time=seq), seq)

    client = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    server = ImConnection(dispatcher, policy=QUIET)
    link(loop, client, server)
    return client, server


def test_response_goes_to_the_request_callback(loop: EventLoop) -> None:
    client, _ = answering_server(loop)
    got = [Responses() for _ in range(3)]
    seqs = [client.request(login_req(), cb, response=im_login_pb2.IMLoginRes) for cb in got]
    assert seqs == [1, 2, 3]
    settle(loop)
    for seq, cb in zip(seqs, got, strict=True):
        assert cb.results == [(login_res(server_time=seq), None)]
    assert client._pending == {}
    assert loop.pending_timers == 0  # the timeouts were cancelled


def test_a_failing_response_callback_harms_neither_the_link_nor_other_requests(
    loop: EventLoop, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = answering_server(loop)

    def broken(message: object, exc: BaseException | None) -> None:
        raise RuntimeError("bug in a requester")

    after = Responses()
    with caplog.at_level(logging.ERROR, logger="imreactor.pdu.imconn"):
        client.request(login_req(), broken, response=im_login_pb2.IMLoginRes)  # answered
        client.request(login_req(), broken, response=im_message_pb2.IMMsgDataAck)  # wrong class
        seq = client.request(login_req(), after, response=im_login_pb2.IMLoginRes)
        settle(loop)
    assert after.results == [(login_res(server_time=seq), None)]
    assert client.conn.state is CONNECTED
    failures = [r for r in caplog.records if "response callback" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info is not None for r in failures)
    # A timed-out request's failing callback is logged the same way.
    silent_client = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    silent = ImConnection(Dispatcher(default=lambda c, m, s: None), policy=QUIET)
    cs, _ = link(loop, silent_client, silent)
    with caplog.at_level(logging.ERROR, logger="imreactor.pdu.imconn"):
        silent_client.request(login_req(), broken, timeout_s=1.0)
        advance(loop, clock, 1.5)
    assert len([r for r in caplog.records if "response callback" in r.getMessage()]) == 3
    assert cs.state is CONNECTED


def test_response_of_the_wrong_class_fails_the_request(loop: EventLoop) -> None:
    client, _ = answering_server(loop)
    got = Responses()
    client.request(login_req(), got, response=im_message_pb2.IMMsgDataAck)
    settle(loop)
    [(message, exc)] = got.results
    assert message is None
    assert isinstance(exc, ValueError)
    assert "expected IMMsgDataAck, got IMLoginRes" in str(exc)


def test_request_times_out_and_a_late_answer_is_logged_as_late(
    loop: EventLoop, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    late = Recorder()
    client_dispatch = Dispatcher[ImConnection]()
    client_dispatch.register(im_login_pb2.IMLoginRes, late)
    client = Refusals(client_dispatch, policy=QUIET)
    silent = ImConnection(Dispatcher(default=lambda c, m, s: None), policy=QUIET)
    cs, _ = link(loop, client, silent)
    got = Responses()
    seq = client.request(login_req(), got, timeout_s=3.0, response=im_login_pb2.IMLoginRes)
    advance(loop, clock, 2.75)
    assert got.results == []
    advance(loop, clock, 0.5)
    [(message, exc)] = got.results
    assert message is None
    assert isinstance(exc, TimeoutError)
    assert f"no response within 3 s (seq {seq})" in str(exc)
    # While its answer may still come, the seq is not given to a new request.
    assert client.request(login_req(), Responses(), timeout_s=None) != seq
    with caplog.at_level(logging.INFO, logger="imreactor.pdu.imconn"):
        silent.send(login_res(), seq)
        settle(loop)
    assert len(got.results) == 1  # exactly once
    assert late.calls == [], "a late answer was dispatched as a new command"
    assert client.refused == [], "a late answer was refused as an unknown command"
    assert client.late_answers == 1
    assert any("late answer CID_LOGIN_RES_USERLOGIN" in r.getMessage() for r in caplog.records)
    # Only once: a second PDU with that seq is an ordinary one again.
    silent.send(login_res(), seq)
    settle(loop)
    assert late.calls == [(client, login_res(), seq)]
    assert cs.state is CONNECTED


def test_a_flood_of_late_answers_is_one_line_and_a_count(
    loop: EventLoop, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A peer that fell behind answers its whole backlog after the requests timed out.
    client = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    silent = ImConnection(Dispatcher(default=lambda c, m, s: None), policy=QUIET)
    link(loop, client, silent)
    seqs = [client.request(login_req(), Responses(), timeout_s=1.0) for _ in range(50)]
    advance(loop, clock, 1.5)
    with caplog.at_level(logging.INFO, logger="imreactor.pdu.imconn"):
        for seq in seqs:
            silent.send(login_res(), seq)
        settle(loop)
        assert client.late_answers == 50  # every one counted ...
        late = [r.getMessage() for r in caplog.records if "late answer" in r.getMessage()]
        assert len(late) == 1, late  # ... one logged, with its reason
        assert f"late answer CID_LOGIN_RES_USERLOGIN (seq {seqs[0]})" in late[0]
        assert "after its request timed out" in late[0]
        advance(loop, clock, 11.0)  # the default window (log_window_s) ends
    late = [r.getMessage() for r in caplog.records if "late answer" in r.getMessage()]
    assert late[1:] == ["late answer CID_LOGIN_RES_USERLOGIN: 49 more in the last 10 s, not logged"]


def test_a_late_seq_only_swallows_the_expected_answer(loop: EventLoop, clock: FakeClock) -> None:
    pushes = Recorder()
    client = ImConnection(Dispatcher(default=pushes), policy=QUIET)
    silent = ImConnection(Dispatcher(default=lambda c, m, s: None), policy=QUIET)
    link(loop, client, silent)
    seq = client.request(login_req(), Responses(), timeout_s=1.0, response=im_login_pb2.IMLoginRes)
    advance(loop, clock, 1.5)
    # Another command that happens to carry the seq is the peer's own: dispatched.
    silent.send(msg_data(), seq)
    settle(loop)
    assert [(m, s) for _, m, s in pushes.calls] == [(msg_data(), seq)]
    assert client.late_answers == 0


def test_late_seqs_kept_are_bounded(loop: EventLoop, clock: FakeClock) -> None:
    client = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    attach(loop, client)
    for _ in range(LATE_SEQS_KEPT + 10):
        client.request(login_req(), Responses(), timeout_s=1.0)
    advance(loop, clock, 1.5)
    assert client._late is not None and len(client._late) == LATE_SEQS_KEPT
    assert client._pending == {}


def test_requests_carry_their_budget_only_where_the_policy_says(loop: EventLoop) -> None:
    plain = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    budgeted = ImConnection(Dispatcher[ImConnection](), policy=replace(QUIET, carry_budget=True))
    plain_stub, budget_stub = attach(loop, plain), attach(loop, budgeted)
    plain.request(login_req(), Responses(), timeout_s=2.5)
    budgeted.request(login_req(), Responses(), timeout_s=2.5)
    budgeted.request(login_req(), Responses(), timeout_s=None)
    budgeted.request(login_req(), Responses(), timeout_s=100.0)  # does not fit: no limit
    budgeted.send(login_res(), 7)  # not a request: never a budget
    [p] = plain_stub.sent()
    assert parse_header(p).reserved == 0
    assert [budget_ms(w) for w in budget_stub.sent()] == [2500, 0, 0, 0]
    assert SERVER_LINK.carry_budget and not CLIENT_SIDE.carry_budget


def test_closing_fails_every_pending_request(loop: EventLoop, clock: FakeClock) -> None:
    client = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    stub = attach(loop, client)
    got = [Responses() for _ in range(5)]
    for i, cb in enumerate(got):
        client.request(login_req(), cb, timeout_s=None if i % 2 else 10.0)
    stub.close()
    settle(loop)
    for cb in got:
        [(message, exc)] = cb.results
        assert message is None
        assert isinstance(exc, ConnectionError)
    assert loop.pending_timers == 0  # their timeouts were cancelled
    advance(loop, clock, 20.0)
    assert all(len(cb.results) == 1 for cb in got)


def test_seq_is_never_0_wraps_and_skips_seqs_in_use(loop: EventLoop) -> None:
    client = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    stub = attach(loop, client)
    got = Responses()
    seqs = [client.request(login_req(), got, timeout_s=None) for _ in range(0xFFFF)]
    assert seqs == list(range(1, 0x10000))
    assert [parse_header(w).seq for w in stub.sent()[:3]] == [1, 2, 3]
    with pytest.raises(RuntimeError):
        client.request(login_req(), got, timeout_s=None)
    # Free seqs 100 and 5 (in that order): the next requests wrap past 0 and take 5, then 100.
    client.data_received(pdu_of(login_res(), seq=100) + pdu_of(login_res(), seq=5))
    assert len(got.results) == 2
    assert client.request(login_req(), got, timeout_s=None) == 5
    assert client.request(login_req(), got, timeout_s=None) == 100
    with pytest.raises(RuntimeError):
        client.request(login_req(), got, timeout_s=None)


def test_seq_skips_in_use_after_wrapping(loop: EventLoop) -> None:
    client = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    attach(loop, client)
    got, stuck = Responses(), Responses()
    assert [client.request(login_req(), stuck, timeout_s=None) for _ in range(3)] == [1, 2, 3]
    client.data_received(pdu_of(login_res(), seq=1) + pdu_of(login_res(), seq=2))
    assert len(stuck.results) == 2  # seq 3 stays outstanding
    seqs = []
    for _ in range(0xFFFF):
        seq = client.request(login_req(), got, timeout_s=None)
        seqs.append(seq)
        client.data_received(pdu_of(login_res(), seq=seq))  # answered at once
    assert 0 not in seqs
    assert 3 not in seqs
    assert seqs[:2] == [4, 5]
    assert seqs[-4:] == [0xFFFF, 1, 2, 4]
    assert len(got.results) == 0xFFFF
    assert len(stuck.results) == 2


def test_unserializable_request_raises_and_leaves_nothing_pending(
    loop: EventLoop, clock: FakeClock
) -> None:
    client = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    stub = attach(loop, client)
    got = Responses()
    with pytest.raises(EncodeError):
        client.request(im_login_pb2.IMLoginReq(user_name="alice"), got, timeout_s=1.0)
    assert client._pending == {}
    assert stub.sent() == []
    advance(loop, clock, 5.0)
    assert got.results == []  # the caller had the exception; no callback as well


# -- relaying --------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


unknown_field = st.one_of(
    st.tuples(st.integers(21, 5000), st.integers(0, 2**64 - 1)).map(
        lambda f: varint(f[0] << 3) + varint(f[1])
    ),
    st.tuples(st.integers(21, 5000), st.binary(max_size=30)).map(
        lambda f: varint(f[0] << 3 | 2) + varint(len(f[1])) + f[1]
    ),
)
known_fields = st.fixed_dictionaries(
    {},
    optional={
        "from_user_id": st.integers(0, 2**32 - 1),
        "to_session_id": st.integers(0, 2**32 - 1),
        "msg_id": st.integers(0, 2**32 - 1),
        "create_time": st.integers(0, 2**32 - 1),
        "msg_type": st.sampled_from([base.MSG_TYPE_SINGLE_TEXT, base.MSG_TYPE_GROUP_AUDIO]),
        "msg_data": st.binary(max_size=40),
        "attach_data": st.binary(max_size=40),
    },
)


@given(fields=known_fields, unknown=st.lists(unknown_field, max_size=5), seq=st.integers(0, 0xFFFF))
def test_partial_relay_keeps_unknown_and_missing_fields(
    fields: dict[str, Any], unknown: list[bytes], seq: int
) -> None:
    body = im_message_pb2.IMMsgData(**fields).SerializePartialToString() + b"".join(unknown)
    loop = EventLoop()
    try:
        relay = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
        stub = attach(loop, relay)
        message = im_message_pb2.IMMsgData()
        message.ParseFromString(body)
        relay.send(message, seq, partial=True)
        assert stub.sent() == [encode_pdu(SID_MSG, CID_MSG_DATA, seq, body)]
    finally:
        loop.close()


def test_relay_through_a_handler_keeps_unknown_fields(loop: EventLoop) -> None:
    unknown = varint(99 << 3) + varint(12345) + varint(100 << 3 | 2) + b"\x03new"
    body = msg_data().SerializeToString() + unknown
    dispatcher = Dispatcher[ImConnection]()

    @dispatcher.on(im_message_pb2.IMMsgData)
    def relay(conn: ImConnection, message: im_message_pb2.IMMsgData, seq: int) -> None:
        conn.send(message, seq, partial=True)

    proto = ImConnection(dispatcher, policy=QUIET)
    stub = attach(loop, proto)
    frame = encode_pdu(SID_MSG, CID_MSG_DATA, 11, body)
    proto.data_received(frame)
    assert stub.sent() == [frame]


def test_full_send_refuses_missing_required_fields(loop: EventLoop) -> None:
    proto = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    stub = attach(loop, proto)
    incomplete = im_message_pb2.IMMsgData(from_user_id=1)
    with pytest.raises(EncodeError):
        proto.send(incomplete)
    proto.send(incomplete, partial=True)
    assert stub.sent() == [encode_pdu(SID_MSG, CID_MSG_DATA, 0, b"\x08\x01")]


# -- real sockets ----------------------------------------------------------------------------


def run_until(loop: EventLoop, done: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Run the loop until ``done()``; returns the seconds it took. Fails at the deadline."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout_s:
            raise AssertionError("condition not reached before the deadline")
        loop.run_once(0.02)
    return time.monotonic() - start


class RawClient(FrameProtocol):
    """A peer that speaks bytes: records frames and the end of the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []
        self.lost: list[BaseException | None] = []

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Frame) -> None:
        self.frames.append(bytes(frame))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


@pytest.fixture
def real_loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


def serve(loop: EventLoop, factory: Callable[[], FrameProtocol]) -> Server:
    return loop.listen("127.0.0.1", 0, factory)


def test_dispatch_and_response_over_sockets(real_loop: EventLoop) -> None:
    dispatcher = Dispatcher[ImConnection]()
    served: list[tuple[Any, int]] = []

    @dispatcher.on(im_login_pb2.IMLoginReq)
    def login(conn: ImConnection, message: im_login_pb2.IMLoginReq, seq: int) -> None:
        served.append((message, seq))
        conn.send(login_res(server_time=seq), seq)

    @dispatcher.on(im_message_pb2.IMMsgData)
    def data(conn: ImConnection, message: im_message_pb2.IMMsgData, seq: int) -> None:
        served.append((message, seq))

    server = serve(real_loop, lambda: ImConnection(dispatcher, policy=QUIET))
    client = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    conn = real_loop.connect("127.0.0.1", server.port, client)
    try:
        run_until(real_loop, lambda: conn.state is CONNECTED)
        got = Responses()
        client.send(msg_data(), 0)
        seq = client.request(login_req(), got, timeout_s=5.0, response=im_login_pb2.IMLoginRes)
        run_until(real_loop, lambda: bool(got.results))
        assert served == [(msg_data(), 0), (login_req(), seq)]
        assert got.results == [(login_res(server_time=seq), None)]
    finally:
        conn.abort()
        server.close()
        real_loop.run_once(0)


def test_heartbeat_echo_over_sockets(real_loop: EventLoop) -> None:
    policy = LinkPolicy(heartbeat_s=None, timeout_s=None, echo_heartbeat=True)
    server = serve(real_loop, lambda: ImConnection(Dispatcher[ImConnection](), policy=policy))
    client = RawClient()
    conn = real_loop.connect("127.0.0.1", server.port, client)
    try:
        odd = struct.pack(">IHHHHHH", 16, 13, 0, 7, 0x0701, 0xABCD, 0x30)
        conn.write(HEARTBEAT_PDU + odd)
        run_until(real_loop, lambda: len(client.frames) == 2)
        assert client.frames == [HEARTBEAT_PDU, odd]
    finally:
        conn.abort()
        server.close()
        real_loop.run_once(0)


def test_real_timeout_and_heartbeats_that_prevent_it(real_loop: EventLoop) -> None:
    keepalive = Keepalive(real_loop, tick_s=0.1)
    policy = LinkPolicy(heartbeat_s=None, timeout_s=0.3)
    accepted: list[Closing] = []

    def factory() -> Closing:
        proto = Closing(Dispatcher[ImConnection](), keepalive, policy)
        accepted.append(proto)
        return proto

    server = serve(real_loop, factory)
    client_keepalive = Keepalive(real_loop, tick_s=0.1)
    silent = RawClient()
    chatty = ImConnection(
        Dispatcher[ImConnection](), client_keepalive, LinkPolicy(heartbeat_s=0.1, timeout_s=None)
    )
    conns = [
        real_loop.connect("127.0.0.1", server.port, silent),
        real_loop.connect("127.0.0.1", server.port, chatty),
    ]
    try:
        run_until(real_loop, lambda: len(accepted) == 2)
        took = run_until(
            real_loop, lambda: bool(silent.lost) and any(p.closed for p in accepted), timeout_s=3.0
        )
        assert 0.2 <= took <= 1.5, took
        assert len([p for p in accepted if p.closed]) == 1
        # The one that heartbeats every 0.1 s outlives several timeouts.
        deadline = time.monotonic() + 1.0
        run_until(real_loop, lambda: time.monotonic() > deadline)
        assert conns[1].state is CONNECTED
        assert len([p for p in accepted if p.closed]) == 1
        assert len(keepalive) == 1
    finally:
        for conn in conns:
            conn.abort()
        server.close()
        run_until(real_loop, lambda: len(keepalive) == 0 and len(client_keepalive) == 0)


def test_header_of_a_sent_message(loop: EventLoop) -> None:
    proto = ImConnection(Dispatcher[ImConnection](), policy=QUIET)
    stub = attach(loop, proto)
    proto.send(msg_data(), 0x4242)
    [pdu] = stub.sent()
    header = parse_header(pdu)
    assert (header.length, header.version, header.service_id, header.command_id, header.seq) == (
        len(pdu),
        1,
        SID_MSG,
        CID_MSG_DATA,
        0x4242,
    )
    assert im_message_pb2.IMMsgData.FromString(pdu[HEADER_LEN:]) == msg_data()


def test_traffic_counts_pdus_by_command_and_refusals_by_kind(loop: EventLoop) -> None:
    received, sent, errors = (
        dict(TRAFFIC.received),
        dict(TRAFFIC.sent),
        dict(TRAFFIC.errors),
    )
    dispatcher = Dispatcher[ImConnection]()
    dispatcher.register(im_message_pb2.IMMsgData, lambda conn, msg, seq: conn.send(msg, seq))
    proto = Refusals(dispatcher, policy=QUIET)
    attach(loop, proto)
    proto.data_received(pdu_of(msg_data(), 1) + pdu_of(msg_data(), 2))
    proto.data_received(pdu_of(login_req(), seq=3))  # no handler
    proto.data_received(encode_pdu(SID_MSG, CID_MSG_DATA, 4, b"\x08\xff\xff\xff"))

    def delta(now: dict[Any, int], before: dict[Any, int], key: Any) -> int:
        return now.get(key, 0) - before.get(key, 0)

    assert delta(TRAFFIC.received, received, CID_MSG_DATA) == 3
    assert delta(TRAFFIC.received, received, 0x0103) == 1
    assert delta(TRAFFIC.sent, sent, CID_MSG_DATA) == 2  # the two echoes
    assert proto.kinds == ["unknown_command", "undecodable"]
    assert delta(TRAFFIC.errors, errors, "unknown_command") == 1
    assert delta(TRAFFIC.errors, errors, "undecodable") == 1
