"""Several msg_servers behind login_server, relayed by route_server or Redis (real processes).

Three msg_servers and one route_server (or one redis-server: the ``fabric`` parameter)
on SQLite and PostgreSQL: clients spread
by login_server; 1:1 and group messages across servers arrive exactly once and
in msg_id order; a duplicate login on another server kicks the older
connection; presence is cluster-wide (for subscribers); a msg_server killed with SIGKILL loses
nothing acknowledged (its clients log in elsewhere and catch up); a restarted
route_server gets every user re-announced and delivery resumes.
"""

from __future__ import annotations

import queue
import time
from collections import Counter

import pytest

from imreactor.client import Client
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.redis import RedisProcess
from imreactor.servers.suite import DEMO_PASSWORD

from .conftest import RunningSuite, SuiteFactory

#: Short, so that the tests about a dead msg_server's users do not wait long.
REDIS_TTL_S = 3.0


@pytest.fixture(params=["route", "redis"])
def fabric(request: pytest.FixtureRequest) -> str:
    """How the msg_servers reach each other: a route_server, or the Redis fabric."""
    name: str = request.param
    return name


@pytest.fixture
def cluster(make_suite: SuiteFactory, fabric: str, request: pytest.FixtureRequest) -> RunningSuite:
    if fabric == "route":
        return make_suite(msg_servers=3)
    redis: RedisProcess = request.getfixturevalue("redis_server")
    return make_suite(
        {"msg": {"redis_presence_ttl_s": REDIS_TTL_S}}, msg_servers=3, redis=redis.url
    )


def received(c: Client, wait_s: float = 0.5) -> list[msg_pb.IMMsgData]:
    """Every IMMsgData pushed to ``c`` until it has been quiet for ``wait_s``."""
    out: list[msg_pb.IMMsgData] = []
    while True:
        try:
            message, _ = c.pushes.get(timeout=wait_s)
        except queue.Empty:
            return out
        if isinstance(message, msg_pb.IMMsgData):
            out.append(message)


def wait_stat(c: Client, user_id: int, status: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        n = c.wait_for(buddy.IMUserStatNotify, max(deadline - time.monotonic(), 0.01))
        if (n.user_stat.user_id, n.user_stat.status) == (user_id, status):
            return


def test_login_server_spreads_clients(cluster: RunningSuite) -> None:
    ports = []
    for name in ("alice", "bob", "carol"):
        deadline = time.monotonic() + 10
        while True:
            c = Client.via_login_server(cluster.http_url)
            cluster.clients.append(c)
            if c.login(name, DEMO_PASSWORD, check=False).result_code == 0:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ports.append(c.port)
        time.sleep(0.2)  # let the user count reach login_server
    assert sorted(ports) == sorted(cluster.layout.msg_ports)


def test_one_to_one_across_servers_arrives_once_in_order(cluster: RunningSuite) -> None:
    alice = cluster.login("alice", server=0)
    alice_phone = cluster.login("alice", server=2, client_type=base.CLIENT_TYPE_IOS)
    bob = cluster.login("bob", server=1)
    acks = [alice.send_text(bob.user_id, f"x{i}") for i in range(20)]
    assert [a.msg_id for a in acks] == list(range(1, 21))
    for device in (bob, alice_phone):
        got = received(device)
        assert [m.msg_id for m in got] == list(range(1, 21)), "lost, duplicated or reordered"
        assert got[0].from_user_id == alice.user_id


def test_group_across_servers_arrives_once_per_member(cluster: RunningSuite) -> None:
    alice = cluster.login("alice", server=0)
    bob = cluster.login("bob", server=1)
    carol = cluster.login("carol", server=2)
    dave = cluster.login("dave", server=1)
    rsp = alice.request(
        group_pb.IMGroupCreateReq(
            user_id=0,
            group_type=base.GROUP_TYPE_TMP,
            group_name="c",
            group_avatar="",
            member_id_list=[bob.user_id, carol.user_id],
        ),
        group_pb.IMGroupCreateRsp,
    )
    gid = rsp.group_id
    carol.wait_for(group_pb.IMGroupChangeMemberNotify, 5)  # crossed route_server
    for i in range(10):
        alice.send_message(gid, b"%d" % i, base.MSG_TYPE_GROUP_TEXT)
    for member in (bob, carol):
        assert [m.msg_id for m in received(member)] == list(range(1, 11))
    assert received(dave, 0.2) == []  # same server as bob, not a member
    assert received(alice, 0.2) == []  # the sender's own connection gets the ack only


def test_duplicate_login_on_another_server_kicks_the_older(cluster: RunningSuite) -> None:
    first = cluster.login("alice", server=0)
    cluster.login("alice", server=1)
    kick = first.wait_for(login_pb.IMKickUser, 5)
    assert kick.kick_reason == base.KICK_REASON_DUPLICATE_USER
    assert first.wait_closed(5)


def test_presence_is_cluster_wide(cluster: RunningSuite) -> None:
    alice = cluster.login("alice", server=0)
    bob_id = next(u.user_id for u in alice.all_users().user_list if u.user_nick_name == "Bob")
    # The request subscribes alice to bob: notifies go to subscribers only.
    stat = alice.request(
        buddy.IMUsersStatReq(user_id=0, user_id_list=[bob_id, 4242]), buddy.IMUsersStatRsp
    )
    assert Counter((s.user_id, s.status) for s in stat.user_stat_list) == Counter(
        [(bob_id, base.USER_STATUS_OFFLINE), (4242, base.USER_STATUS_OFFLINE)]
    )
    bob = cluster.login("bob", server=1)
    wait_stat(alice, bob.user_id, base.USER_STATUS_ONLINE)
    stat = alice.request(
        buddy.IMUsersStatReq(user_id=0, user_id_list=[bob.user_id]), buddy.IMUsersStatRsp
    )
    assert [(s.user_id, s.status) for s in stat.user_stat_list] == [
        (bob.user_id, base.USER_STATUS_ONLINE)
    ]
    bob.close()
    wait_stat(alice, bob.user_id, base.USER_STATUS_OFFLINE)


def test_killed_msg_server_loses_nothing_acknowledged(cluster: RunningSuite) -> None:
    alice = cluster.login("alice", server=0)
    bob = cluster.login("bob", server=1)
    acked = [alice.send_text(bob.user_id, f"k{i}").msg_id for i in range(10)]
    cluster.kill("msg_server2")
    assert bob.wait_closed(5)
    # bob comes back through login_server, which forgot the dead server.
    deadline = time.monotonic() + 10
    while True:
        again = Client.via_login_server(cluster.http_url)
        cluster.clients.append(again)
        assert again.port != cluster.layout.msg_ports[1]
        if again.login("bob", DEMO_PASSWORD, check=False).result_code == 0:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    more = [alice.send_text(bob.user_id, f"k{i}").msg_id for i in range(10, 15)]
    history = again.history(alice.user_id, count=50)
    assert sorted(m.msg_id for m in history.msg_list) == acked + more
    assert [m.msg_id for m in received(again)] == more
    assert again.unread().total_cnt == 15


def test_restarted_route_server_gets_users_again(cluster: RunningSuite, fabric: str) -> None:
    if fabric != "route":
        pytest.skip("route_server only (Redis restarts: test_redis_cluster.py)")
    alice = cluster.login("alice", server=0)
    bob = cluster.login("bob", server=1)
    alice.send_text(bob.user_id, "before")
    assert [m.msg_data for m in received(bob)] == [b"before"]
    cluster.restart("route_server")
    # The msg_servers reconnect and re-announce; messages flow again.
    deadline = time.monotonic() + 15
    while True:
        alice.send_text(bob.user_id, "after")
        if [m.msg_data for m in received(bob, 0.3)] == [b"after"]:
            break
        assert time.monotonic() < deadline, "delivery across servers did not resume"
    stat = alice.request(
        buddy.IMUsersStatReq(user_id=0, user_id_list=[bob.user_id]), buddy.IMUsersStatRsp
    )
    assert stat.user_stat_list[0].status == base.USER_STATUS_ONLINE


@pytest.mark.parametrize("group", [False, True])
def test_concurrent_senders_across_servers_stay_in_msg_id_order(
    make_suite: SuiteFactory, group: bool, fabric: str, request: pytest.FixtureRequest
) -> None:
    # Senders of one conversation on different msg_servers store through different
    # db_proxy links and reach others by different paths; every connection must
    # still see the conversation (messages and its own acks) in msg_id order.
    from imreactor.accounts import create_users
    from imreactor.client.load import LoadOptions, run_load

    redis = request.getfixturevalue("redis_server").url if fabric == "redis" else ""
    suite = make_suite(
        {"msg": {"msg_rate_per_s": 100000.0, "msg_burst": 100000}}, msg_servers=3, redis=redis
    )
    create_users(suite.layout.database_url, [f"load{i}" for i in range(12)], "pw")
    servers = [f"127.0.0.1:{p}" for p in suite.layout.msg_ports]
    if group:
        options = LoadOptions(
            msg_servers=servers,
            password="pw",
            group_size=12,
            senders=4,
            devices=2,
            in_flight=4,
            count=400,
        )
    else:
        options = LoadOptions(
            msg_servers=servers,
            users=12,
            password="pw",
            duplex=True,
            devices=2,
            in_flight=4,
            count=600,
        )
    report = run_load(options)
    assert report.ok, report.text()


def test_a_connection_told_the_latest_id_does_not_wait_for_older_ones(
    make_suite: SuiteFactory,
) -> None:
    # A long reorder wait: a first message above id 1 would be held for all of it.
    suite = make_suite({"msg": {"reorder_wait_s": 60.0}}, msg_servers=2)
    alice = suite.login("alice", server=0)
    bob = suite.login("bob", server=0)
    for i in range(3):
        alice.send_text(bob.user_id, f"before {i}")
    bob_web = suite.login("bob", server=1, client_type=base.CLIENT_TYPE_IOS)
    latest = bob_web.request(
        msg_pb.IMGetLatestMsgIdReq(
            user_id=0, session_type=base.SESSION_TYPE_SINGLE, session_id=alice.user_id
        ),
        msg_pb.IMGetLatestMsgIdRsp,
    )
    assert latest.latest_msg_id == 3
    ack = alice.send_text(bob.user_id, "after")
    assert ack.msg_id == 4
    got = bob_web.wait_for(msg_pb.IMMsgData, 10.0)  # well inside the 60 s of holding
    assert got.msg_id == 4
