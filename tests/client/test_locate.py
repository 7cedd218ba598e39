"""Reading login_server's ``/msg_server`` answer: every usable and unusable shape."""

from __future__ import annotations

from typing import Any

import pytest

from imreactor.client.locate import (
    LocateError,
    MsgServer,
    msg_server_address,
    msg_server_ws_address,
)

URL = "http://127.0.0.1:8080"
OK: dict[str, Any] = {
    "code": 0,
    "msg": "",
    "priorIP": "10.0.0.2",
    "backupIP": "10.0.0.3",
    "port": "8000",
    "msfsPrior": "",
    "msfsBackup": "",
    "discovery": "",
}


def test_a_teamtalk_answer_gives_prior_ip_and_port() -> None:
    assert msg_server_address(OK, URL) == ("10.0.0.2", 8000)
    assert msg_server_address({**OK, "tlsPort": "8443"}, URL) == ("10.0.0.2", 8000)
    assert msg_server_address({**OK, "tlsPort": "8443"}, URL, tls=True) == ("10.0.0.2", 8443)


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        ({"code": 1, "msg": "没有msg_server"}, 1, "refused: no msg_server is up (code 1)"),
        ({"code": 2, "msg": "负载过高"}, 2, "refused: every msg_server is full (code 2)"),
        ({"code": 9, "msg": "later"}, 9, "refused: later (code 9)"),
        ({"code": "0"}, -1, "refused: None (code 0)"),
        ({"msg": "no code"}, -1, "refused: no code (code None)"),
    ],
)
def test_refusals_carry_their_code(answer: dict[str, Any], code: int, message: str) -> None:
    with pytest.raises(LocateError) as caught:
        msg_server_address(answer, URL)
    assert caught.value.code == code
    assert str(caught.value) == f"login_server at {URL} {message}"


@pytest.mark.parametrize(
    ("answer", "tls", "message"),
    [
        ([1, 2], False, "bad answer from login_server at URL: [1, 2]"),
        ("text", False, "bad answer from login_server at URL: 'text'"),
        ({**OK, "port": "eighty"}, False, "bad answer from login_server at URL: "),
        ({k: v for k, v in OK.items() if k != "port"}, False, "bad answer from login_server"),
        ({k: v for k, v in OK.items() if k != "priorIP"}, False, "bad answer from login_server"),
        ({**OK, "port": "0"}, False, "bad answer from login_server at URL: port 0"),
        ({**OK, "port": "70000"}, False, "bad answer from login_server at URL: port 70000"),
        (OK, True, "login_server at URL offers msg_server 10.0.0.2 without TLS"),
        ({**OK, "tlsPort": None}, True, "bad answer from login_server at URL: "),
    ],
)
def test_unusable_answers_are_one_line_without_code(
    answer: object, tls: bool, message: str
) -> None:
    with pytest.raises(LocateError) as caught:
        msg_server_address(answer, URL, tls=tls)
    assert caught.value.code is None
    assert str(caught.value).startswith(message.replace("URL", URL))
    assert "\n" not in str(caught.value)


def test_a_websocket_client_reads_ws_url_or_wss_url() -> None:
    answer = {**OK, "wsURL": "ws://10.0.0.2:8800/", "wssURL": "wss://chat.example:8801/im?v=1"}
    assert msg_server_ws_address(answer, URL) == MsgServer("10.0.0.2", 8800, "/")
    assert msg_server_ws_address(answer, URL, tls=True) == MsgServer(
        "chat.example", 8801, "/im?v=1"
    )
    assert msg_server_ws_address({**OK, "wsURL": "ws://[::1]:8800"}, URL) == MsgServer(
        "::1", 8800, "/"
    )


@pytest.mark.parametrize(
    ("answer", "tls", "message"),
    [
        (OK, False, "login_server at {url} offers msg_server 10.0.0.2 without wsURL"),
        (
            {**OK, "wsURL": "ws://h:1/"},
            True,
            "login_server at {url} offers msg_server 10.0.0.2 without wssURL",
        ),
        (
            {**OK, "wsURL": "wss://h:1/"},
            False,
            "bad answer from login_server at {url}: wsURL 'wss://h:1/'",
        ),
        ({**OK, "wsURL": "ws://h/"}, False, "bad answer from login_server at {url}: wsURL"),
        ({**OK, "wsURL": "ws://:8800/"}, False, "bad answer from login_server at {url}: wsURL"),
        ({**OK, "wsURL": "ws://h:99999/"}, False, "bad answer from login_server at {url}: wsURL"),
        ({**OK, "wsURL": "ws://[::1/"}, False, "bad answer from login_server at {url}: wsURL"),
        ({**OK, "wsURL": 8800}, False, "bad answer from login_server at {url}: wsURL 8800"),
        ({"code": 1}, False, "login_server at {url} refused"),
    ],
)
def test_unusable_websocket_answers_are_one_line(answer: object, tls: bool, message: str) -> None:
    with pytest.raises(LocateError) as caught:
        msg_server_ws_address(answer, URL, tls=tls)
    assert str(caught.value).startswith(message.format(url=URL))
    assert "\n" not in str(caught.value)
