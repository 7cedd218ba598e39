"""The blocking SDK against a real suite (server processes, SQLite): the IM API, AES texts,
groups, callbacks, reconnect with catch-up when msg_server is restarted, and all of it
over WebSocket (msg_server's ws_port, found through login_server's wsURL).

One storage backend is enough here: the client does not know which one serves it
(tests/servers runs the servers on both).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from servers.conftest import RunningSuite, SuiteFactory, free_ports

from imreactor.client import Client, ClientError
from imreactor.client.blocking import ClientStatus, LoginRefused
from imreactor.client.crypto import DEFAULT_AES_KEY, TextCipher
from imreactor.net import Backoff
from imreactor.pdu.kinds import NOT_READY
from imreactor.pdu.password import password_digest
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.pdu.proto import im_other_pb2 as other_pb
from imreactor.servers.suite import DEMO_PASSWORD
from imreactor.storage import open_storage
from imreactor.storage.records import GroupType

from .recording_proxy import RecordingProxy

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def login(
    suite: RunningSuite,
    name: str,
    password: str = DEMO_PASSWORD,
    client_type: int = base.CLIENT_TYPE_WINDOWS,
    **kw: Any,
) -> Client:
    """Log ``name`` in through login_server, retrying while the suite is still linking up."""
    deadline = time.monotonic() + 10
    while True:
        try:
            c = Client.via_login_server(suite.http_url, **kw)
        except ClientError:
            assert time.monotonic() < deadline, "login_server offered no msg_server"
            time.sleep(0.1)
            continue
        suite.clients.append(c)
        res = c.login(name, password, client_type, check=False)
        if res.result_code == 0:
            return c
        c.close()
        assert res.result_code in NOT_READY and time.monotonic() < deadline, res
        time.sleep(0.1)


def messages(c: Client, idle_s: float = 0.5) -> list[Any]:
    """The IMMsgData queued on ``c`` until nothing more comes for ``idle_s``."""
    got: list[Any] = []
    while True:
        try:
            message, seq = c.next_push(idle_s)
        except queue.Empty:
            return got
        if isinstance(message, msg_pb.IMMsgData):
            assert seq == 0
            got.append(message)


def wait_until(predicate: Any, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- the IM API ----------------------------------------------------------------------------


def test_login_send_receive_history_and_read_ack(suite: RunningSuite) -> None:
    alice, bob = login(suite, "alice"), login(suite, "bob")
    assert alice.is_online and alice.status is ClientStatus.ONLINE
    assert alice.user_info.user_nick_name == "Alice"
    ack = alice.send_text(bob.user_id, "hi bob")
    assert (ack.session_id, ack.msg_id) == (bob.user_id, 1)
    got = bob.wait_for(msg_pb.IMMsgData, 5)
    assert (got.from_user_id, got.to_session_id, got.msg_id) == (alice.user_id, bob.user_id, 1)
    assert bob.decode_text(got.msg_data) == "hi bob"
    assert bob.unread().total_cnt == 1
    (m,) = bob.history(alice.user_id).msg_list
    assert (m.msg_id, m.from_session_id, m.msg_data) == (1, alice.user_id, b"hi bob")
    bob.read_ack(alice.user_id, 1)
    wait_until(lambda: bob.unread().total_cnt == 0, 5, "the read ack")


def test_aes_texts_travel_encoded_and_decode_with_the_helper(suite: RunningSuite) -> None:
    key = b"k" * 32
    alice = login(suite, "alice", aes_key=key)
    bob = login(suite, "bob", aes_key=key)
    plain_bob = login(suite, "bob", client_type=base.CLIENT_TYPE_ANDROID)
    alice.send_text(bob.user_id, "秘密 secret")
    got = bob.wait_for(msg_pb.IMMsgData, 5)
    assert bob.decode_text(got.msg_data) == "秘密 secret"
    # On the wire and in storage: base64 of AES-256-ECB under the shared key.
    raw = plain_bob.wait_for(msg_pb.IMMsgData, 5).msg_data
    assert raw == TextCipher(key).encode("秘密 secret")
    assert bob.history(alice.user_id).msg_list[0].msg_data == raw
    with pytest.raises(ValueError, match="wrong key"):
        TextCipher(DEFAULT_AES_KEY).decode_text(raw)
    with pytest.raises(ValueError):
        plain_bob.decode_text(b"\xff not utf-8")


def test_users_sessions_presence_and_departments(suite: RunningSuite) -> None:
    store = open_storage(suite.layout.database_url)
    try:
        dept = store.add_department("Engineering", priority=3)
    finally:
        store.close()
    alice, bob = login(suite, "alice"), login(suite, "bob")
    users = {u.user_nick_name: u.user_id for u in alice.all_users().user_list}
    assert {"Alice", "Bob", "Carol", "Dave"} <= set(users)
    infos = alice.users_info([users["Carol"], users["Dave"], 9999])
    assert sorted(u.user_nick_name for u in infos.user_info_list) == ["Carol", "Dave"]
    stats = {
        s.user_id: s.status
        for s in alice.users_status([bob.user_id, users["Carol"]]).user_stat_list
    }
    assert stats == {bob.user_id: base.USER_STATUS_ONLINE, users["Carol"]: base.USER_STATUS_OFFLINE}
    assert alice.recent_sessions().contact_session_list == []
    alice.send_text(bob.user_id, "one")
    alice.send_text(users["Carol"], "two")
    sessions = alice.recent_sessions().contact_session_list
    assert {(s.session_id, s.latest_msg_id) for s in sessions} == {
        (bob.user_id, 1),
        (users["Carol"], 1),
    }
    depts = alice.departments().dept_list
    assert [(d.dept_id, d.dept_name, d.priority) for d in depts] == [
        (dept.dept_id, "Engineering", 3)
    ]


def test_groups_create_list_change_and_send(suite: RunningSuite) -> None:
    alice, bob, carol = login(suite, "alice"), login(suite, "bob"), login(suite, "carol")
    store = open_storage(suite.layout.database_url)
    try:
        normal = store.create_group(
            alice.user_id, "everyone", group_type=GroupType.NORMAL, member_ids=[bob.user_id]
        )
    finally:
        store.close()
    created = alice.create_group("lunch", [bob.user_id, carol.user_id])
    gid = created.group_id
    assert sorted(created.user_id_list) == sorted([alice.user_id, bob.user_id, carol.user_id])
    notify = bob.wait_for(group_pb.IMGroupChangeMemberNotify, 5)
    assert notify.group_id == gid

    assert [g.group_id for g in alice.groups(include_temporary=False)] == [normal.group_id]
    mine = {g.group_id: g for g in alice.groups()}
    assert set(mine) == {normal.group_id, gid}
    assert (mine[gid].group_name, mine[gid].group_type) == ("lunch", base.GROUP_TYPE_TMP)
    assert [g.group_id for g in carol.groups()] == [gid]

    ack = bob.send_group_text(gid, "pizza?")
    assert (ack.session_type, ack.session_id, ack.msg_id) == (base.SESSION_TYPE_GROUP, gid, 1)
    for member in (alice, carol):
        got = member.wait_for(msg_pb.IMMsgData, 5)
        assert (got.msg_type, got.to_session_id, got.from_user_id) == (
            base.MSG_TYPE_GROUP_TEXT,
            gid,
            bob.user_id,
        )
        assert member.decode_text(got.msg_data) == "pizza?"

    rsp = alice.change_group_members(gid, [carol.user_id], base.GROUP_MODIFY_TYPE_DEL)
    assert sorted(rsp.cur_user_id_list) == sorted([alice.user_id, bob.user_id])
    assert carol.wait_for(group_pb.IMGroupChangeMemberNotify, 5).chg_user_id_list == [carol.user_id]
    assert carol.groups() == []
    with pytest.raises(ClientError, match="not changed"):
        bob.change_group_members(gid, [alice.user_id], base.GROUP_MODIFY_TYPE_DEL)
    with pytest.raises(ClientError, match="not changed"):
        carol.change_group_members(gid, [carol.user_id])


def test_callbacks_see_every_push_in_order_and_may_block(suite: RunningSuite) -> None:
    seen: list[int] = []
    statuses: list[ClientStatus] = []
    done = threading.Event()
    holder: list[Client] = []

    def on_message(msg: Any) -> None:
        seen.append(msg.msg_id)
        holder[0].read_ack(msg.from_user_id, msg.msg_id)  # a blocking call from a callback
        if len(seen) == 5:
            done.set()

    bob = login(
        suite,
        "bob",
        on_message=on_message,
        on_status=statuses.append,
        queue_pushes=False,
    )
    holder.append(bob)
    alice = login(suite, "alice")
    for i in range(5):
        alice.send_text(bob.user_id, f"m{i}")
    assert done.wait(5)
    assert seen == [1, 2, 3, 4, 5]
    assert bob.pushes.empty()
    wait_until(lambda: bob.unread().total_cnt == 0, 5, "read acks from the callback")
    bob.close()
    assert statuses == [ClientStatus.ONLINE, ClientStatus.CLOSED]


def test_bad_credentials_and_unreachable_login_server(suite: RunningSuite) -> None:
    login(suite, "bob")  # the suite is up
    c = Client.via_login_server(suite.http_url)
    suite.clients.append(c)
    with pytest.raises(LoginRefused, match="unknown user or wrong password") as err:
        c.login("alice", "not the password")
    assert err.value.result_code == base.REFUSE_REASON_DB_VALIDATE_FAILED
    assert c.wait_closed(5)
    with pytest.raises(ClientError, match="cannot reach login_server"):
        Client.via_login_server("http://127.0.0.1:1")


# -- reconnect and catch-up ----------------------------------------------------------------


class Sender(threading.Thread):
    """Sends numbered texts from a reconnecting client until stopped; keeps the acked ids."""

    def __init__(self, client: Client, to: int, interval_s: float = 0.03) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.to = to
        self.interval_s = interval_s
        self.acked: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.wait(self.interval_s):
            try:
                ack = self.client.send_text(self.to, f"n{n}")
            except (ClientError, TimeoutError):
                continue  # offline or reconnecting: try again shortly
            finally:
                n += 1
            self.acked.append(ack.msg_id)


def test_reconnect_catches_up_after_msg_server_is_killed(suite: RunningSuite) -> None:
    statuses: list[ClientStatus] = []
    # Bob's first reconnect attempt waits 2 s, so messages are stored while he is away;
    # Alice comes back at once and keeps sending before, during and after his outage.
    bob = login(
        suite,
        "bob",
        reconnect=True,
        backoff=Backoff([2.0, 0.3], jitter=0),
        on_status=statuses.append,
    )
    alice = login(suite, "alice", reconnect=True, backoff=Backoff([0.2], jitter=0))
    carol_id = next(u.user_id for u in alice.all_users().user_list if u.user_nick_name == "Carol")
    gid = alice.create_group("ops", [bob.user_id, carol_id]).group_id
    sender = Sender(alice, bob.user_id)
    sender.start()
    wait_until(lambda: len(sender.acked) >= 10, what="traffic before the restart")

    suite.restart("msg_server", hard=True)
    assert bob.wait_closed(5) and not bob.is_online
    assert alice.wait_online(15), "alice did not come back"
    alice.send_group_text(gid, "while bob was away")
    wait_until(lambda: not bob.is_connected and len(sender.acked) >= 40, what="traffic")
    assert bob.wait_online(15), f"bob did not come back: {statuses}"
    n_acked = len(sender.acked)
    wait_until(lambda: len(sender.acked) >= n_acked + 10, what="traffic after the reconnect")
    sender.stop.set()
    sender.join(5)

    got = messages(bob, 1.0)
    single = [m.msg_id for m in got if m.msg_type == base.MSG_TYPE_SINGLE_TEXT]
    group = [m for m in got if m.msg_type == base.MSG_TYPE_GROUP_TEXT]
    # Everything stored in the conversation arrived exactly once, in order: acked or not
    # (a message stored just before the kill may have lost its ack, not its delivery).
    latest = bob.history(alice.user_id, count=1).msg_list[0].msg_id
    assert single == list(range(1, latest + 1))
    assert set(sender.acked) <= set(single)
    assert [(m.to_session_id, bob.decode_text(m.msg_data)) for m in group] == [
        (gid, "while bob was away")
    ]
    assert bob.reconnects == 1 and bob.caught_up > 0
    assert statuses[:2] == [ClientStatus.ONLINE, ClientStatus.OFFLINE]
    assert ClientStatus.RECONNECTING in statuses and statuses[-1] is ClientStatus.ONLINE


def test_reconnect_to_the_same_address_without_login_server(suite: RunningSuite) -> None:
    port = suite.layout.msg_ports[0]
    bob = Client.connect("127.0.0.1", port, reconnect=True, backoff=Backoff([0.3], jitter=0))
    suite.clients.append(bob)
    bob.login("bob", DEMO_PASSWORD)
    alice = login(suite, "alice")
    alice.send_text(bob.user_id, "before")
    suite.restart("msg_server")  # SIGTERM: the server closes its connections itself
    assert bob.wait_closed(5)
    alice = login(suite, "alice")
    alice.send_text(bob.user_id, "during")
    assert bob.wait_online(15)
    alice.send_text(bob.user_id, "after")
    texts = [bob.decode_text(m.msg_data) for m in messages(bob)]
    assert texts == ["before", "during", "after"]
    assert (bob.host, bob.port) == ("127.0.0.1", port)


def test_kick_is_reported_and_not_reconnected(suite: RunningSuite) -> None:
    kicks: list[Any] = []
    statuses: list[ClientStatus] = []
    bob = login(
        suite,
        "bob",
        reconnect=True,
        backoff=Backoff([0.1], jitter=0),
        on_kick=kicks.append,
        on_status=statuses.append,
    )
    assert bob.may_reconnect  # online, with reconnect=True: a drop would be reconnected
    login(suite, "bob")  # the same class of client: the older one is kicked
    kick = bob.wait_for(login_pb.IMKickUser, 5)
    assert kick.kick_reason == base.KICK_REASON_DUPLICATE_USER
    assert bob.wait_closed(5)
    wait_until(lambda: bob.status is ClientStatus.KICKED, 5, "the kicked status")
    wait_until(lambda: not bob.may_reconnect, 5, "the reconnect thread to end")
    assert not bob.is_connected and bob.reconnects == 0
    wait_until(lambda: len(kicks) == 1, 5, "on_kick")
    assert statuses == [ClientStatus.ONLINE, ClientStatus.KICKED]


def test_reconnect_stops_when_the_password_was_changed(suite: RunningSuite) -> None:
    statuses: list[ClientStatus] = []
    bob = login(
        suite, "bob", reconnect=True, backoff=Backoff([0.3], jitter=0), on_status=statuses.append
    )
    store = open_storage(suite.layout.database_url)
    try:
        store.change_password(bob.user_id, password_digest("a new one"))
    finally:
        store.close()
    suite.restart("msg_server", hard=True)
    wait_until(lambda: bob.status is ClientStatus.FAILED, 15, "the failed status")
    assert isinstance(bob.closed_with, LoginRefused)
    wait_until(lambda: statuses[-1] is ClientStatus.FAILED, 5, "on_status(FAILED)")
    wait_until(lambda: not bob.may_reconnect, 5, "the reconnect thread to end")
    assert bob.status is ClientStatus.FAILED and statuses[-1] is ClientStatus.FAILED
    assert not bob.is_connected and not bob.is_online and bob.reconnects == 0
    assert ClientStatus.RECONNECTING in statuses


# -- presence subscriptions ----------------------------------------------------------------


@pytest.fixture
def proxy(suite: RunningSuite) -> Iterator[RecordingProxy]:
    """A recording proxy in front of the suite's msg_server."""
    p = RecordingProxy(("127.0.0.1", suite.layout.msg_ports[0]))
    yield p
    p.close()


def notifies(c: Client, until: tuple[int, int]) -> list[tuple[int, int]]:
    """``(user_id, status)`` of the IMUserStatNotify pushes on ``c``, up to ``until``."""
    got: list[tuple[int, int]] = []
    while not got or got[-1] != until:
        stat = c.wait_for(buddy.IMUserStatNotify, 10).user_stat
        got.append((stat.user_id, stat.status))
    return got


def test_watch_stays_within_its_limit_and_subscribes_again_after_each_reconnect(
    suite: RunningSuite, proxy: RecordingProxy
) -> None:
    bob = login(suite, "bob")
    ids = {u.user_nick_name: u.user_id for u in bob.all_users().user_list}
    b, c, d = ids["Bob"], ids["Carol"], ids["Dave"]
    alice = Client.connect(
        "127.0.0.1", proxy.port, reconnect=True, watch_limit=2, backoff=Backoff([0.1], jitter=0)
    )
    suite.clients.append(alice)
    alice.login("alice", DEMO_PASSWORD)

    assert alice.watch([b, c, d]) == {b: base.USER_STATUS_ONLINE, c: base.USER_STATUS_OFFLINE}
    assert alice.watched == {b, c}
    assert alice.watch([d]) == {}  # over the limit: not remembered, nothing sent
    assert alice.watch([c]) == {c: base.USER_STATUS_OFFLINE}
    assert alice.watched == {b, c}
    (first,) = proxy.messages(buddy.IMUsersStatReq)
    assert [list(r.user_id_list) for r in first] == [[b, c], [c]]

    proxy.drop()
    assert alice.wait_closed(5)
    assert alice.wait_online(15), "alice did not come back"
    _, again = proxy.messages(buddy.IMUsersStatReq)
    assert [list(r.user_id_list) for r in again] == [[b, c]]
    # Re-subscribed right after the login, before the catch-up asks for anything.
    kinds = [type(m).__name__ for m in proxy.sent[1] if not isinstance(m, other_pb.IMHeartBeat)]
    assert kinds[:2] == ["IMLoginReq", "IMUsersStatReq"]
    # The statuses then are queued as notifies; later changes come live.
    login(suite, "carol")
    assert notifies(alice, (c, base.USER_STATUS_ONLINE)) == [
        (b, base.USER_STATUS_ONLINE),
        (c, base.USER_STATUS_OFFLINE),
        (c, base.USER_STATUS_ONLINE),
    ]
    with pytest.raises(ValueError, match="at least 0"):
        Client.connect("127.0.0.1", proxy.port, watch_limit=-1)


# -- over WebSocket --------------------------------------------------------------------------


def test_a_websocket_client_chats_with_a_tcp_client_and_reconnects(
    make_suite: SuiteFactory,
) -> None:
    (ws_port,) = free_ports(1)
    suite = make_suite(overrides={"msg": {"ws_port": ws_port}})
    web = login(suite, "alice", ws=True, reconnect=True, backoff=Backoff([0.3], jitter=0))
    assert (web.port, web.websocket) == (ws_port, "/")
    tcp = login(suite, "bob")
    ack = web.send_text(tcp.user_id, "over a WebSocket")
    got = tcp.wait_for(msg_pb.IMMsgData, 5)
    assert (got.msg_id, got.from_user_id, got.msg_data) == (
        ack.msg_id,
        web.user_id,
        b"over a WebSocket",
    )
    tcp.send_text(web.user_id, "over TCP")
    got = web.wait_for(msg_pb.IMMsgData, 5)
    assert (got.from_user_id, got.msg_data) == (tcp.user_id, b"over TCP")
    assert [m.msg_data for m in web.history(tcp.user_id).msg_list] == [
        b"over TCP",
        b"over a WebSocket",
    ]

    # A reconnect asks login_server again and takes the WebSocket again; what was sent
    # meanwhile is caught up.
    suite.restart("msg_server", hard=True)
    assert web.wait_closed(5)
    tcp.close()
    tcp = login(suite, "bob")
    tcp.send_text(web.user_id, "while you were away")
    assert web.wait_online(15), web.closed_with
    assert (web.port, web.websocket, web.reconnects) == (ws_port, "/", 1)
    got = web.wait_for(msg_pb.IMMsgData, 5)
    assert got.msg_data == b"while you were away"


def test_websocket_wanted_but_not_offered_is_one_line(suite: RunningSuite) -> None:
    login(suite, "dave")  # the suite is up; its msg_server has no ws_port
    with pytest.raises(ClientError, match=r"offers msg_server 127\.0\.0\.1 without wsURL"):
        Client.via_login_server(suite.http_url, ws=True)
