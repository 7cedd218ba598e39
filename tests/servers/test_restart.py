"""Restarting servers mid-traffic loses no acknowledged message (SQLite and PostgreSQL).

A sender keeps sending while db_proxy_server is stopped, killed and started
again, and while msg_server is killed (SIGKILL) and started again. Every message
that was acknowledged must afterwards be in the recipient's history under the
acknowledged msg_id with its content, and ids stay contiguous.
"""

from __future__ import annotations

import threading
import time

from imreactor.client import Client, ClientError
from imreactor.servers.suite import DEMO_PASSWORD

from .conftest import RunningSuite, SuiteFactory


class Sender(threading.Thread):
    """Sends numbered texts to ``to`` until stopped, reconnecting whenever it must."""

    def __init__(self, suite: RunningSuite, to: int) -> None:
        super().__init__(daemon=True)
        self.suite = suite
        self.to = to
        self.acked: dict[int, bytes] = {}
        self.failures = 0
        self.user_id = 0
        self.stop = threading.Event()

    def _login(self) -> Client | None:
        try:
            c = Client.connect("127.0.0.1", self.suite.layout.msg_ports[0], timeout_s=1.0)
        except ClientError:
            return None
        try:
            if c.login("alice", DEMO_PASSWORD, check=False).result_code == 0:
                self.user_id = c.user_id
                return c
        except ClientError:
            pass
        c.close()
        return None

    def run(self) -> None:
        client: Client | None = None
        n = 0
        while not self.stop.is_set():
            if client is None or not client.is_connected:
                if client is not None:
                    client.close()
                client = self._login()
                if client is None:
                    time.sleep(0.1)
                    continue
            body = f"msg {n}".encode()
            n += 1
            try:
                ack = client.send_message(self.to, body)
            except (ClientError, TimeoutError):
                self.failures += 1
                continue
            assert ack.msg_id not in self.acked, "one msg_id acknowledged twice"
            self.acked[ack.msg_id] = body
        if client is not None:
            client.close()


def _wait_acks(sender: Sender, more_than: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while len(sender.acked) <= more_than:
        assert time.monotonic() < deadline, f"traffic did not resume ({len(sender.acked)} acks)"
        time.sleep(0.05)


def test_restarts_lose_no_acknowledged_message(make_suite: SuiteFactory) -> None:
    suite = make_suite({"msg": {"db_timeout_s": 1.0}})
    bob_id = suite.login("bob").user_id
    sender = Sender(suite, bob_id)
    sender.start()
    try:
        _wait_acks(sender, 20)
        suite.restart("db_proxy_server")  # SIGTERM: drains and stops
        _wait_acks(sender, len(sender.acked) + 20)
        suite.restart("db_proxy_server", hard=True)  # SIGKILL mid-traffic
        _wait_acks(sender, len(sender.acked) + 20)
        suite.restart("msg_server", hard=True)
        _wait_acks(sender, len(sender.acked) + 20)
    finally:
        sender.stop.set()
        sender.join(30)
    assert not sender.is_alive()
    acked = sender.acked
    bob = suite.login("bob")
    alice_id = sender.user_id
    stored: dict[int, bytes] = {}
    begin = 0
    while True:
        page = bob.history(alice_id, begin=begin, count=200).msg_list
        if not page:
            break
        for m in page:
            stored[m.msg_id] = m.msg_data
        begin = page[-1].msg_id - 1
        if begin <= 0:
            break
    missing = {i: body for i, body in acked.items() if stored.get(i) != body}
    assert not missing, f"acknowledged but not stored as acknowledged: {sorted(missing)[:10]}"
    assert sorted(stored) == list(range(1, max(stored) + 1)), "ids are not contiguous"
    assert len(acked) > 80
