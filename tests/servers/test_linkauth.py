"""Authenticated server links: a suite whose servers talk mutual TLS with a cluster CA,
and every server-facing port refusing whoever cannot show a certificate from it."""

from __future__ import annotations

import socket
import ssl
import time
import tomllib
from pathlib import Path

import pytest

from imreactor import pki
from imreactor.config import ConfigError
from imreactor.pdu.header import encode_pdu
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.pdu.proto import im_server_pb2 as server_pb
from imreactor.pdu.registry import ids_of
from imreactor.servers.dbproxy.config import DbProxyConfig
from imreactor.servers.linkauth import link_client_context
from imreactor.servers.msg.config import MsgConfig

from .conftest import RunningSuite, SuiteFactory

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def database(tmp_path: Path) -> str:
    """SQLite only: what is under test is the links, not the storage."""
    return f"sqlite:///{tmp_path / 'im.db'}"


def _validate_pdu() -> bytes:
    req = server_pb.IMValidateReq(user_name="alice", password="x" * 32, attach_data=b"")
    return encode_pdu(*ids_of(req), 1, req.SerializeToString())


def _server_ports(suite: RunningSuite) -> dict[str, int]:
    layout = suite.layout
    return {"db_proxy_server": layout.db_port, "login_server": layout.login_port}


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _wait_for_log(suite: RunningSuite, name: str, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in suite.log_text(name):
        if time.monotonic() > deadline:
            pytest.fail(f"{name} never logged {text!r}")
        time.sleep(0.05)  # polling a log file: there is no event to wait on


def test_the_suite_runs_over_authenticated_links(suite: RunningSuite) -> None:
    for name in ("db_proxy_server", "login_server", "msg_server"):
        config = tomllib.loads((suite.layout.data_dir / f"{name}.toml").read_text())
        [table] = config.values()
        assert Path(table["link_ca_file"]).is_file()
        key = Path(table["link_key_file"])
        assert key.stat().st_mode & 0o077 == 0  # the key is the user's alone
    alice = suite.login("alice")  # validated through db_proxy, announced to login_server
    bob = suite.login("bob")
    ack = alice.send_text(bob.user_id, "over TLS links")
    got = bob.wait_for(msg_pb.IMMsgData, 5)
    assert (got.msg_id, got.msg_data) == (ack.msg_id, b"over TLS links")


@pytest.mark.parametrize("target", ["db_proxy_server", "login_server"])
def test_plain_tcp_to_a_server_port_is_closed_before_any_request(
    suite: RunningSuite, target: str
) -> None:
    port = _server_ports(suite)[target]
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_validate_pdu())
        answer = _read_until_closed(sock)
        local = sock.getsockname()
    assert b"alice" not in answer  # no IMValidateRsp, only (at most) a TLS alert
    _wait_for_log(suite, target, f"TLS handshake with 127.0.0.1:{local[1]} failed")
    suite.login("carol")  # nobody else noticed


@pytest.mark.parametrize("target", ["db_proxy_server", "login_server"])
def test_a_certificate_from_another_ca_is_refused(
    suite: RunningSuite, target: str, tmp_path: Path
) -> None:
    foreign_ca = pki.create_ca(tmp_path / "foreign", "not the cluster")
    foreign = pki.issue(foreign_ca, tmp_path / "foreign", "intruder", hosts=["intruder"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the intruder does not care who the server is
    context.load_cert_chain(foreign.cert, foreign.key)
    port = _server_ports(suite)[target]
    with socket.create_connection(("127.0.0.1", port)) as raw:
        local = raw.getsockname()
        with (
            pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(_validate_pdu())  # TLS 1.3: refused after the client's Finished
            if not tls.recv(65536):
                raise ConnectionResetError("closed without an answer")
    _wait_for_log(suite, target, f"TLS handshake with 127.0.0.1:{local[1]} failed")
    assert "certificate verify failed" in suite.log_text(target)


def test_a_client_without_a_certificate_is_refused(suite: RunningSuite) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", suite.layout.db_port)) as raw,
        pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(_validate_pdu())
        if not tls.recv(65536):
            raise ConnectionResetError("closed without an answer")
    _wait_for_log(suite, "db_proxy_server", "peer did not return a certificate")


def test_plain_links_are_refused_by_authenticated_servers(
    make_suite: SuiteFactory,
) -> None:
    # A msg_server configured without link keys (as a TeamTalk one would be) cannot
    # log anyone in: db_proxy refuses its plain link.
    plain = {"msg": {"link_ca_file": "", "link_cert_file": "", "link_key_file": ""}}
    suite = make_suite(plain, offered=False)
    c = suite.client()
    res = c.login("alice", "imreactor", check=False)
    assert res.result_code in (4, 5)  # db_proxy / login_server unavailable
    # The plain link says nothing until its first heartbeat (or the handshake timeout).
    _wait_for_log(suite, "db_proxy_server", "TLS handshake with 127.0.0.1")
    _wait_for_log(suite, "login_server", "TLS handshake with 127.0.0.1")


def test_link_keys_go_together() -> None:
    with pytest.raises(ConfigError, match="link_ca_file, link_cert_file and link_key_file go"):
        MsgConfig(link_ca_file="ca.pem")
    with pytest.raises(ConfigError, match="dbproxy: link_ca_file"):
        DbProxyConfig(link_cert_file="a.pem", link_key_file="a.key")


def test_unreadable_link_files_are_a_config_error(tmp_path: Path) -> None:
    config = MsgConfig(
        link_ca_file=str(tmp_path / "missing.pem"),
        link_cert_file=str(tmp_path / "missing.pem"),
        link_key_file=str(tmp_path / "missing.key"),
    )
    with pytest.raises(ConfigError, match="msg: cannot load the link certificate or CA"):
        link_client_context(config, "msg")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    config = MsgConfig(
        link_ca_file=str(garbage), link_cert_file=str(garbage), link_key_file=str(garbage)
    )
    with pytest.raises(ConfigError, match="cannot load the link certificate"):
        link_client_context(config, "msg")


def test_plain_tcp_to_route_server_is_refused(make_suite: SuiteFactory) -> None:
    suite = make_suite(msg_servers=2)
    with socket.create_connection(("127.0.0.1", suite.layout.route_ports[0])) as sock:
        sock.sendall(_validate_pdu())
        _read_until_closed(sock)
        local = sock.getsockname()
    _wait_for_log(suite, "route_server", f"TLS handshake with 127.0.0.1:{local[1]} failed")
    alice = suite.login("alice", server=0)
    bob = suite.login("bob", server=1)
    ack = alice.send_text(bob.user_id, "relayed over TLS")
    got = bob.wait_for(msg_pb.IMMsgData, 5)
    assert (got.msg_id, got.msg_data) == (ack.msg_id, b"relayed over TLS")
