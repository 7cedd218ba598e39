"""login_server as a real process: the HTTP answer, least-loaded choice, bad requests.

msg_servers are played by plain sockets that speak the registration protocol
(``IMMsgServInfo``, ``IMUserCntUpdate``) to the real login_server.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from imreactor.config import dump
from imreactor.pdu.header import encode_pdu
from imreactor.pdu.proto import im_server_pb2 as server_pb
from imreactor.pdu.registry import ids_of
from imreactor.servers.suite import start_child, stop_children

from .conftest import RunningSuite, free_ports, scrape


class Login:
    def __init__(self, http: int, reg: int) -> None:
        self.http = http
        self.reg = reg

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5) as rsp:
                return rsp.status, rsp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def msg_server(self) -> dict[str, Any]:
        status, body = self.get("/msg_server")
        assert status == 200
        answer: dict[str, Any] = json.loads(body)
        return answer

    def register(self, ip: str, port: int, cur: int, max_: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.reg), timeout=5)
        info = server_pb.IMMsgServInfo(
            ip1=ip, ip2=ip + "-backup", port=port, max_conn_cnt=max_, cur_conn_cnt=cur, host_name=ip
        )
        s.sendall(encode_pdu(*ids_of(info), 0, info.SerializeToString()))
        return s

    def wait_for(self, predicate: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while True:
            answer = self.msg_server()
            if predicate(answer):
                return answer
            assert time.monotonic() < deadline, f"{what}: last answer {answer}"
            time.sleep(0.02)


@pytest.fixture
def login(tmp_path: Path) -> Iterator[Login]:
    http, reg = free_ports(2)
    config = tmp_path / "login.toml"
    config.write_text(
        dump({"login": {"http_port": http, "msg_server_port": reg, "client_port": 0}})
    )
    child = start_child("login_server", "login-server", config, tmp_path)
    yield Login(http, reg)
    stop_children([child])


def test_no_msg_server_answers_code_1(login: Login) -> None:
    assert login.msg_server() == {"code": 1, "msg": "没有msg_server"}


def test_readyz_is_503_until_a_msg_server_registers(login: Login) -> None:
    not_ready = b'{"ready": false, "role": "login_server", "msg_servers": 0}\n'
    assert login.get("/readyz") == (503, not_ready)
    a = login.register("10.0.0.1", 8001, cur=0, max_=10)
    login.wait_for(lambda r: r["code"] == 0, "registered")
    ready = b'{"ready": true, "role": "login_server", "msg_servers": 1}\n'
    assert login.get("/readyz") == (200, ready)
    a.close()
    login.wait_for(lambda r: r["code"] == 1, "forgotten")
    assert login.get("/readyz")[0] == 503


def test_least_loaded_is_chosen_and_port_is_a_string(login: Login) -> None:
    a = login.register("10.0.0.1", 8001, cur=5, max_=10)
    b = login.register("10.0.0.2", 8002, cur=2, max_=10)
    answer = login.wait_for(lambda r: r.get("priorIP") == "10.0.0.2", "B is less loaded")
    assert answer["code"] == 0 and answer["port"] == "8002"
    assert answer["backupIP"] == "10.0.0.2-backup"
    assert set(answer) == {
        "code", "msg", "priorIP", "backupIP", "port", "msfsPrior", "msfsBackup", "discovery"
    }  # fmt: skip
    # Four logins on B make it the busier one.
    for _ in range(4):
        update = server_pb.IMUserCntUpdate(user_action=1, user_id=7)
        b.sendall(encode_pdu(*ids_of(update), 0, update.SerializeToString()))
    login.wait_for(lambda r: r.get("priorIP") == "10.0.0.1", "A after B's logins")
    # A goes away: only B is left.
    a.close()
    login.wait_for(lambda r: r.get("priorIP") == "10.0.0.2", "A forgotten")
    b.close()
    login.wait_for(lambda r: r["code"] == 1, "B forgotten")


def test_all_full_answers_code_2(login: Login) -> None:
    s = login.register("10.0.0.3", 8003, cur=10, max_=10)
    answer = login.wait_for(lambda r: r["code"] != 1, "registered")
    assert answer == {"code": 2, "msg": "负载过高"}
    s.close()


def test_bad_http_gets_400_and_close_and_others_are_served(login: Login) -> None:
    with socket.create_connection(("127.0.0.1", login.http), timeout=5) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert login.get("/healthz") == (200, b"ok\n")


def test_oversized_request_is_refused(login: Login) -> None:
    with socket.create_connection(("127.0.0.1", login.http), timeout=5) as s:
        s.sendall(b"GET /msg_server HTTP/1.1\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400 ")


def test_garbage_on_registration_port_closes_only_that_link(login: Login) -> None:
    good = login.register("10.0.0.4", 8004, cur=0, max_=10)
    login.wait_for(lambda r: r["code"] == 0, "registered")
    bad = socket.create_connection(("127.0.0.1", login.reg), timeout=5)
    bad.sendall(b"\x00\x00\x00\x01" + b"\x00" * 12)
    with pytest.raises(ConnectionResetError):  # aborted by the server
        bad.recv(100)
    assert login.msg_server()["priorIP"] == "10.0.0.4"
    good.close()


def test_metrics_count_servers_and_users(login: Login) -> None:
    s = login.register("10.0.0.5", 8005, cur=3, max_=10)
    login.wait_for(lambda r: r["code"] == 0, "registered")
    metrics = scrape(f"http://127.0.0.1:{login.http}/metrics")
    assert metrics[("imreactor_login_msg_servers", ())] == 1
    assert metrics[("imreactor_login_users", ())] == 3
    login.msg_server()
    ok = ("imreactor_login_msg_server_answers_total", (("result", "ok"), ("via", "http")))
    assert scrape(f"http://127.0.0.1:{login.http}/metrics")[ok] == metrics.get(ok, 0) + 1
    # What every server exports: its process, its loop, its PDUs.
    assert metrics[("process_open_fds", ())] > 0
    assert metrics[("imreactor_loop_iterations_total", ())] > 0
    assert ("imreactor_loop_lag_seconds_count", ()) in metrics
    received = ("imreactor_pdus_received_total", (("command", "CID_OTHER_MSG_SERV_INFO"),))
    assert metrics[received] == 1
    assert login.get("/nope")[0] == 404
    s.close()


def test_a_browser_reads_readiness_from_login_server(suite: RunningSuite, page: Page) -> None:
    # The same HTTP that serves API clients serves a real browser: the answer Chromium renders
    # is the JSON readiness document of a suite with its msg_server registered.
    response = page.goto(f"{suite.http_url}/readyz")
    assert response is not None and response.status == 200
    body = json.loads(page.inner_text("body"))
    assert body["ready"] is True and body["role"] == "login_server"
