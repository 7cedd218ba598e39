"""What only the Redis fabric has: Redis going away and coming back, a dead msg_server's
presence expiring, a config that names a bad Redis, a malformed inbox entry.

(What both fabrics share runs on both in test_cluster.py.)
"""

from __future__ import annotations

import socket
import time

import pytest

from imreactor.config import ConfigError, from_mapping
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.redis import RedisProcess
from imreactor.servers.msg.config import MsgConfig
from imreactor.servers.suite import DEMO_PASSWORD

from .conftest import RunningSuite, SuiteFactory
from .test_cluster import REDIS_TTL_S, received, wait_stat


@pytest.fixture
def cluster(make_suite: SuiteFactory, redis_server: RedisProcess) -> RunningSuite:
    return make_suite(
        {"msg": {"redis_presence_ttl_s": REDIS_TTL_S}}, msg_servers=3, redis=redis_server.url
    )


def refused_with(suite: RunningSuite, name: str, code: int, server: int = 0) -> bool:
    c = suite.client(server)
    result: int = c.login(name, DEMO_PASSWORD, check=False).result_code
    c.close()
    return result == code


def test_delivery_resumes_after_a_redis_restart(
    cluster: RunningSuite, redis_server: RedisProcess
) -> None:
    alice = cluster.login("alice", server=0)
    bob = cluster.login("bob", server=1)
    alice.send_text(bob.user_id, "before")
    assert [m.msg_data for m in received(bob)] == [b"before"]
    redis_server.stop()
    # Meanwhile a new login is refused like one without route_server (5)...
    deadline = time.monotonic() + 10
    while not refused_with(cluster, "carol", base.REFUSE_REASON_NO_ROUTE_SERVER):
        assert time.monotonic() < deadline, "logins were not refused while Redis was down"
        time.sleep(0.1)
    # ...and what is acknowledged meanwhile waits in the sender's outbox.
    during = alice.send_text(bob.user_id, "during").msg_id
    redis_server.start()
    deadline = time.monotonic() + 15
    got: list[int] = []
    while during not in got:
        got += [m.msg_id for m in received(bob, 0.3)]
        assert time.monotonic() < deadline, "the message sent while Redis was down was lost"
    after = alice.send_text(bob.user_id, "after").msg_id
    got += [m.msg_id for m in received(bob)]
    assert got == [during, after], "lost, duplicated or reordered"
    cluster.login("carol", server=2)  # logins work again


def test_a_dead_msg_servers_users_are_reported_offline(cluster: RunningSuite) -> None:
    alice = cluster.login("alice", server=0)
    bob = cluster.login("bob", server=1)
    alice.request(buddy.IMUsersStatReq(user_id=0, user_id_list=[bob.user_id]), buddy.IMUsersStatRsp)
    cluster.kill("msg_server2")
    started = time.monotonic()
    # Offline within the TTL and a heartbeat (wait_stat waits 5 s; give it two rounds).
    try:
        wait_stat(alice, bob.user_id, base.USER_STATUS_OFFLINE)
    except Exception:
        wait_stat(alice, bob.user_id, base.USER_STATUS_OFFLINE)
    assert time.monotonic() - started < REDIS_TTL_S * 4 / 3 + 5
    stat = alice.request(
        buddy.IMUsersStatReq(user_id=0, user_id_list=[bob.user_id]), buddy.IMUsersStatRsp
    )
    assert stat.user_stat_list[0].status == base.USER_STATUS_OFFLINE


def test_a_malformed_inbox_entry_is_dropped_and_delivery_goes_on(
    cluster: RunningSuite, redis_server: RedisProcess
) -> None:
    alice = cluster.login("alice", server=0)
    bob = cluster.login("bob", server=1)
    inbox = f"im:n:127.0.0.1:{cluster.layout.msg_ports[1]}:inbox"
    with socket.create_connection(("127.0.0.1", redis_server.port)) as s:
        for fields in (b"c 1793 p \xff\xff\xff", b"c notanumber p x", b"x y"):
            parts = [b"XADD", inbox.encode(), b"*", *fields.split(b" ")]
            s.sendall(
                b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
            )
            assert s.recv(100).startswith(b"$")
    alice.send_text(bob.user_id, "still")
    assert [m.msg_data for m in received(bob)] == [b"still"]
    assert "inbox entry" in cluster.log_text("msg_server2")


def test_logins_are_refused_while_redis_is_unreachable(make_suite: SuiteFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]  # nothing listens there once closed
    suite = make_suite(msg_servers=2, redis=f"redis://127.0.0.1:{nobody}/0")
    assert refused_with(suite, "alice", base.REFUSE_REASON_NO_ROUTE_SERVER)
    assert "redis at redis://127.0.0.1" in suite.log_text("msg_server1")


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"redis": "http://h"}, "not redis://"),
        ({"redis": "redis://h/x"}, "database must be a number"),
        ({"redis": "redis://h", "route_servers": ["127.0.0.1:8200"]}, "not both"),
        ({"redis_node": "a|b"}, "must not contain"),
        ({"redis_presence_ttl_s": 0.1}, "at least"),
        ({"redis_timeout_s": 0}, "redis_timeout_s"),
    ],
)
def test_bad_redis_settings_are_refused(settings: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        from_mapping(MsgConfig, dict(settings), "msg")
