"""What only the Redis fabric has: Redis going away and coming back, a dead msg_server's
presence expiring, a config that names a bad Redis, a malformed inbox entry.

(What both fabrics share runs on both in test_cluster.py.)
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

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


def inbox_of(suite: RunningSuite, server: int) -> bytes:
    """The relay stream of msg_server number ``server`` (its node name is ip1:port)."""
    return f"im:n:127.0.0.1:{suite.layout.msg_ports[server]}:inbox".encode()


def redis_call(redis: RedisProcess, *parts: bytes) -> bytes:
    """One command on a connection of its own; the raw reply (short replies only)."""
    with socket.create_connection(("127.0.0.1", redis.port)) as s:
        s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return s.recv(4096)


def stream_length(redis: RedisProcess, stream: bytes) -> int:
    reply = redis_call(redis, b"XLEN", stream)
    assert reply.startswith(b":"), reply
    return int(reply[1:])


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
    inbox = inbox_of(cluster, 1)
    for fields in (b"c 1793 p \xff\xff\xff", b"c notanumber p x", b"x y"):
        assert redis_call(redis_server, b"XADD", inbox, b"*", *fields.split(b" ")).startswith(b"$")
    alice.send_text(bob.user_id, "still")
    assert [m.msg_data for m in received(bob)] == [b"still"]
    assert "inbox entry" in cluster.log_text("msg_server2")


def test_the_fabric_runs_over_tls(
    make_suite: SuiteFactory, tls_redis_server: tuple[RedisProcess, Path]
) -> None:
    redis, ca_file = tls_redis_server
    assert redis.url.startswith("rediss://")
    suite = make_suite({"msg": {"redis_ca_file": str(ca_file)}}, msg_servers=2, redis=redis.url)
    alice = suite.login("alice", server=0)
    bob = suite.login("bob", server=1)
    alice.send_text(bob.user_id, "over tls")
    assert [m.msg_data for m in received(bob)] == [b"over tls"]


def test_a_rediss_server_no_trusted_ca_signed_is_refused(
    make_suite: SuiteFactory, tls_redis_server: tuple[RedisProcess, Path]
) -> None:
    # No redis_ca_file: the system's CAs, which never signed the test CA's certificate.
    suite = make_suite(msg_servers=2, redis=tls_redis_server[0].url)
    assert refused_with(suite, "alice", base.REFUSE_REASON_NO_ROUTE_SERVER)
    assert "CERTIFICATE_VERIFY_FAILED" in suite.log_text("msg_server1")


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
        ({"redis": "redis://h", "redis_ca_file": "/etc/hostname"}, "only with a rediss://"),
        ({"redis": "rediss://h", "redis_ca_file": "/nonexistent/ca.pem"}, "no such file"),
    ],
)
def test_bad_redis_settings_are_refused(settings: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        from_mapping(MsgConfig, dict(settings), "msg")


#: The smallest redis_stream_max the config accepts: a flood of a few hundred messages
#: then trims. ``MAXLEN ~`` trims whole stream nodes (100 entries by Redis's default
#: stream-node-max-entries), so a stream keeps up to that many more.
STREAM_MAX = 100
TRIM_SLACK = 100


@pytest.fixture
def small_streams(make_suite: SuiteFactory, redis_server: RedisProcess) -> RunningSuite:
    # A long TTL: a msg_server stopped on purpose must not be reaped meanwhile.
    return make_suite(
        {"msg": {"redis_stream_max": STREAM_MAX, "redis_presence_ttl_s": 60.0}},
        msg_servers=2,
        redis=redis_server.url,
    )


def test_a_flood_keeps_the_stream_bounded_and_a_live_reader_loses_nothing(
    small_streams: RunningSuite, redis_server: RedisProcess
) -> None:
    alice = small_streams.login("alice", server=0)
    bob = small_streams.login("bob", server=1)
    sent = [alice.send_text(bob.user_id, f"m{i}").msg_id for i in range(3 * STREAM_MAX)]
    got = [m.msg_id for m in received(bob, 1.0)]
    assert got == sent, "a live reader lost, doubled or reordered relays under trimming"
    length = stream_length(redis_server, inbox_of(small_streams, 1))
    assert STREAM_MAX <= length <= STREAM_MAX + TRIM_SLACK, length


def test_a_stalled_reader_loses_only_the_oldest_beyond_the_bound(
    small_streams: RunningSuite, redis_server: RedisProcess
) -> None:
    """The documented limit: a msg_server that stops reading while more than
    redis_stream_max newer relays arrive for it may lose the oldest (they are in the
    database: its clients see them when they next sync). It gets the newest ones, in
    order, once each."""
    alice = small_streams.login("alice", server=0)
    bob = small_streams.login("bob", server=1)
    alice.send_text(bob.user_id, "before")
    assert [m.msg_data for m in received(bob)] == [b"before"]
    stalled = small_streams.children["msg_server2"].proc
    stalled.send_signal(signal.SIGSTOP)
    try:
        sent = [alice.send_text(bob.user_id, f"m{i}").msg_id for i in range(3 * STREAM_MAX)]
        length = stream_length(redis_server, inbox_of(small_streams, 1))
        assert STREAM_MAX <= length <= STREAM_MAX + TRIM_SLACK, length
    finally:
        stalled.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 20
    got: list[int] = []
    while sent[-1] not in got:
        got += [m.msg_id for m in received(bob, 0.5)]
        assert time.monotonic() < deadline, "the newest relays never arrived"
    # In order and once each; the newest redis_stream_max all there. (What Redis had
    # handed to the stalled reader's blocked read before it stopped comes too.)
    assert got == sorted(set(got)) and set(got) <= set(sent), got
    assert got[-STREAM_MAX:] == sent[-STREAM_MAX:], "the newest relays did not all arrive"


def watch_set(redis: RedisProcess, suite: RunningSuite, server: int) -> set[bytes]:
    key = f"im:n:127.0.0.1:{suite.layout.msg_ports[server]}:watch".encode()
    reply = redis_call(redis, b"SMEMBERS", key)
    assert reply.startswith(b"*"), reply
    return set(reply.split(b"\r\n")[2:-1:2])


def test_status_notifies_go_only_to_msg_servers_with_subscribers(
    cluster: RunningSuite, redis_server: RedisProcess
) -> None:
    alice = cluster.login("alice", server=0)
    carol = cluster.login("carol", server=2)
    bob_id = next(u.user_id for u in alice.all_users().user_list if u.user_nick_name == "Bob")
    alice.request(buddy.IMUsersStatReq(user_id=0, user_id_list=[bob_id]), buddy.IMUsersStatRsp)
    assert watch_set(redis_server, cluster, 0) == {str(bob_id).encode()}
    assert watch_set(redis_server, cluster, 2) == set()
    watched, unwatched = (stream_length(redis_server, inbox_of(cluster, i)) for i in (0, 2))
    bob = cluster.login("bob", server=1)
    wait_stat(alice, bob.user_id, base.USER_STATUS_ONLINE)
    # Relayed in one script call with alice's copy: had carol's server been sent one,
    # it would be in its inbox now.
    assert stream_length(redis_server, inbox_of(cluster, 0)) == watched + 1
    assert stream_length(redis_server, inbox_of(cluster, 2)) == unwatched
    carol.close()
    # Once alice's connection is gone, a heartbeat (a third of the TTL) unsubscribes.
    alice.close()
    deadline = time.monotonic() + REDIS_TTL_S * 2
    while watch_set(redis_server, cluster, 0):
        assert time.monotonic() < deadline, "the subscription outlived its connection"
        time.sleep(0.1)


def test_broadcast_msg_servers_subscribe_to_everyone(
    make_suite: SuiteFactory, redis_server: RedisProcess
) -> None:
    suite = make_suite({"msg": {"presence": "broadcast"}}, msg_servers=2, redis=redis_server.url)
    alice = suite.login("alice", server=0)
    assert watch_set(redis_server, suite, 0) == {b"*"}
    bob = suite.login("bob", server=1)
    wait_stat(alice, bob.user_id, base.USER_STATUS_ONLINE)  # asked for nothing, told anyway
