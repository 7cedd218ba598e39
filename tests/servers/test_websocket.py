"""Browsers' way in: msg_server's ws_port and wss_port through the real suite, the wsURL
and wssURL in login_server's answer, a WebSocket client and a TCP client chatting both
ways, and bad input on the WebSocket port closing only that connection."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from wsclient import WsClient

from imreactor.config import ConfigError
from imreactor.pdu.header import HEADER_LEN, parse_header
from imreactor.pdu.imconn import encode_message
from imreactor.pdu.password import password_digest
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.pdu.registry import message_class
from imreactor.servers.msg.config import MsgConfig
from imreactor.servers.suite import DEMO_PASSWORD

from .conftest import RunningSuite, exchange, free_ports, start_suite

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ws_suite(tmp_path: Path) -> Iterator[RunningSuite]:
    ws, wss = free_ports(2)
    overrides = {"msg": {"ws_port": ws, "wss_port": wss, "ws_origins": ["http://chat.example"]}}
    suite = start_suite(
        tmp_path / "suite", f"sqlite:///{tmp_path / 'im.db'}", tls=True, overrides=overrides
    )
    yield suite
    suite.stop()


def _answer(suite: RunningSuite) -> dict[str, Any]:
    url = f"http://127.0.0.1:{suite.layout.http_port}/msg_server"
    with urllib.request.urlopen(url, timeout=10) as rsp:
        body: dict[str, Any] = json.loads(rsp.read())
    return body


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def _decode(message: bytes) -> tuple[Message, int]:
    header = parse_header(message)
    assert header.length == len(message)  # one PDU per message, both ways
    cls = message_class(header.service_id, header.command_id)
    assert cls is not None
    return cls.FromString(message[HEADER_LEN:]), header.seq


def _next(client: WsClient, cls: type[Message], start: int = 0) -> tuple[Message, int]:
    """The first message of class ``cls`` from index ``start`` on, waiting for it."""

    def found() -> tuple[Message, int] | None:
        for raw in client.messages[start:]:
            msg, seq = _decode(raw)
            if isinstance(msg, cls):
                return msg, seq
        return None

    client.wait(lambda: found() is not None or client.eof)
    result = found()
    assert result is not None, f"no {cls.__name__}; closed with {client.close_code}"
    return result


def _ws_login(client: WsClient, name: str) -> login_pb.IMLoginRes:
    client.wait(lambda: client.response is not None)
    assert client.open, client.raw_response
    login = login_pb.IMLoginReq(
        user_name=name,
        password=password_digest(DEMO_PASSWORD),
        online_status=base.USER_STATUS_ONLINE,
        client_type=base.CLIENT_TYPE_WINDOWS,
        client_version="ws-test",
    )
    deadline = time.monotonic() + 10
    while True:
        start = len(client.messages)
        client.send(encode_message(login, 1))
        res, seq = _next(client, login_pb.IMLoginRes, start)
        assert isinstance(res, login_pb.IMLoginRes) and seq == 1
        if res.result_code not in (3, 4, 5) or time.monotonic() > deadline:
            return res
        time.sleep(0.1)  # msg_server still linking to its peers


def test_login_server_offers_ws_and_wss_urls_after_every_original_key(
    ws_suite: RunningSuite,
) -> None:
    body = _answer(ws_suite)
    keys = list(body)
    original = ["code", "msg", "priorIP", "backupIP", "port", "msfsPrior", "msfsBackup"]
    assert keys[: len(original) + 1] == [*original, "discovery"]
    assert keys[-2:] == ["wsURL", "wssURL"]
    assert body["wsURL"] == f"ws://127.0.0.1:{_port_of(body['wsURL'])}/"
    assert body["wssURL"].startswith("wss://127.0.0.1:")


def _chat(suite: RunningSuite, client: WsClient) -> None:
    res = _ws_login(client, "alice")
    assert res.result_code == 0
    alice_id = res.user_info.user_id
    bob = suite.login("bob")
    # Browser -> TCP: stored, acked, delivered.
    start = len(client.messages)
    data = msg_pb.IMMsgData(
        from_user_id=alice_id,
        to_session_id=bob.user_id,
        msg_id=0,
        create_time=int(time.time()),
        msg_type=base.MSG_TYPE_SINGLE_TEXT,
        msg_data=b"hello from a browser",
    )
    client.send(encode_message(data, 2))
    ack, seq = _next(client, msg_pb.IMMsgDataAck, start)
    assert isinstance(ack, msg_pb.IMMsgDataAck) and seq == 2 and ack.msg_id > 0
    got = bob.wait_for(msg_pb.IMMsgData, 10)
    assert got.msg_data == b"hello from a browser" and got.from_user_id == alice_id
    # TCP -> browser.
    start = len(client.messages)
    bob.send_message(alice_id, b"hello from a terminal")
    pushed, _ = _next(client, msg_pb.IMMsgData, start)
    assert isinstance(pushed, msg_pb.IMMsgData)
    assert pushed.msg_data == b"hello from a terminal" and pushed.from_user_id == bob.user_id


def test_ws_client_and_tcp_client_chat_both_ways(ws_suite: RunningSuite) -> None:
    port = _port_of(_answer(ws_suite)["wsURL"])
    _chat(ws_suite, WsClient(port, origin="http://chat.example"))


def test_wss_client_and_tcp_client_chat_both_ways(ws_suite: RunningSuite) -> None:
    port = _port_of(_answer(ws_suite)["wssURL"])
    context = ssl.create_default_context(cafile=str(ws_suite.layout.client_ca))
    _chat(ws_suite, WsClient(port, context=context))


def test_bad_input_on_the_ws_port_closes_only_that_connection(ws_suite: RunningSuite) -> None:
    port = _port_of(_answer(ws_suite)["wsURL"])
    wrong_origin = WsClient(port, origin="https://evil.example")
    wrong_origin.wait(lambda: wrong_origin.eof)
    assert wrong_origin.response is not None and wrong_origin.response.status_code == 403

    plain_http = WsClient(port, upgrade=False)
    plain_http.send_raw(b"GET /msg_server HTTP/1.1\r\nHost: x\r\n\r\n")
    plain_http.wait(lambda: plain_http.eof)

    text = WsClient(port)
    text.wait(lambda: text.open)
    text.send_text("IMLoginReq")
    text.wait(lambda: text.eof)
    assert text.close_code == 1003

    split = WsClient(port)
    whole = encode_message(login_pb.IMLoginReq(user_name="a", password="b"), 1, partial=True)
    split.wait(lambda: split.open)
    split.send(whole[:10])
    split.wait(lambda: split.eof)
    assert split.close_code == 1007

    packed = WsClient(port)
    packed.wait(lambda: packed.open)
    packed.send(whole + whole)
    packed.wait(lambda: packed.eof)
    assert packed.close_code == 1007

    oversize = WsClient(port)
    oversize.wait(lambda: oversize.open)
    oversize.send(bytes((1 << 20) + 1))
    oversize.wait(lambda: oversize.eof)
    assert oversize.close_code == 1009

    # Everyone else is still served, over WebSocket and TCP.
    good = WsClient(port)
    assert _ws_login(good, "carol").result_code == 0
    assert ws_suite.login("dave").user_id
    log = ws_suite.log_text("msg_server")
    assert "refused (403)" in log and "text messages are not accepted" in log
    assert "carries a PDU header saying" in log


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"ws_origins": ["chat.example"]}, "is not an origin"),
        ({"ws_origins": ["https://chat.example/"]}, "is not an origin"),
        ({"ws_origins": ["ftp://chat.example"]}, "is not an origin"),
        ({"ws_port": 70000}, "ws_port"),
        ({"wss_port": 9443}, "wss_port: needs cert_file"),
    ],
)
def test_malformed_ws_config_is_refused(values: dict[str, Any], error: str) -> None:
    from imreactor.config import from_mapping

    with pytest.raises(ConfigError, match=error):
        from_mapping(MsgConfig, values, "msg")


def test_pongs_keep_a_quiet_browser_alive_past_the_client_timeout(tmp_path: Path) -> None:
    ws = free_ports(1)[0]
    overrides = {"msg": {"ws_port": ws, "client_timeout_s": 2.0}}
    suite = start_suite(tmp_path / "suite", f"sqlite:///{tmp_path / 'im.db'}", overrides=overrides)
    try:
        browser = WsClient(ws)
        assert _ws_login(browser, "alice").result_code == 0
        terminal = suite.login("bob")  # its heartbeat comes every 30 s: too late here
        # Nothing but the browser's own pong answers for twice the timeout.
        deadline = time.monotonic() + 4.5
        browser.wait(lambda: browser.eof or time.monotonic() > deadline, timeout_s=10)
        assert not browser.eof and browser.close_code is None
        pings = [f for f in browser.frames if f.opcode.name == "PING"]
        assert len(pings) >= 4  # every client_timeout_s / 4 of silence
        assert not terminal.is_connected  # the same timeout closed the silent TCP client
    finally:
        suite.stop()


_KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
_UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"


#: Upgrade requests a browser would never send, each to be refused on its own connection.
BAD_HANDSHAKES = {
    "no key": b"GET / HTTP/1.1\r\nHost: x\r\n" + _UPGRADE + b"Sec-WebSocket-Version: 13\r\n\r\n",
    "old version": b"GET / HTTP/1.1\r\nHost: x\r\n"
    + _UPGRADE
    + _KEY
    + b"Sec-WebSocket-Version: 8\r\n\r\n",
    "bad key": b"GET / HTTP/1.1\r\nHost: x\r\n"
    + _UPGRADE
    + b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "post": b"POST / HTTP/1.1\r\nHost: x\r\n"
    + _UPGRADE
    + _KEY
    + b"Sec-WebSocket-Version: 13\r\n\r\n",
    "not http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n",
    "huge head": b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
}


def test_a_bad_handshake_on_the_ws_port_is_refused_alone(ws_suite: RunningSuite) -> None:
    port = _port_of(_answer(ws_suite)["wsURL"])
    good = WsClient(port)
    assert _ws_login(good, "carol").result_code == 0
    for name, request in BAD_HANDSHAKES.items():
        answer = exchange(port, request)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), (name, answer[:200])
    # The page that was there, and a new one, are still served.
    good.send(encode_message(msg_pb.IMClientTimeReq(), 7))
    assert _next(good, msg_pb.IMClientTimeRsp)[1] == 7
    assert _ws_login(WsClient(port), "dave").result_code == 0


def test_fragmented_messages_are_joined_and_an_oversize_one_is_refused(
    ws_suite: RunningSuite,
) -> None:
    port = _port_of(_answer(ws_suite)["wsURL"])
    # A whole PDU in three fragments is one message: the login it carries is served.
    fragmented = WsClient(port)
    fragmented.wait(lambda: fragmented.open)
    login = login_pb.IMLoginReq(
        user_name="bob",
        password=password_digest(DEMO_PASSWORD),
        online_status=base.USER_STATUS_ONLINE,
        client_type=base.CLIENT_TYPE_WEB,
    )
    pdu = encode_message(login, 9)
    fragmented.send_fragments(pdu[:5], pdu[5:20], pdu[20:])
    res, seq = _next(fragmented, login_pb.IMLoginRes)
    assert isinstance(res, login_pb.IMLoginRes) and seq == 9
    # Small fragments that add up past the PDU limit: refused as they arrive (1009).
    oversize = WsClient(port)
    oversize.wait(lambda: oversize.open)
    piece = bytes(64 * 1024)
    oversize.send_fragments(*([piece] * 17))
    oversize.wait(lambda: oversize.eof)
    assert oversize.close_code == 1009
    assert not fragmented.eof  # the other connection goes on
    fragmented.send(encode_message(msg_pb.IMClientTimeReq(), 10))
    assert _next(fragmented, msg_pb.IMClientTimeRsp)[1] == 10


def test_a_browser_that_stops_reading_is_closed_alone(ws_suite: RunningSuite) -> None:
    port = _port_of(_answer(ws_suite)["wsURL"])
    stalled = WsClient(port)
    stalled_id = _ws_login(stalled, "alice").user_info.user_id
    other = WsClient(port)
    assert _ws_login(other, "carol").result_code == 0
    bob = ws_suite.login("bob")
    # Bob writes to Alice, whose page reads nothing more: her output queue on msg_server
    # passes its cap (16 MiB, plus what the kernel buffers), and only her connection ends.
    text = "x" * (700 * 1024)
    for _ in range(60):
        bob.send_text(stalled_id, text)
        if "bytes of output queued (max_buffer" in ws_suite.log_text("msg_server"):
            break
    else:
        raise AssertionError("msg_server never gave up on the stalled page")
    stalled.wait(lambda: stalled.eof, timeout_s=30)
    # Bob, Carol's page and a new page are all still served.
    assert bob.send_text(stalled_id, "after").msg_id > 0
    other.send(encode_message(msg_pb.IMClientTimeReq(), 5))
    assert _next(other, msg_pb.IMClientTimeRsp)[1] == 5
    assert _ws_login(WsClient(port), "dave").result_code == 0
