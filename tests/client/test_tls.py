"""Clients over TLS: the SDK, ``send``/``history`` and the load generator on msg_server's TLS port.

One SQLite suite whose msg_server has a TLS listener (the certificates ``imreactor up
--tls`` makes): clients find the port through login_server's ``"tlsPort"``, verify
the certificate against the suite's CA, and refuse a server they cannot verify or a
login_server that offers no TLS port.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from servers.conftest import RunningSuite, start_suite

from imreactor.accounts import create_users
from imreactor.client import Client, ClientError
from imreactor.client.blocking import locate_msg_server
from imreactor.client.load import LoadOptions, run_load
from imreactor.client.tls import client_context
from imreactor.net.tls import TLSTransport
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.servers.suite import DEMO_PASSWORD

pytestmark = pytest.mark.timeout(120)

LOAD_USERS = 4


@pytest.fixture(scope="module")
def tls_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    base_dir = tmp_path_factory.mktemp("tls")
    database = f"sqlite:///{base_dir / 'im.db'}"
    suite = start_suite(base_dir / "suite", database, tls=True)
    try:
        create_users(database, [f"load{i}" for i in range(LOAD_USERS)], DEMO_PASSWORD)
        yield suite
    finally:
        suite.stop()


def ca_of(suite: RunningSuite) -> str:
    return str(suite.layout.client_ca)


def test_sdk_logs_in_on_the_tls_port_and_talks_to_a_plain_client(tls_suite: RunningSuite) -> None:
    ctx = client_context(ca_of(tls_suite))
    with (
        Client.via_login_server(tls_suite.http_url, ssl=ctx) as alice,
        Client.via_login_server(tls_suite.http_url) as bob,
    ):
        assert alice.port == tls_suite.layout.tls_ports[0]
        assert bob.port == tls_suite.layout.msg_ports[0]
        assert isinstance(alice._conn, TLSTransport)
        alice.login("alice", DEMO_PASSWORD)
        bob.login("bob", DEMO_PASSWORD)
        ack = alice.send_text(bob.user_id, "over TLS")
        got = bob.wait_for(msg_pb.IMMsgData, 5)
        assert (got.msg_id, bob.decode_text(got.msg_data)) == (ack.msg_id, "over TLS")
        back = bob.send_text(alice.user_id, "and back")
        got = alice.wait_for(msg_pb.IMMsgData, 5)
        assert (got.msg_id, alice.decode_text(got.msg_data)) == (back.msg_id, "and back")


def test_sdk_refuses_a_server_it_cannot_verify(tls_suite: RunningSuite) -> None:
    # The system trust store does not know the suite's private CA.
    with pytest.raises(ClientError, match="CERTIFICATE_VERIFY_FAILED"):
        Client.via_login_server(tls_suite.http_url, ssl=client_context(), timeout_s=5)
    # Nor does a host name the certificate does not name pass.
    with pytest.raises(ClientError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        Client.connect(
            "127.0.0.1",
            tls_suite.layout.tls_ports[0],
            ssl=client_context(ca_of(tls_suite)),
            server_hostname="elsewhere.example",
            timeout_s=5,
        )


def test_a_bad_ca_file_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    with pytest.raises(ValueError, match=f"cannot use CA file {missing}"):
        client_context(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=f"cannot use CA file {garbage}"):
        client_context(garbage)


class _NoTlsLoginServer(BaseHTTPRequestHandler):
    """A login_server of the original kind: its answer has no ``"tlsPort"``."""

    def do_GET(self) -> None:
        body = json.dumps(
            {"code": 0, "msg": "", "priorIP": "127.0.0.1", "backupIP": "127.0.0.1", "port": "1"}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_login_server_without_tls_port_is_refused_for_tls() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoTlsLoginServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert locate_msg_server(url) == ("127.0.0.1", 1)
        with pytest.raises(ClientError, match=r"offers msg_server 127\.0\.0\.1 without TLS"):
            locate_msg_server(url, ssl=client_context())
    finally:
        server.shutdown()
        server.server_close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imreactor", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_send_and_history_over_tls(tls_suite: RunningSuite) -> None:
    common = ("--login-url", tls_suite.http_url, "--tls", "--ca", ca_of(tls_suite))
    with Client.via_login_server(tls_suite.http_url) as dave:
        dave.login("dave", DEMO_PASSWORD)
        done = cli(
            "send", "--user", "carol", "--password", DEMO_PASSWORD, "--to", "dave", "hi", *common
        )
        assert done.returncode == 0, done.stderr
        msg_id = int(done.stdout)
        got = dave.wait_for(msg_pb.IMMsgData, 5)
        assert (got.msg_id, dave.decode_text(got.msg_data)) == (msg_id, "hi")
    done = cli("history", "--user", "dave", "--password", DEMO_PASSWORD, "--with", "carol", *common)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith("Carol: hi"), done.stdout
    assert done.stdout.splitlines()[-1].startswith(f"#{msg_id} ")


def test_send_with_an_unusable_ca_or_an_unverified_server_fails_in_one_line(
    tls_suite: RunningSuite, tmp_path: Path
) -> None:
    base = ["send", "--user", "carol", "--password", DEMO_PASSWORD, "--to", "dave", "x"]
    base += ["--login-url", tls_suite.http_url]
    done = cli(*base, "--ca", str(tmp_path / "none.pem"))
    assert done.returncode == 1
    assert done.stderr.startswith("imreactor send: cannot use CA file"), done.stderr
    assert len(done.stderr.splitlines()) == 1
    done = cli(*base, "--tls")  # the system's CAs: the suite's certificate fails
    assert done.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr and len(done.stderr.splitlines()) == 1


def test_load_over_tls_verifies_clean(tls_suite: RunningSuite) -> None:
    report = run_load(
        LoadOptions(
            login_url=tls_suite.http_url,
            users=LOAD_USERS,
            password=DEMO_PASSWORD,
            in_flight=2,
            count=100,
            tls=True,
            ca_file=ca_of(tls_suite),
        )
    )
    assert report.ok, report.text()
    assert (report.logins_ok, report.sent, report.acked) == (LOAD_USERS, 100, 100)
    assert report.deliveries == 100


def test_load_refuses_tls_options_it_cannot_use(tmp_path: Path) -> None:
    done = cli("load", "--tls", "--ca", str(tmp_path / "none.pem"), "--count", "1")
    assert done.returncode == 2
    assert "cannot use CA file" in done.stderr
    done = cli("load", "--echo", "127.0.0.1:1", "--tls", "--count", "1")
    assert done.returncode == 2
    assert "--echo speaks plain TCP" in done.stderr
