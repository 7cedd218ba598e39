"""Clients over TLS: msg_server's tls_port, the tlsPort in login_server's answer, HTTPS on
login_server, and bad input on the TLS port."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imreactor.config import ConfigError
from imreactor.pdu.header import HEADER_LEN, encode_pdu, parse_header
from imreactor.pdu.password import password_digest
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.registry import ids_of
from imreactor.servers.login.config import LoginConfig
from imreactor.servers.msg.config import MsgConfig
from imreactor.servers.suite import DEMO_PASSWORD

from .conftest import RunningSuite, start_suite

pytestmark = pytest.mark.timeout(120)


def _start(tmp_path: Path, overrides: dict[str, dict[str, Any]] | None = None) -> RunningSuite:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return start_suite(
        tmp_path / "suite", f"sqlite:///{tmp_path / 'im.db'}", tls=True, overrides=overrides
    )


@pytest.fixture
def tls_suite(tmp_path: Path) -> Iterator[RunningSuite]:
    suite = _start(tmp_path)
    yield suite
    suite.stop()


def _client_ctx(suite: RunningSuite) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(suite.layout.client_ca))


def _msg_server_answer(suite: RunningSuite) -> dict[str, Any]:
    url = f"http://127.0.0.1:{suite.layout.http_port}/msg_server"
    for _ in range(100):  # until msg_server has registered
        with urllib.request.urlopen(url, timeout=10) as rsp:
            body: dict[str, Any] = json.loads(rsp.read())
        if body["code"] == 0:
            return body
        time.sleep(0.1)  # polling an HTTP answer: registration has no event to wait on
    raise AssertionError(f"no msg_server registered: {body}")


def _login_over(tls: ssl.SSLSocket, name: str) -> login_pb.IMLoginRes:
    req = login_pb.IMLoginReq(
        user_name=name,
        password=password_digest(DEMO_PASSWORD),
        online_status=base.USER_STATUS_ONLINE,
        client_type=base.CLIENT_TYPE_MAC,
        client_version="test",
    )
    tls.sendall(encode_pdu(*ids_of(req), 1, req.SerializeToString()))
    buf = b""
    while True:
        while len(buf) < HEADER_LEN or len(buf) < parse_header(buf).length:
            chunk = tls.recv(65536)
            assert chunk, "closed before the login answer"
            buf += chunk
        header = parse_header(buf)
        frame, buf = buf[: header.length], buf[header.length :]
        if (header.service_id, header.command_id) == ids_of(login_pb.IMLoginRes):
            res = login_pb.IMLoginRes()
            res.ParseFromString(frame[HEADER_LEN:])
            return res


def test_login_server_tells_clients_the_tls_port_after_every_original_key(
    tls_suite: RunningSuite,
) -> None:
    body = _msg_server_answer(tls_suite)
    keys = list(body)
    assert keys[-1] == "tlsPort"
    assert keys[:-1] == [
        "code", "msg", "priorIP", "backupIP", "port", "msfsPrior", "msfsBackup", "discovery"
    ]  # fmt: skip
    assert body["tlsPort"] == str(tls_suite.layout.tls_ports[0])  # a string, like "port"


def test_a_client_logs_in_over_tls_and_meets_plain_clients(tls_suite: RunningSuite) -> None:
    port = tls_suite.layout.tls_ports[0]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        _client_ctx(tls_suite).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        res = _login_over(tls, "alice")
        assert res.result_code == 0
        bob = tls_suite.login("bob")  # plain TCP, same msg_server, same sessions
        assert bob.user_id != res.user_info.user_id


def test_the_certificate_names_the_suite_host(tls_suite: RunningSuite) -> None:
    port = tls_suite.layout.tls_ports[0]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
    ):
        _client_ctx(tls_suite).wrap_socket(raw, server_hostname="elsewhere.example")


def test_plain_tcp_to_the_tls_port_closes_only_that_connection(tls_suite: RunningSuite) -> None:
    alice = tls_suite.login("alice")
    port = tls_suite.layout.tls_ports[0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"\x00\x00\x00\x10garbage, not a ClientHello")
        try:
            while raw.recv(65536):
                pass
        except ConnectionResetError:
            pass
        local = raw.getsockname()
    assert f"TLS handshake with 127.0.0.1:{local[1]} failed" in tls_suite.log_text("msg_server")
    assert alice.is_connected
    tls_suite.login("bob")


def test_login_server_serves_https(tmp_path: Path) -> None:
    probe = _start(tmp_path / "first")  # makes the certificate the second suite serves
    cert = probe.layout.pki_dir / "server.pem"
    key = probe.layout.pki_dir / "server.key"
    probe.stop()
    suite = _start(tmp_path / "second", {"login": {"cert_file": str(cert), "key_file": str(key)}})
    try:
        # The second suite's HTTPS certificate comes from the first suite's CA.
        context = ssl.create_default_context(cafile=str(probe.layout.client_ca))
        url = f"https://127.0.0.1:{suite.layout.http_port}/healthz"
        with urllib.request.urlopen(url, timeout=10, context=context) as rsp:
            assert rsp.read() == b"ok\n"
        with pytest.raises(ConnectionError):
            plain = f"http://127.0.0.1:{suite.layout.http_port}/healthz"
            urllib.request.urlopen(plain, timeout=10).read()
    finally:
        suite.stop()


def test_tls_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"msg\.tls_port: needs cert_file and key_file"):
        MsgConfig(tls_port=8443)
    with pytest.raises(ConfigError, match="msg: cert_file and key_file go together"):
        MsgConfig(tls_port=8443, cert_file="a.pem")
    with pytest.raises(ConfigError, match="login: cert_file and key_file go together"):
        LoginConfig(key_file="a.key")
