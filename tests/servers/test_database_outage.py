"""The database going away: only the requests that meet it fail, and service comes back.

A private PostgreSQL (not the session's shared one) is stopped under a running
suite: a login gets result 3 (no database); a message is neither acknowledged
nor delivered, and its sender hears so at once: its connection is closed (the ack
has no result code), while every other client stays connected. When PostgreSQL is
back, logins and messages work again and nothing acknowledged before the outage is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import PostgresServer

from imreactor.client import ClientError
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.servers.suite import DEMO_PASSWORD

from .conftest import RunningSuite, start_suite


@pytest.fixture
def pg_suite(tmp_path: Path) -> Iterator[tuple[RunningSuite, PostgresServer]]:
    server = PostgresServer()
    with server:
        url = server.create_database()
        suite = start_suite(tmp_path / "suite", url, overrides={"msg": {"db_timeout_s": 2.0}})
        try:
            yield suite, server
        finally:
            suite.stop()


def test_database_outage_fails_only_its_requests(
    pg_suite: tuple[RunningSuite, PostgresServer],
) -> None:
    suite, pg = pg_suite
    alice, bob = suite.login("alice"), suite.login("bob")
    before = alice.send_text(bob.user_id, "before").msg_id
    pg.stop()
    try:
        c = suite.client()
        res = c.login("carol", DEMO_PASSWORD, check=False)
        assert res.result_code == base.REFUSE_REASON_NO_DB_SERVER
        alice.timeout_s = 30.0  # far above db_timeout_s: the close must come first
        asked = time.monotonic()
        with pytest.raises(ClientError):
            alice.send_message(bob.user_id, b"during")
        assert time.monotonic() - asked < 30.0, "no answer: the sender timed out"
        assert not alice.is_connected and bob.is_connected
        db_log = suite.log_text("db_proxy_server")
        assert (
            "ERROR imreactor.servers.dbproxy.server: IMValidateReq failed: StorageError(" in db_log
        )
        assert "ERROR imreactor.servers.dbproxy.server: IMMsgData failed: StorageError(" in db_log
    finally:
        pg.start()
    deadline = time.monotonic() + 15
    while True:
        try:
            alice = suite.login("alice")
            after = alice.send_text(bob.user_id, "after").msg_id
            break
        except (ClientError, AssertionError):
            assert time.monotonic() < deadline, "service did not come back"
            time.sleep(0.2)
    assert after > before
    carol = suite.login("carol")
    history = bob.history(alice.user_id, count=10)
    datas = [m.msg_data for m in history.msg_list]
    assert b"before" in datas and b"after" in datas and b"during" not in datas
    assert carol.is_connected
