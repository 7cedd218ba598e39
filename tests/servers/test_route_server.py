"""route_server as a real process, with msg_servers played by plain sockets.

Each test starts its own route_server (``imreactor route-server -c FILE``) and
connects a few fake msg_servers that speak the route protocol with encoded PDUs. A fake
that never sends ``WATCH_SET`` is a broadcast link, as an original TeamTalk msg_server is.

Checking that a link received *nothing* needs no sleeping: route_server handles
one link's PDUs in order and writes to each link in order, so after
``origin.sync()`` has returned (route_server answered a request sent after the
PDUs under test), ``other.sync()`` returns everything route_server wrote to
``other`` because of them.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from google.protobuf.message import Message

from imreactor.config import ConfigError, dump, from_mapping
from imreactor.pdu.header import HEADER_LEN, Header, encode_pdu, parse_header
from imreactor.pdu.imconn import HEARTBEAT_PDU
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy_pb
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.pdu.proto import im_server_pb2 as server_pb
from imreactor.pdu.proto import im_switch_service_pb2 as switch_pb
from imreactor.pdu.registry import ids_of, message_class
from imreactor.servers.route.config import RouteConfig
from imreactor.servers.route.server import WATCH_ADD, WATCH_SET, Presence
from imreactor.servers.suite import Child, start_child, stop_children

from .conftest import free_ports

WIN, MAC, IOS, ANDROID = (
    base.CLIENT_TYPE_WINDOWS,
    base.CLIENT_TYPE_MAC,
    base.CLIENT_TYPE_IOS,
    base.CLIENT_TYPE_ANDROID,
)
ONLINE, OFFLINE = base.USER_STATUS_ONLINE, base.USER_STATUS_OFFLINE
WAIT_S = 5.0


class Received(NamedTuple):
    header: Header
    message: Any
    frame: bytes


class PduSocket:
    """One end of a TeamTalk link played with a blocking socket (``WAIT_S`` timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(WAIT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self.heartbeats = 0

    def send(self, message: Message, seq: int = 0) -> bytes:
        frame = encode_pdu(*ids_of(message), seq, message.SerializePartialToString())
        self.sock.sendall(frame)
        return frame

    def recv_frame(self) -> bytes:
        """The next whole PDU (heartbeats included); raises on EOF or after WAIT_S."""
        while True:
            if len(self._buf) >= HEADER_LEN:
                length = parse_header(self._buf).length
                if len(self._buf) >= length:
                    frame = bytes(self._buf[:length])
                    del self._buf[:length]
                    return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the peer closed the link")
            self._buf += chunk

    def recv(self) -> Received:
        """The next PDU that is not a heartbeat, decoded."""
        while True:
            frame = self.recv_frame()
            if frame == HEARTBEAT_PDU:
                self.heartbeats += 1
                continue
            header = parse_header(frame)
            cls = message_class(header.service_id, header.command_id)
            assert cls is not None, header
            message = cls()
            message.ParseFromString(frame[HEADER_LEN:])
            return Received(header, message, frame)

    def wait_for(self, cls: type[Message]) -> tuple[Received, list[Received]]:
        """The next ``cls`` PDU, and what came before it."""
        before: list[Received] = []
        while True:
            r = self.recv()
            if isinstance(r.message, cls):
                return r, before
            before.append(r)

    def close(self) -> None:
        self.sock.close()


class Peer(PduSocket):
    """One msg_server played with a blocking socket."""

    _sync_seq = itertools.count(60000)

    def __init__(self, port: int) -> None:
        super().__init__(socket.create_connection(("127.0.0.1", port), timeout=WAIT_S))
        role = self.recv()  # route_server's first word on every link
        assert isinstance(role.message, server_pb.IMRoleSet), role
        self.master = role.message.master

    # -- sending ---------------------------------------------------------------------------

    def hosts(self, *users: tuple[int, int]) -> None:
        info = server_pb.IMOnlineUserInfo()
        for user_id, client_type in users:
            info.user_stat_list.add(
                user_id=user_id, status=ONLINE, client_type=base.ClientType.ValueType(client_type)
            )
        self.send(info)

    def status(self, user_id: int, client_type: int, status: int) -> None:
        self.send(
            server_pb.IMUserStatusUpdate(
                user_status=status,
                user_id=user_id,
                client_type=base.ClientType.ValueType(client_type),
            )
        )

    # -- receiving -------------------------------------------------------------------------

    def sync(self) -> list[Received]:
        """Everything route_server sent here before answering a request sent now."""
        seq = next(self._sync_seq)
        self.send(buddy_pb.IMUsersStatReq(user_id=0, attach_data=b"sync"), seq)
        got: list[Received] = []
        while True:
            r = self.recv()
            if isinstance(r.message, buddy_pb.IMUsersStatRsp) and r.header.seq == seq:
                return got
            got.append(r)

    def watch(self, *user_ids: int, replace: bool) -> list[tuple[int, int]]:
        """Subscribe this link (``WATCH_SET`` if ``replace``, else ``WATCH_ADD``).

        Returns the ``(user_id, status)`` pairs of the answer, which must come first.
        """
        mark = WATCH_SET if replace else WATCH_ADD
        self.send(buddy_pb.IMUsersStatReq(user_id=0, user_id_list=user_ids, attach_data=mark), 9)
        rsp, before = self.wait_for(buddy_pb.IMUsersStatRsp)
        assert before == [] and rsp.header.seq == 9
        assert rsp.message.attach_data == mark  # answered like any IMUsersStatReq
        return [(s.user_id, s.status) for s in rsp.message.user_stat_list]

    def closed_by_peer(self) -> bool:
        """True once route_server closes the link (data still pending is discarded)."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True


def settle(*peers: Peer) -> None:
    """Let route_server handle everything the peers sent, and drop what it answered.

    After one round every peer's PDUs are handled; after the second, everything they
    caused on any link has been read.
    """
    for _ in range(2):
        for p in peers:
            p.sync()


def stats(received: list[Received]) -> list[tuple[int, int]]:
    """``(user_id, status)`` of each ``IMUserStatNotify`` in ``received``, and nothing else."""
    assert all(isinstance(r.message, buddy_pb.IMUserStatNotify) for r in received), received
    return [(r.message.user_stat.user_id, r.message.user_stat.status) for r in received]


class Route:
    """A running route_server and the fake msg_servers connected to it."""

    def __init__(self, port: int, child: Child) -> None:
        self.port = port
        self.child = child
        self.peers: list[Peer] = []

    def peer(self) -> Peer:
        p = Peer(self.port)
        self.peers.append(p)
        return p

    def online(self, asker: Peer, *user_ids: int) -> list[int]:
        """The statuses route_server reports for ``user_ids``."""
        asker.send(buddy_pb.IMUsersStatReq(user_id=1, user_id_list=user_ids), 17)
        rsp, _ = asker.wait_for(buddy_pb.IMUsersStatRsp)
        return [s.status for s in rsp.message.user_stat_list]


@pytest.fixture
def start_route(tmp_path: Path) -> Iterator[Any]:
    """``start_route(**route_table)`` starts a route_server; all are stopped afterwards."""
    started: list[Route] = []

    def start(**table: Any) -> Route:
        (port,) = free_ports(1)
        config = tmp_path / f"route{len(started)}.toml"
        config.write_text(dump({"route": {"port": port, **table}}))
        child = start_child(f"route_server{len(started)}", "route-server", config, tmp_path)
        route = Route(port, child)
        started.append(route)
        return route

    yield start
    for route in started:
        for p in route.peers:
            p.close()
        stop_children([route.child])


@pytest.fixture
def route(start_route: Any) -> Route:
    r: Route = start_route()
    return r


def msg_data(from_user: int, to: int, msg_type: int, attach: bytes | None = None) -> Any:
    msg = msg_pb.IMMsgData(
        from_user_id=from_user,
        to_session_id=to,
        msg_id=7,
        create_time=1_700_000_000,
        msg_type=base.MsgType.ValueType(msg_type),
        msg_data=b"opaque \x00\xff",
    )
    if attach is not None:
        msg.attach_data = attach
    return msg


# -- role ------------------------------------------------------------------------------------


def test_first_link_is_master_and_the_oldest_remaining_takes_over(route: Route) -> None:
    a, b, c = route.peer(), route.peer(), route.peer()
    assert (a.master, b.master, c.master) == (1, 0, 0)
    a.close()
    role, before = b.wait_for(server_pb.IMRoleSet)
    assert role.message.master == 1 and before == []
    assert c.sync() == []  # c is not the oldest: nothing for it
    d = route.peer()
    assert d.master == 0
    b.close()
    role, _ = c.wait_for(server_pb.IMRoleSet)
    assert role.message.master == 1
    assert d.sync() == []
    c.close()
    d.close()
    # Once the others are gone, a new link is master: at once if route_server saw them go
    # before it connected, else as soon as it does.
    e = route.peer()
    if e.master != 1:
        role, _ = e.wait_for(server_pb.IMRoleSet)
        assert role.message.master == 1


# -- presence --------------------------------------------------------------------------------


def test_presence_transitions_are_announced_to_every_link_once(route: Route) -> None:
    a, b = route.peer(), route.peer()  # broadcast links: told about everyone
    a.hosts((1, WIN), (2, ANDROID))
    expected = [(1, ONLINE), (2, ONLINE)]
    assert stats(a.sync()) == expected  # the origin is told too
    assert stats(b.sync()) == expected
    # A second device of an online user, here or elsewhere: no news.
    b.status(1, IOS, ONLINE)
    a.status(1, MAC, ONLINE)
    assert a.sync() == [] and b.sync() == [] and a.sync() == []
    # Devices go away one by one: only the last one makes the user offline.
    a.status(1, MAC, OFFLINE)
    a.status(1, WIN, OFFLINE)
    assert a.sync() == [] and b.sync() == []
    b.status(1, IOS, OFFLINE)
    assert stats(b.sync()) == [(1, OFFLINE)]
    assert stats(a.sync()) == [(1, OFFLINE)]
    # An offline update for a connection route never heard of changes nothing.
    b.status(3, WIN, OFFLINE)
    a.status(2, WIN, OFFLINE)  # user 2 is connected with ANDROID, not WIN
    assert b.sync() == [] and a.sync() == []
    assert route.online(a, 1, 2, 3) == [OFFLINE, ONLINE, OFFLINE]


def test_online_user_info_replaces_what_the_link_had(route: Route) -> None:
    a, b = route.peer(), route.peer()
    b.hosts((2, IOS))
    assert stats(b.sync()) == [(2, ONLINE)]
    assert stats(a.sync()) == [(2, ONLINE)]
    a.hosts((1, WIN), (2, WIN))
    assert stats(a.sync()) == [(1, ONLINE)]  # 2 was online on b already
    # The link's set is replaced: 1 is gone, 3 is new, 2 stays; offline entries are skipped.
    info = server_pb.IMOnlineUserInfo()
    info.user_stat_list.add(user_id=2, status=ONLINE, client_type=WIN)
    info.user_stat_list.add(user_id=3, status=ONLINE, client_type=MAC)
    info.user_stat_list.add(user_id=4, status=OFFLINE, client_type=WIN)
    a.send(info)
    assert stats(a.sync()) == [(1, OFFLINE), (3, ONLINE)]
    assert stats(b.sync()) == [(1, ONLINE), (1, OFFLINE), (3, ONLINE)]
    assert route.online(b, 1, 2, 3, 4) == [OFFLINE, ONLINE, ONLINE, OFFLINE]
    # b's user 2 leaves; a still hosts 2 (its replaced set kept it): still online.
    b.status(2, IOS, OFFLINE)
    assert b.sync() == []
    assert route.online(b, 2) == [ONLINE]
    # The same list again, now that 2 is on a alone: nobody came or went.
    a.send(info)
    assert a.sync() == [] and b.sync() == []
    # An empty list empties the link.
    a.send(server_pb.IMOnlineUserInfo())
    assert stats(a.sync()) == [(2, OFFLINE), (3, OFFLINE)]


def test_users_stat_req_is_answered_with_its_seq_and_attach_data(route: Route) -> None:
    a, b, c = route.peer(), route.peer(), route.peer()
    a.hosts((10, WIN))
    b.hosts((11, ANDROID))
    settle(a, b, c)
    c.send(
        buddy_pb.IMUsersStatReq(user_id=99, user_id_list=[10, 11, 12], attach_data=b"\x00\x01ctx"),
        4242,
    )
    rsp, before = c.wait_for(buddy_pb.IMUsersStatRsp)
    assert before == []
    assert rsp.header.seq == 4242
    assert rsp.message.user_id == 99
    assert rsp.message.attach_data == b"\x00\x01ctx"
    assert [(s.user_id, s.status) for s in rsp.message.user_stat_list] == [
        (10, ONLINE),
        (11, ONLINE),
        (12, OFFLINE),
    ]
    c.send(buddy_pb.IMUsersStatReq(user_id=5, user_id_list=[]), 1)
    rsp, _ = c.wait_for(buddy_pb.IMUsersStatRsp)
    assert rsp.header.seq == 1 and not rsp.message.HasField("attach_data")
    assert list(rsp.message.user_stat_list) == []


def test_a_subscribed_link_hears_only_of_the_users_it_watches(route: Route) -> None:
    watcher, teamtalk, origin = route.peer(), route.peer(), route.peer()
    assert watcher.watch(1, replace=True) == [(1, OFFLINE)]
    assert origin.watch(2, replace=True) == [(2, OFFLINE)]
    origin.hosts((1, WIN), (2, WIN), (3, WIN))
    assert stats(watcher.sync()) == [(1, ONLINE)]
    assert stats(origin.sync()) == [(2, ONLINE)]  # the origin too, for what it watches
    assert stats(teamtalk.sync()) == [(1, ONLINE), (2, ONLINE), (3, ONLINE)]
    # A plain IMUsersStatReq (a client's query) is a query: it subscribes nothing.
    assert route.online(watcher, 3) == [ONLINE]
    origin.status(3, WIN, OFFLINE)
    origin.sync()
    assert watcher.sync() == []
    assert stats(teamtalk.sync()) == [(3, OFFLINE)]
    # WATCH_ADD adds; the answer tells the status now.
    assert watcher.watch(3, 2, replace=False) == [(3, OFFLINE), (2, ONLINE)]
    origin.status(3, WIN, ONLINE)
    origin.status(2, WIN, OFFLINE)
    origin.sync()
    assert stats(watcher.sync()) == [(3, ONLINE), (2, OFFLINE)]
    # WATCH_SET replaces: 1 and 2 are no longer watched.
    assert watcher.watch(3, replace=True) == [(3, ONLINE)]
    origin.status(1, WIN, OFFLINE)
    origin.status(2, WIN, ONLINE)
    origin.sync()
    assert watcher.sync() == []
    teamtalk.sync()
    # WATCH_ADD on a broadcast link changes nothing: it still hears of everyone.
    teamtalk.watch(1, replace=False)
    origin.status(2, WIN, OFFLINE)
    origin.sync()
    assert stats(teamtalk.sync()) == [(2, OFFLINE)]
    assert watcher.sync() == []


def test_a_link_past_max_link_subscriptions_hears_of_everyone_until_it_sets_again(
    start_route: Any,
) -> None:
    route: Route = start_route(max_link_subscriptions=2)
    watcher, origin = route.peer(), route.peer()

    def change(user_id: int, status: int) -> list[tuple[int, int]]:
        """What ``watcher`` is told when ``origin`` reports ``user_id`` as ``status``."""
        origin.status(user_id, WIN, status)
        origin.sync()
        return stats(watcher.sync())

    watcher.watch(1, 2, replace=True)
    assert change(3, ONLINE) == []
    watcher.watch(3, replace=False)  # a third user: too many
    assert change(4, ONLINE) == [(4, ONLINE)]
    watcher.watch(1, replace=True)  # a smaller set: subscribed again
    assert change(5, ONLINE) == []
    assert change(1, ONLINE) == [(1, ONLINE)]
    watcher.watch(1, 2, 3, replace=True)  # too many at once
    assert change(6, ONLINE) == [(6, ONLINE)]
    watcher.watch(1, 1, 2, replace=True)  # each user counts once
    assert change(7, ONLINE) == []
    # A new link hears of everyone until it sets its subscriptions.
    late = route.peer()
    origin.status(8, WIN, ONLINE)
    origin.sync()
    assert stats(late.sync()) == [(8, ONLINE)]
    assert watcher.sync() == []


# -- relaying --------------------------------------------------------------------------------


def test_single_message_goes_once_to_each_link_of_the_peer_or_the_senders_devices(
    route: Route,
) -> None:
    a, b, c, d = route.peer(), route.peer(), route.peer(), route.peer()
    a.hosts((1, WIN))  # the sender
    b.hosts((2, WIN))  # the recipient
    c.hosts((1, IOS), (2, ANDROID))  # both again: c gets the message once
    d.hosts((3, WIN))  # uninvolved
    settle(a, b, c, d)
    for msg_type in (base.MSG_TYPE_SINGLE_TEXT, base.MSG_TYPE_SINGLE_AUDIO):
        msg = msg_data(1, 2, msg_type, attach=b"kept")
        sent = a.send(msg, seq=77)
        assert a.sync() == []  # never back to the origin
        for p in (b, c):
            (got,) = p.sync()
            assert got.header.seq == 0  # a push, not an answer to anything
            assert got.header.command_id == ids_of(msg_pb.IMMsgData)[1]
            assert got.frame[HEADER_LEN:] == sent[HEADER_LEN:]  # the body, byte for byte
            assert got.message == msg
        assert d.sync() == []
    # Sent with seq 0 already, the PDU goes out exactly as it came.
    sent = a.send(msg_data(1, 2, base.MSG_TYPE_SINGLE_TEXT))
    a.sync()
    assert [r.frame for r in b.sync()] == [sent]
    # Only the sender's other device is online: it still gets the message.
    c.send(msg_data(3, 50, base.MSG_TYPE_SINGLE_TEXT))  # 3 is on d, 50 is offline
    c.sync()
    assert len(d.sync()) == 1
    assert a.sync() == [] and b.sync() == []
    # Neither online anywhere else: nobody gets it.
    d.send(msg_data(3, 51, base.MSG_TYPE_SINGLE_TEXT))
    d.sync()
    assert a.sync() == [] and b.sync() == [] and c.sync() == []


def test_group_message_goes_once_to_each_link_hosting_a_member(route: Route) -> None:
    a, b, c, d, e = route.peer(), route.peer(), route.peer(), route.peer(), route.peer()
    a.hosts((1, WIN), (4, WIN))  # the sender, and a member on the origin too
    b.hosts((2, WIN))
    c.hosts((3, WIN), (4, IOS))
    d.hosts((5, WIN))  # not a member
    settle(a, b, c, d, e)
    members = struct.pack(">5I", 1, 2, 3, 4, 6)  # 6 is offline
    for msg_type in (base.MSG_TYPE_GROUP_TEXT, base.MSG_TYPE_GROUP_AUDIO):
        msg = msg_data(1, 900, msg_type, attach=members)
        sent = a.send(msg, seq=5)
        a.sync()
        for p in (b, c):
            (got,) = p.sync()
            assert got.header.seq == 0
            assert got.frame[HEADER_LEN:] == sent[HEADER_LEN:]
            assert got.message.attach_data == members  # the receiver needs the members
        assert d.sync() == [] and e.sync() == [] and a.sync() == []
    # A trailing partial u32 is ignored; the whole ones still count.
    a.send(msg_data(1, 900, base.MSG_TYPE_GROUP_TEXT, attach=struct.pack(">I", 5) + b"\x00\x02"))
    a.sync()
    assert len(d.sync()) == 1
    assert b.sync() == [] and c.sync() == []
    # No members elsewhere (or none at all): nobody gets it.
    a.send(msg_data(1, 901, base.MSG_TYPE_GROUP_TEXT, attach=struct.pack(">2I", 1, 6)))
    a.send(msg_data(1, 902, base.MSG_TYPE_GROUP_TEXT))
    a.sync()
    for p in (b, c, d, e):
        assert p.sync() == []


def test_read_notify_and_p2p_go_to_links_hosting_their_user(route: Route) -> None:
    a, b, c = route.peer(), route.peer(), route.peer()
    a.hosts((1, WIN))
    b.hosts((1, IOS))
    c.hosts((2, WIN))
    settle(a, b, c)
    read = msg_pb.IMMsgDataReadNotify(
        user_id=1, session_id=2, msg_id=9, session_type=base.SESSION_TYPE_SINGLE
    )
    a.send(read, seq=3)
    a.sync()
    (got,) = b.sync()
    assert got.message == read and got.header.seq == 0
    assert c.sync() == [] and a.sync() == []

    p2p = switch_pb.IMP2PCmdMsg(from_user_id=1, to_user_id=2, cmd_msg_data='{"typing":1}')
    a.send(p2p)
    a.sync()
    (got,) = c.sync()
    assert got.message == p2p
    assert b.sync() == []
    # To a user who is offline, or only on the origin: nowhere.
    c.send(switch_pb.IMP2PCmdMsg(from_user_id=2, to_user_id=77, cmd_msg_data="x"))
    c.send(switch_pb.IMP2PCmdMsg(from_user_id=1, to_user_id=2, cmd_msg_data="x"))
    c.sync()
    assert a.sync() == [] and b.sync() == []


def test_kick_goes_only_to_links_with_a_client_of_the_same_class(route: Route) -> None:
    a, b, c = route.peer(), route.peer(), route.peer()
    a.hosts((1, MAC))  # the new login
    b.hosts((1, WIN))
    c.hosts((1, ANDROID), (2, WIN))
    settle(a, b, c)
    desktop = server_pb.IMServerKickUser(user_id=1, client_type=MAC, reason=1)
    a.send(desktop)
    a.sync()
    (got,) = b.sync()
    assert got.message == desktop
    assert c.sync() == [] and a.sync() == []
    mobile = server_pb.IMServerKickUser(user_id=1, client_type=IOS, reason=1)
    a.send(mobile)
    a.sync()
    (got,) = c.sync()
    assert got.message == mobile
    assert b.sync() == []
    # Nobody else holds user 2 with a desktop client; nobody holds user 3.
    c.send(server_pb.IMServerKickUser(user_id=2, client_type=WIN, reason=1))
    a.send(server_pb.IMServerKickUser(user_id=3, client_type=WIN, reason=1))
    c.sync()
    a.sync()
    assert a.sync() == [] and b.sync() == [] and c.sync() == []


def test_group_change_notify_goes_to_every_other_link(route: Route) -> None:
    a, b, c = route.peer(), route.peer(), route.peer()
    notify = group_pb.IMGroupChangeMemberNotify(
        user_id=1,
        change_type=base.GROUP_MODIFY_TYPE_ADD,
        group_id=900,
        cur_user_id_list=[1, 2, 3],
        chg_user_id_list=[3],
    )
    b.send(notify, seq=12)
    b.sync()
    for p in (a, c):
        (got,) = p.sync()
        assert got.message == notify and got.header.seq == 0
    assert b.sync() == []


# -- links going away and bad input ----------------------------------------------------------


def test_a_closed_link_makes_its_users_offline_for_the_others(route: Route) -> None:
    a, b, c = route.peer(), route.peer(), route.peer()
    a.hosts((1, WIN), (2, WIN))
    b.hosts((2, IOS))
    settle(a, b, c)
    a.close()
    for p in (b, c):
        notify, before = p.wait_for(buddy_pb.IMUserStatNotify)
        assert before == []
        assert stats([notify]) == [(1, OFFLINE)]  # 2 is still on b
        rest = [r.message for r in p.sync()]
        # a was master: b, the oldest link left, takes over.
        assert rest == ([server_pb.IMRoleSet(master=1)] if p is b else [])
    assert route.online(c, 1, 2) == [OFFLINE, ONLINE]
    # Nothing is routed to the closed link any more.
    c.send(msg_data(3, 1, base.MSG_TYPE_SINGLE_TEXT))
    c.sync()
    assert b.sync() == []


@pytest.mark.parametrize(
    "header",
    [
        struct.pack(">IHHHHHH", 5, 1, 0, 7, 0x0701, 0, 0),  # shorter than the header
        struct.pack(">IHHHHHH", 0x7FFFFFFF, 1, 0, 3, 0x0301, 0, 0),  # far too long
    ],
    ids=["length-5", "length-2GiB"],
)
def test_a_bad_length_closes_only_that_link(route: Route, header: bytes) -> None:
    a, b = route.peer(), route.peer()
    a.hosts((1, WIN))
    b.hosts((2, WIN))
    a.sync()
    b.sync()
    a.sock.sendall(header + b"garbage" * 10)
    assert a.closed_by_peer()
    notify, _ = b.wait_for(buddy_pb.IMUserStatNotify)
    assert stats([notify]) == [(1, OFFLINE)]
    # b is unaffected and still served.
    assert route.online(b, 1, 2) == [OFFLINE, ONLINE]
    c = route.peer()
    c.send(msg_data(3, 2, base.MSG_TYPE_SINGLE_TEXT))
    c.sync()
    (got,) = [r for r in b.sync() if isinstance(r.message, msg_pb.IMMsgData)]
    assert got.message.to_session_id == 2


def test_unknown_and_undecodable_pdus_are_dropped_and_the_link_kept(route: Route) -> None:
    a, b = route.peer(), route.peer()
    b.hosts((2, WIN))
    b.sync()
    a.sync()
    msg_ids = ids_of(msg_pb.IMMsgData)
    a.sock.sendall(
        encode_pdu(7, 0x07FF, 0, b"who knows")  # an unknown command
        + encode_pdu(*msg_ids, 0, b"\xff\xff\xff")  # a body that does not parse
        + encode_pdu(*msg_ids, 0, msg_pb.IMMsgData(to_session_id=2).SerializePartialToString())
        + encode_pdu(*ids_of(server_pb.IMMsgServInfo), 0, b"")  # not route_server's business
    )
    assert a.sync() == []  # still served
    assert b.sync() == []  # nothing relayed
    a.send(msg_data(1, 2, base.MSG_TYPE_SINGLE_TEXT))
    a.sync()
    assert len(b.sync()) == 1


def test_heartbeats_are_sent_and_a_silent_link_times_out(start_route: Any) -> None:
    route: Route = start_route(heartbeat_s=0.5, timeout_s=2)
    silent, alive = route.peer(), route.peer()
    silent.hosts((1, WIN))
    alive.hosts((2, WIN))
    silent.sync()
    alive.sync()
    start = time.monotonic()
    alive.sock.settimeout(0.5)
    offline: list[tuple[int, int]] = []
    while not offline:
        assert time.monotonic() - start < 8, "silent link not timed out"
        alive.sock.sendall(HEARTBEAT_PDU)
        try:
            r = alive.recv()
        except TimeoutError:
            continue
        if isinstance(r.message, buddy_pb.IMUserStatNotify):
            offline = stats([r])
    assert offline == [(1, OFFLINE)]
    assert time.monotonic() - start >= 1.5  # not long before the 2 s timeout
    silent.sock.settimeout(WAIT_S)
    with pytest.raises(ConnectionResetError):  # aborted, not closed in order
        while True:
            silent.recv()
    assert silent.heartbeats >= 1  # route_server kept talking while it waited
    alive.sock.settimeout(WAIT_S)
    assert route.online(alive, 1, 2) == [OFFLINE, ONLINE]


# -- in-process pieces -----------------------------------------------------------------------


def test_presence_table_reports_only_cluster_wide_transitions() -> None:
    p: Presence[str] = Presence()
    assert p.add("a", 1, WIN) is True
    assert p.add("b", 1, IOS) is False
    assert p.add("a", 1, MAC) is False
    assert dict(p.hosts(1)) == {"a": {WIN, MAC}, "b": {IOS}}
    assert p.remove("a", 1, WIN) is False
    assert p.remove("a", 1, MAC) is False
    assert p.remove("a", 1, MAC) is False  # already gone
    assert p.drop("b") == [1]
    assert not p.is_online(1) and dict(p.hosts(1)) == {} and len(p) == 0
    p.add("a", 2, WIN)
    p.add("b", 2, WIN)
    p.add("a", 3, WIN)
    assert p.replace("a", [(2, IOS), (4, WIN), (4, MAC)]) == ([4], [3])
    assert p.users_on("a") == 2 and p.hosts(4)["a"] == {WIN, MAC}
    assert p.replace("a", [(4, IOS)]) == ([], [])  # 4 was on "a" alone, and still is
    assert p.replace("a", []) == ([], [4])
    assert p.drop("a") == [] and p.drop("nobody") == []
    assert dict(p.hosts(2)) == {"b": {WIN}}


def test_route_config_defaults_and_typos() -> None:
    c = RouteConfig()
    assert (c.listen_host, c.port, c.heartbeat_s, c.timeout_s) == ("127.0.0.1", 8200, 5.0, 30.0)
    assert c.max_link_subscriptions == 100_000
    with pytest.raises(ConfigError, match=r"route\.max_link_subscriptions: must be at least 0"):
        from_mapping(RouteConfig, {"max_link_subscriptions": -1}, "route")
    with pytest.raises(ConfigError, match=r"route\.prot"):
        from_mapping(RouteConfig, {"prot": 1}, "route")
