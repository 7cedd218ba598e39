"""SIGTERM drains every server: nothing acknowledged is lost, nothing asked is left hanging.

Senders keep messages in flight on two msg_servers (linked by a route_server, or by
Redis) while
every server of the suite gets SIGTERM: in ``imreactor up``'s order (msg_servers,
then route_server, login_server and msfs, then db_proxy_server) and all at once.
Every message a sender sent either got its ack or the sender saw its connection
close before the ack; none waited out its timeout. Every server exits 0 after
logging its drain. A suite started again on the same SQLite file has every
acknowledged message in history, under its msg_id, with its body.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imreactor.client import Client, ClientError
from imreactor.redis import RedisProcess
from imreactor.servers.suite import DEMO_PASSWORD, stop_children

from .conftest import RunningSuite, start_suite

#: Far above what a drain takes: a send that waits this long was left unanswered.
SEND_TIMEOUT_S = 20.0
FAST = {"msg": {"msg_rate_per_s": 10_000.0, "msg_burst": 10_000}}


class Sender(threading.Thread):
    """Sends numbered texts to ``to`` on one msg_server until its connection closes."""

    def __init__(self, suite: RunningSuite, server: int, name: str, to: int) -> None:
        super().__init__(daemon=True)
        self.client = Client.connect(
            "127.0.0.1", suite.layout.msg_ports[server], timeout_s=SEND_TIMEOUT_S
        )
        self.client.login(name, DEMO_PASSWORD)
        self.user_id = self.client.user_id
        self.to = to
        self.acked: dict[int, bytes] = {}
        self.closed_before_ack = 0  #: sends whose connection closed before their ack
        self.unanswered: list[str] = []  #: sends that waited out their timeout
        self.started = threading.Event()

    def run(self) -> None:
        n = 0
        while True:
            body = f"{self.user_id} msg {n}".encode()
            n += 1
            try:
                ack = self.client.send_message(self.to, body)
            except ClientError as exc:
                if "no response within" in str(exc):
                    self.unanswered.append(str(exc))
                    continue
                self.closed_before_ack += 1
                break
            except TimeoutError as exc:  # the client's own loop stuck: unanswered too
                self.unanswered.append(repr(exc))
                continue
            assert ack.msg_id not in self.acked, "one msg_id acknowledged twice"
            self.acked[ack.msg_id] = body
            if len(self.acked) >= 20:
                self.started.set()
        self.started.set()
        self.client.close()


def _history(client: Client, peer: int) -> dict[int, bytes]:
    stored: dict[int, bytes] = {}
    begin = 0
    while True:
        page = client.history(peer, begin=begin, count=200).msg_list
        for m in page:
            stored[m.msg_id] = m.msg_data
        if not page or page[-1].msg_id <= 1:
            return stored
        begin = page[-1].msg_id - 1


def _drain_under_load(tmp_path: Path, sigterm: object, redis: str = "") -> RunningSuite:
    """Start a suite (on ``redis``, if given), put senders on it, ``sigterm(suite)``, then
    check what the module docstring says; returns the (stopped) suite."""
    database = f"sqlite:///{tmp_path / 'im.db'}"
    suite = start_suite(tmp_path / "suite", database, msg_servers=2, overrides=FAST, redis=redis)
    try:
        bob_id = suite.login("bob").user_id
        suite.clients[-1].close()
        senders = [
            Sender(suite, server, name, bob_id)
            for server, name in ((0, "alice"), (0, "dave"), (1, "carol"))
        ]
        for s in senders:
            s.start()
        for s in senders:
            assert s.started.wait(30), "traffic did not start"
        assert callable(sigterm)
        sigterm(suite)
        for s in senders:
            s.join(SEND_TIMEOUT_S + 10)
            assert not s.is_alive(), "a sender is still waiting"
        for name, child in suite.children.items():
            assert child.proc.wait(60) == 0, f"{name} exited with {child.proc.returncode}"
            text = suite.log_text(name)
            assert "drained in" in text, f"{name} did not log its drain:\n{text[-2000:]}"
            assert "exiting anyway" not in text, f"{name} hit its drain timeout"
    finally:
        suite.stop()
    assert not [u for s in senders for u in s.unanswered], "sends left unanswered"
    # Every sender saw its connection close (the drain), after acks it could count.
    outcomes = [(len(s.acked), s.closed_before_ack) for s in senders]
    assert all(acked and closed == 1 for acked, closed in outcomes), outcomes

    again = start_suite(tmp_path / "again", database, msg_servers=1)
    try:
        bob = again.login("bob")
        for user_id in {s.user_id for s in senders}:
            stored = _history(bob, user_id)
            for s in senders:
                if s.user_id != user_id:
                    continue
                lost = {i for i, body in s.acked.items() if stored.get(i) != body}
                assert not lost, f"acknowledged but not in history: {sorted(lost)[:10]}"
    finally:
        again.stop()
    return suite


def _logged_at(suite: RunningSuite, name: str, what: str) -> str:
    """The timestamp of the line of ``name``'s log that says ``what``."""
    (line,) = [line for line in suite.log_text(name).splitlines() if what in line]
    return line[:23]  # "2026-12-06 20:19:51,190": sorts as time


def test_drain_in_up_order_loses_nothing_and_answers_everything(tmp_path: Path) -> None:
    suite = _drain_under_load(tmp_path, lambda suite: stop_children(list(suite.children.values())))
    # msg_servers finished before the rest began; db_proxy began once the rest had finished.
    msg = [name for name in suite.children if name.startswith("msg_server")]
    middle = ["route_server", "login_server", "msfs"]
    assert max(_logged_at(suite, n, "drained in") for n in msg) <= min(
        _logged_at(suite, n, "draining") for n in middle
    )
    assert max(_logged_at(suite, n, "drained in") for n in middle) <= _logged_at(
        suite, "db_proxy_server", "draining"
    )


def test_sigterm_to_every_server_at_once_loses_nothing_and_answers_everything(
    tmp_path: Path,
) -> None:
    def all_at_once(suite: RunningSuite) -> None:
        for child in suite.children.values():
            child.proc.send_signal(signal.SIGTERM)

    _drain_under_load(tmp_path, all_at_once)


def test_drain_on_the_redis_fabric_loses_nothing_and_answers_everything(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    _drain_under_load(
        tmp_path, lambda suite: stop_children(list(suite.children.values())), redis_server.url
    )


def test_a_drain_that_cannot_finish_exits_after_drain_timeout_s(tmp_path: Path) -> None:
    """A client that never closes its side holds the drain up; the server exits anyway."""
    database = f"sqlite:///{tmp_path / 'im.db'}"
    suite = start_suite(tmp_path / "suite", database, overrides={"msg": {"drain_timeout_s": 0.5}})
    try:
        stubborn = socket.create_connection(("127.0.0.1", suite.layout.msg_ports[0]))
        time.sleep(0.2)  # accepted
        child = suite.children["msg_server"]
        began = time.monotonic()
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(30) == 0
        # The stubborn client holds its socket open: only the timeout ended the drain
        # (a graceful close alone would have waited for it for 5 s).
        assert time.monotonic() - began < 5
        assert "drain_timeout_s = 0.5 s; exiting anyway" in suite.log_text("msg_server")
        stubborn.close()
    finally:
        suite.stop()


def test_an_upload_in_progress_is_stored_and_answered_before_msfs_exits(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'im.db'}"
    suite = start_suite(tmp_path / "suite", database)
    try:
        png = b"\x89PNG\r\n\x1a\n" + b"\0" * 2000
        boundary = "xyz"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + png
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = (
            f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary="
            f"{boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        upload = socket.create_connection(("127.0.0.1", suite.layout.msfs_port), timeout=10)
        upload.sendall(head + body[:100])
        idle = socket.create_connection(("127.0.0.1", suite.layout.msfs_port), timeout=10)
        time.sleep(0.2)
        child = suite.children["msfs"]
        child.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert child.proc.poll() is None, "msfs exited with an upload in progress"
        assert idle.recv(100) == b"", "an idle connection is closed at once"
        upload.sendall(body[100:])
        answer = b""
        while chunk := upload.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"Connection: close" in answer
        assert b'"error_code": 0' in answer or b'"error_code":0' in answer, answer
        assert child.proc.wait(30) == 0
        assert "drained in" in suite.log_text("msfs")
    finally:
        suite.stop()


@pytest.mark.parametrize("value", ['"soon"', "-1", "0", "nan", "inf"])
def test_a_malformed_drain_timeout_is_refused_by_config_check(tmp_path: Path, value: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f"[msg]\ndrain_timeout_s = {value}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "imreactor", "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "msg.drain_timeout_s" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_message_with_no_db_proxy_link_closes_its_connection(tmp_path: Path) -> None:
    """msg_server cannot store it and TeamTalk has no error ack: the sender sees its
    connection close (and reconnects elsewhere) instead of waiting out its timeout."""
    database = f"sqlite:///{tmp_path / 'im.db'}"
    suite = start_suite(tmp_path / "suite", database)
    try:
        bob_id = suite.login("bob").user_id
        alice = Client.connect("127.0.0.1", suite.layout.msg_ports[0], timeout_s=SEND_TIMEOUT_S)
        suite.clients.append(alice)
        alice.login("alice", DEMO_PASSWORD)
        alice.send_message(bob_id, b"stored")
        stop_children([suite.children["db_proxy_server"]])
        began = time.monotonic()
        with pytest.raises(ClientError) as failed:
            alice.send_message(bob_id, b"cannot be stored")
        assert "no response within" not in str(failed.value)
        assert time.monotonic() - began < SEND_TIMEOUT_S
        assert alice.wait_closed(5)
        assert "IMMsgData cannot be answered" in suite.log_text("msg_server")
    finally:
        suite.stop()


def test_a_single_msg_server_drains_at_once_after_traffic(tmp_path: Path) -> None:
    """With no route_server configured nothing waits to be relayed: after messages, the
    drain ends as soon as the answers are out, not at drain_timeout_s."""
    suite = start_suite(tmp_path / "suite", f"sqlite:///{tmp_path / 'im.db'}")
    try:
        alice, bob = suite.login("alice"), suite.login("bob")
        for i in range(20):
            alice.send_message(bob.user_id, b"m%d" % i)
    finally:
        suite.stop()
    log = suite.log_text("msg_server")
    assert "msg_server drained in" in log, log[-2000:]
    assert "drain not finished" not in log
