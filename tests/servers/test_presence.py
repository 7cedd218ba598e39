"""Presence by subscription: real server processes over loopback.

A connection subscribes to the users its ``IMUsersStatReq`` names and hears of their
logins and logouts, nobody else's; at most ``max_subscriptions`` of them; until it
closes. ``presence = "broadcast"`` tells every online user of every change. Across
msg_servers the watcher hears of a change once, wherever either user is; a fake
route_server checks what msg_server asks of route_server on every connect.

Absence is proved without sleeping: msg_server answers a connection's requests and
writes its pushes in order (in a cluster the answer to a presence query crosses
route_server, after the notifies it sent before), so once :func:`notified` has its
answer, every notify the server sent before is in the client's queue.
"""

from __future__ import annotations

import concurrent.futures
import queue
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imreactor.client import Client
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.pdu.proto import im_server_pb2 as server_pb
from imreactor.servers.route.server import WATCH_ADD, WATCH_SET

from .conftest import RunningSuite, SuiteFactory, link_server_ssl
from .test_route_server import PduSocket, Received

ONLINE, OFFLINE = base.USER_STATUS_ONLINE, base.USER_STATUS_OFFLINE
Stat = tuple[int, int]


@pytest.fixture
def database(tmp_path: Path) -> str:
    """Presence never touches storage: SQLite alone (the other suites run both)."""
    return f"sqlite:///{tmp_path / 'im.db'}"


def user_ids(c: Client) -> dict[str, int]:
    """Demo user name → user id."""
    return {u.user_nick_name.lower(): u.user_id for u in c.all_users().user_list}


def watch(c: Client, *users: int) -> list[Stat]:
    """``IMUsersStatReq`` for ``users``: the ``(user_id, status)`` pairs of the answer."""
    rsp = c.request(buddy.IMUsersStatReq(user_id=0, user_id_list=users), buddy.IMUsersStatRsp)
    return [(s.user_id, s.status) for s in rsp.user_stat_list]


def drain(c: Client) -> list[Stat]:
    """The ``IMUserStatNotify`` pairs queued for ``c`` now (other pushes are dropped)."""
    out: list[Stat] = []
    while True:
        try:
            message, _ = c.pushes.get_nowait()
        except queue.Empty:
            return out
        if isinstance(message, buddy.IMUserStatNotify):
            out.append((message.user_stat.user_id, message.user_stat.status))


def notified(c: Client) -> list[Stat]:
    """Every notify the server sent ``c`` before answering a request sent now."""
    watch(c)  # names nobody: subscribes nothing
    return drain(c)


def notifies_until(c: Client, stat: Stat, timeout_s: float = 10.0) -> list[Stat]:
    """The notifies pushed to ``c`` up to and including ``stat``."""
    out: list[Stat] = []
    while not out or out[-1] != stat:
        n = c.wait_for(buddy.IMUserStatNotify, timeout_s)
        out.append((n.user_stat.user_id, n.user_stat.status))
    return out


# -- one msg_server ----------------------------------------------------------------------


def test_a_watcher_hears_of_its_users_and_nobody_else_does(suite: RunningSuite) -> None:
    alice, carol = suite.login("alice"), suite.login("carol")
    ids = user_ids(alice)
    bob, dave = ids["bob"], ids["dave"]
    assert watch(alice, bob) == [(bob, OFFLINE)]
    assert watch(carol, dave) == [(dave, OFFLINE)]  # carol watches someone, not bob
    desktop = suite.login("bob")
    assert notifies_until(alice, (bob, ONLINE)) == [(bob, ONLINE)]
    # A second device, or one of two going away, is no change.
    phone = suite.login("bob", client_type=base.CLIENT_TYPE_IOS)
    desktop.close()
    phone.close()
    assert notifies_until(alice, (bob, OFFLINE)) == [(bob, OFFLINE)]
    assert notified(alice) == []
    assert notified(carol) == []


def test_subscriptions_end_with_their_connection(suite: RunningSuite) -> None:
    first = suite.login("alice")
    carol = suite.login("carol")
    bob = user_ids(first)["bob"]
    watch(first, bob)
    first.close()
    again = suite.login("alice")  # a new connection starts with no subscription
    watch(carol, bob)
    suite.login("bob")
    notifies_until(carol, (bob, ONLINE))  # the server has handled bob's login
    assert notified(again) == []


def test_subscriptions_are_bounded_per_connection(make_suite: SuiteFactory) -> None:
    suite = make_suite({"msg": {"max_subscriptions": 2}})
    alice = suite.login("alice")
    ids = user_ids(alice)
    bob, carol, dave = ids["bob"], ids["carol"], ids["dave"]
    # Every status is answered; only the first two users are subscribed.
    assert watch(alice, bob, carol, dave) == [(bob, OFFLINE), (carol, OFFLINE), (dave, OFFLINE)]
    assert watch(alice, dave, bob) == [(dave, OFFLINE), (bob, OFFLINE)]  # still full
    suite.login("dave")  # first: its notify, if any, would come before the others
    suite.login("bob")
    suite.login("carol")
    assert notifies_until(alice, (carol, ONLINE)) == [(bob, ONLINE), (carol, ONLINE)]


def test_broadcast_tells_every_online_user(make_suite: SuiteFactory) -> None:
    suite = make_suite({"msg": {"presence": "broadcast"}})
    alice = suite.login("alice")  # asks for nothing
    bob = suite.login("bob")
    assert notifies_until(alice, (bob.user_id, ONLINE)) == [(bob.user_id, ONLINE)]
    bob.close()
    assert notifies_until(alice, (bob.user_id, OFFLINE)) == [(bob.user_id, OFFLINE)]


# -- several msg_servers -----------------------------------------------------------------


def test_a_watcher_hears_once_of_users_here_and_on_another_msg_server(
    make_suite: SuiteFactory,
) -> None:
    cluster = make_suite(msg_servers=2)
    alice = cluster.login("alice", server=0)
    dave = cluster.login("dave", server=0)  # watches nobody
    ids = user_ids(alice)
    bob, carol = ids["bob"], ids["carol"]
    watch(alice, bob, carol)
    remote = cluster.login("bob", server=1)
    assert notifies_until(alice, (bob, ONLINE)) == [(bob, ONLINE)]
    cluster.login("carol", server=0)  # on the watcher's own server: still one notify
    assert notifies_until(alice, (carol, ONLINE)) == [(carol, ONLINE)]
    remote.close()
    assert notifies_until(alice, (bob, OFFLINE)) == [(bob, OFFLINE)]
    assert notified(alice) == []
    assert notified(dave) == []


def test_a_route_server_restart_keeps_subscriptions_and_repeats_nothing(
    make_suite: SuiteFactory,
) -> None:
    cluster = make_suite({"msg": {"reconnect_delays_s": [0.2]}}, msg_servers=2)
    alice = cluster.login("alice", server=0)
    bob = cluster.login("bob", server=1)
    carol = cluster.login("carol", server=0)
    watch(alice, bob.user_id, carol.user_id)
    assert notified(alice) == []
    # The new route_server hears of bob and carol as the msg_servers link again, and
    # tells msg_server 0 that carol "came online" before it has subscribed (its link
    # is a broadcast one until then): old news for alice either way.
    cluster.restart("route_server")
    deadline = time.monotonic() + 15
    while True:  # until both links are up and route_server knows bob's server
        alice.send_text(bob.user_id, "ping")
        try:
            if isinstance(bob.pushes.get(timeout=0.3)[0], msg_pb.IMMsgData):
                break
        except queue.Empty:
            assert time.monotonic() < deadline, "delivery across servers did not resume"
    bob.close()
    assert notifies_until(alice, (bob.user_id, OFFLINE)) == [(bob.user_id, OFFLINE)]
    assert notified(alice) == []


def test_broadcast_msg_servers_still_hear_of_everyone(make_suite: SuiteFactory) -> None:
    # A msg_server that never subscribes is a broadcast link, as a TeamTalk one is.
    cluster = make_suite({"msg": {"presence": "broadcast"}}, msg_servers=2)
    alice = cluster.login("alice", server=0)
    bob = cluster.login("bob", server=1)
    assert notifies_until(alice, (bob.user_id, ONLINE)) == [(bob.user_id, ONLINE)]


# -- what msg_server asks of route_server (a fake one) ---------------------------------------


class FakeRoute:
    """A route_server played with a listening socket; one link at a time."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(15)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.link: PduSocket | None = None

    def accept(self, suite: RunningSuite) -> PduSocket:
        """The next link from ``suite``'s msg_server, over its authenticated TLS."""
        sock = self.listener.accept()[0]
        sock.settimeout(15)
        self.link = PduSocket(link_server_ssl(suite).wrap_socket(sock, server_side=True))
        return self.link

    def next_stat_req(self) -> Received:
        """The next ``IMUsersStatReq`` on the link (status updates and kicks skipped)."""
        assert self.link is not None
        while True:
            r = self.link.recv()
            if isinstance(r.message, buddy.IMUsersStatReq):
                return r
            assert isinstance(r.message, server_pb.IMUserStatusUpdate | server_pb.IMServerKickUser)

    def answer(self, req: Received, *stats: Stat) -> None:
        assert self.link is not None
        rsp = buddy.IMUsersStatRsp(user_id=req.message.user_id)
        if req.message.HasField("attach_data"):
            rsp.attach_data = req.message.attach_data
        for user_id, status in stats:
            rsp.user_stat_list.add(user_id=user_id, status=base.UserStatType.ValueType(status))
        self.link.send(rsp, req.header.seq)

    def notify(self, user_id: int, status: int) -> None:
        assert self.link is not None
        stat = base.UserStat(user_id=user_id, status=base.UserStatType.ValueType(status))
        self.link.send(buddy.IMUserStatNotify(user_stat=stat))

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
        self.listener.close()


@pytest.fixture
def fake_route() -> Iterator[FakeRoute]:
    route = FakeRoute()
    yield route
    route.close()


def test_msg_server_subscribes_route_server_to_what_its_clients_watch(
    make_suite: SuiteFactory, fake_route: FakeRoute
) -> None:
    suite = make_suite(
        {"msg": {"route_servers": [fake_route.address], "reconnect_delays_s": [0.2]}}
    )
    link = fake_route.accept(suite)
    assert link.recv().message == server_pb.IMOnlineUserInfo()
    first = fake_route.next_stat_req()  # makes the link a subscribed one, even empty
    assert (first.message.attach_data, list(first.message.user_id_list)) == (WATCH_SET, [])
    fake_route.answer(first)
    alice = suite.login("alice")
    ids = user_ids(alice)
    bob, carol = ids["bob"], ids["carol"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(watch, alice, bob)
        add = fake_route.next_stat_req()
        assert (add.message.attach_data, list(add.message.user_id_list)) == (WATCH_ADD, [bob])
        fake_route.answer(add, (bob, ONLINE))
        query = fake_route.next_stat_req()  # the client's own question, as TeamTalk's
        assert query.message.attach_data not in (WATCH_SET, WATCH_ADD)
        fake_route.answer(query, (bob, ONLINE))
        assert answer.result(10) == [(bob, ONLINE)]
    # A repeated notify reaches nobody twice; one about an unwatched user reaches nobody.
    fake_route.notify(bob, ONLINE)
    fake_route.notify(bob, OFFLINE)
    fake_route.notify(bob, OFFLINE)
    fake_route.notify(carol, ONLINE)
    fake_route.notify(bob, ONLINE)
    assert notifies_until(alice, (bob, ONLINE)) == [(bob, OFFLINE), (bob, ONLINE)]
    # A reconnect says again who is here and what is watched.
    link.close()
    link = fake_route.accept(suite)
    info = link.recv().message
    assert [(s.user_id, s.status) for s in info.user_stat_list] == [(alice.user_id, ONLINE)]
    again = fake_route.next_stat_req()
    assert (again.message.attach_data, list(again.message.user_id_list)) == (WATCH_SET, [bob])


def test_a_broadcast_msg_server_asks_route_server_for_no_subscription(
    make_suite: SuiteFactory, fake_route: FakeRoute
) -> None:
    suite = make_suite({"msg": {"route_servers": [fake_route.address], "presence": "broadcast"}})
    link = fake_route.accept(suite)
    assert link.recv().message == server_pb.IMOnlineUserInfo()
    alice = suite.login("alice")
    bob = user_ids(alice)["bob"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(watch, alice, bob)
        query = fake_route.next_stat_req()  # the first since the connect: no WATCH_SET
        assert query.message.attach_data not in (WATCH_SET, WATCH_ADD)
        fake_route.answer(query, (bob, OFFLINE))
        assert answer.result(10) == [(bob, OFFLINE)]
    carol = user_ids(alice)["carol"]
    fake_route.notify(carol, ONLINE)  # nobody asked about carol: everyone hears of her
    assert notifies_until(alice, (carol, ONLINE)) == [(carol, ONLINE)]
