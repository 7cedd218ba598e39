"""Stateful fuzzing of a running msg_server: valid and invalid PDUs over several connections.

A hypothesis :class:`~hypothesis.stateful.RuleBasedStateMachine` drives up to
``MAX_CONNS`` raw client sockets against a real suite (db_proxy_server,
login_server, msg_server on SQLite). Rules log in (carol and dave, any client type,
right or wrong password), send what a client sends (1:1 and group messages, queries,
group creation and membership changes, read acks, p2p commands, heartbeats, logout)
and what no client should: lengths below 16 and above ``max_pdu_bytes``, unknown
command ids, truncated and garbage protobuf bodies, known commands under the wrong
service id, requests before login, a second login, random bytes, half a frame and a
close, PDUs packed into one write and split over many.

What must hold after every step (the invariants):

- every server process is still running, and none logged a traceback (a handler that
  raised is caught by the connection layer, so only the log tells);
- a probe logs in as alice on a fresh connection, sends bob a message and gets its
  ack; bob, logged in for the whole test on a connection no rule touches, receives it
  with the acked msg_id;
- a connection that was sent something invalid is closed by the server or still
  answers a heartbeat: it is never left hanging; where the outcome is certain (a bad
  length, a command before login, a refused login) the model says which;
- after each run of the machine, every acknowledged message (probe's and rules')
  is in history with the bytes that were sent.

Cost: ``FAST`` settings keep the default test well under a minute here; the
``slow``-marked variant runs ``DEEP``; ``IMREACTOR_FUZZ_EXAMPLES`` and
``IMREACTOR_FUZZ_STEPS`` set the deep variant's sizes for long local runs
(``IMREACTOR_FUZZ_EXAMPLES=2000 pytest -m slow tests/servers/test_fuzz_msg_server.py``).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from imreactor.client import Client
from imreactor.pdu.header import HEADER_LEN, encode_pdu, parse_header
from imreactor.pdu.imconn import HEARTBEAT_PDU
from imreactor.pdu.kinds import device_class
from imreactor.pdu.password import password_digest
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2 as buddy
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.pdu.proto import im_login_pb2 as login_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb
from imreactor.pdu.proto import im_switch_service_pb2 as switch_pb
from imreactor.pdu.registry import command_ids, ids_of, message_class
from imreactor.servers.msg.client import MAX_BAD_PDUS
from imreactor.servers.suite import DEMO_PASSWORD

from .conftest import RunningSuite, start_suite

WAIT_S = 5.0
MAX_CONNS = 6
MAX_PDU_BYTES = 64 * 1024
#: How long a connection fed something odd may stay silent before we stop sending.
QUIET_S = 1.0
#: Valid requests use seqs below this; garbage uses seqs above, so no answer is mistaken.
VALID_SEQS = 30000
FUZZ_USERS = ("carol", "dave")
CLIENT_TYPES = (
    base.CLIENT_TYPE_WINDOWS,
    base.CLIENT_TYPE_MAC,
    base.CLIENT_TYPE_IOS,
    base.CLIENT_TYPE_ANDROID,
    base.CLIENT_TYPE_WEB,
    base.CLIENT_TYPE_SCRIPT,
)
SESSIONS = {"desktop": 1, "mobile": 1, "web": 4, "script": 4}
#: The throttle is not what this fuzzes: wrong passwords must not lock carol out.
OVERRIDES: dict[str, dict[str, Any]] = {
    "msg": {
        "max_pdu_bytes": MAX_PDU_BYTES,
        "throttle_account_free": 100_000,
        "throttle_account_lockout": 200_000,
        "throttle_address_free": 100_000,
        "throttle_address_lockout": 200_000,
    }
}
FAST = settings(
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
DEEP = settings(
    FAST,
    max_examples=int(os.environ.get("IMREACTOR_FUZZ_EXAMPLES", "200")),
    stateful_step_count=int(os.environ.get("IMREACTOR_FUZZ_STEPS", "50")),
)

u32 = st.integers(0, 2**32 - 1)
small_ids = st.sampled_from([0, 1, 2, 3, 4, 5, 99, 2**31, 2**32 - 1])


class Closed(Exception):
    """The server closed (or reset) the connection."""


class Quiet(Exception):
    """Nothing arrived within the wait asked for (the server waits for more input)."""


class RawWire:
    """One raw client socket: bytes out, and a buffer of what came in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False

    def send(self, data: bytes) -> None:
        """Write ``data``; a connection the server closed already is not an error here."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def fill(self, deadline: float, quiet: bool = False) -> None:
        """Read once into :attr:`buf` (nothing, if ``deadline`` passes meanwhile).

        Raises :class:`Closed` once the server closed (or reset) and AssertionError past
        ``deadline`` (the server neither answered nor closed), or :class:`Quiet` then
        with ``quiet``.
        """
        if self.closed:
            raise Closed
        left = deadline - time.monotonic()
        if left <= 0 and quiet:
            raise Quiet
        assert left > 0, "the server neither answered nor closed the connection"
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


class Wire(RawWire):
    """A raw msg_server client: whole PDUs in (``WAIT_S`` for each)."""

    def frame(self, deadline: float, quiet: bool = False) -> bytes:
        """The next whole PDU; raises :class:`Closed` on EOF or reset, AssertionError
        when the server neither answers nor closes by ``deadline``."""
        while True:
            if len(self.buf) >= HEADER_LEN:
                length = parse_header(self.buf).length
                assert length >= HEADER_LEN, f"the server sent a length of {length}"
                if len(self.buf) >= length:
                    frame = bytes(self.buf[:length])
                    del self.buf[:length]
                    return frame
            self.fill(deadline, quiet=quiet and not self.buf)

    def answer(self, seq: int) -> tuple[Message | None, bytes]:
        """The PDU answering ``seq`` (pushes, which carry 0, and heartbeats skipped),
        decoded when its ids name a class; raises :class:`Closed`."""
        deadline = time.monotonic() + WAIT_S
        while True:
            frame = self.frame(deadline)
            header = parse_header(frame)
            if frame == HEARTBEAT_PDU or header.seq != seq:
                continue
            cls = message_class(header.service_id, header.command_id)
            if cls is None:
                return None, frame
            message = cls()
            message.ParseFromString(frame[HEADER_LEN:])
            return message, frame

    def alive(self) -> bool:
        """Send a heartbeat: True when it comes back, False when the server closes."""
        self.send(HEARTBEAT_PDU)
        deadline = time.monotonic() + WAIT_S
        try:
            while self.frame(deadline) != HEARTBEAT_PDU:
                pass
        except Closed:
            return False
        return True

    def wait_closed(self) -> None:
        """Read until the server closes; AssertionError if it does not within WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        try:
            while True:
                self.frame(deadline)
        except Closed:
            return


@dataclass
class Conn:
    wire: Wire
    name: str = ""  # logged in as, "" before login
    user_id: int = 0
    device: str = ""
    #: Sent something whose outcome the model cannot say (garbage, a kick): the server
    #: may close it at any time, and answers on it are not required.
    doomed: bool = False
    bad: int = 0  # bad PDUs counted by the server (closed past MAX_BAD_PDUS)


@dataclass(frozen=True)
class Acked:
    sender: str
    session_type: int
    session_id: int
    msg_id: int
    data: bytes


@dataclass
class Group:
    group_id: int
    creator: int
    members: set[int] = field(default_factory=set)


def frame_of(message: Message, seq: int) -> bytes:
    """``message`` as a PDU; raises if a required field is missing (the model's own bug)."""
    return encode_pdu(*ids_of(message), seq, message.SerializeToString())


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def text_msg(to: int, data: bytes, msg_type: int = base.MSG_TYPE_SINGLE_TEXT) -> msg_pb.IMMsgData:
    return msg_pb.IMMsgData(
        from_user_id=0,
        to_session_id=to,
        msg_id=0,
        create_time=0,
        msg_type=base.MsgType.ValueType(msg_type),
        msg_data=data,
    )


def queries(ids: list[int]) -> st.SearchStrategy[tuple[Message, type[Message]]]:
    """Well-formed queries a logged-in client may send, with the class of their answer."""
    user = st.sampled_from(ids) | small_ids
    some = st.lists(user, max_size=5)
    stype = st.sampled_from([base.SESSION_TYPE_SINGLE, base.SESSION_TYPE_GROUP])
    return st.one_of(
        st.just((msg_pb.IMClientTimeReq(), msg_pb.IMClientTimeRsp)),
        st.just((msg_pb.IMUnreadMsgCntReq(user_id=0), msg_pb.IMUnreadMsgCntRsp)),
        st.builds(
            lambda t, s, b, n: (
                msg_pb.IMGetMsgListReq(
                    user_id=0, session_type=t, session_id=s, msg_id_begin=b, msg_cnt=n
                ),
                msg_pb.IMGetMsgListRsp,
            ),
            stype,
            user,
            u32,
            st.integers(0, 100) | u32,
        ),
        st.builds(
            lambda t, s: (
                msg_pb.IMGetLatestMsgIdReq(user_id=0, session_type=t, session_id=s),
                msg_pb.IMGetLatestMsgIdRsp,
            ),
            stype,
            user,
        ),
        st.builds(
            lambda t, s, m: (
                msg_pb.IMGetMsgByIdReq(user_id=0, session_type=t, session_id=s, msg_id_list=m),
                msg_pb.IMGetMsgByIdRsp,
            ),
            stype,
            user,
            st.lists(u32, max_size=5),
        ),
        st.builds(
            lambda t: (
                buddy.IMRecentContactSessionReq(user_id=0, latest_update_time=t),
                buddy.IMRecentContactSessionRsp,
            ),
            u32,
        ),
        st.builds(
            lambda u: (buddy.IMUsersInfoReq(user_id=0, user_id_list=u), buddy.IMUsersInfoRsp),
            some,
        ),
        st.builds(
            lambda t: (buddy.IMAllUserReq(user_id=0, latest_update_time=t), buddy.IMAllUserRsp),
            u32,
        ),
        st.builds(
            lambda t: (
                buddy.IMDepartmentReq(user_id=0, latest_update_time=t),
                buddy.IMDepartmentRsp,
            ),
            u32,
        ),
        st.builds(
            lambda u: (buddy.IMUsersStatReq(user_id=0, user_id_list=u), buddy.IMUsersStatRsp),
            some,
        ),
        st.builds(
            lambda t, s: (
                buddy.IMRemoveSessionReq(user_id=0, session_type=t, session_id=s),
                buddy.IMRemoveSessionRsp,
            ),
            stype,
            user,
        ),
        st.builds(
            lambda s: (
                buddy.IMChangeSignInfoReq(user_id=0, sign_info=s),
                buddy.IMChangeSignInfoRsp,
            ),
            st.text(max_size=40),
        ),
        st.just((group_pb.IMNormalGroupListReq(user_id=0), group_pb.IMNormalGroupListRsp)),
        st.builds(
            lambda g, v: (
                group_pb.IMGroupInfoListReq(
                    user_id=0, group_version_list=[base.GroupVersionInfo(group_id=g, version=v)]
                ),
                group_pb.IMGroupInfoListRsp,
            ),
            u32,
            u32,
        ),
        st.builds(
            lambda g, s: (
                group_pb.IMGroupShieldReq(user_id=0, group_id=g, shield_status=s),
                group_pb.IMGroupShieldRsp,
            ),
            u32,
            st.integers(0, 1),
        ),
    )


#: Client commands with a body worth garbling (heartbeat aside: it is echoed whatever it holds).
CLIENT_COMMANDS = sorted(
    {
        ids_of(cls)
        for cls in (
            login_pb.IMLoginReq,
            login_pb.IMLogoutReq,
            msg_pb.IMMsgData,
            msg_pb.IMMsgDataAck,
            msg_pb.IMMsgDataReadAck,
            msg_pb.IMClientTimeReq,
            msg_pb.IMGetMsgListReq,
            msg_pb.IMGetMsgByIdReq,
            buddy.IMUsersStatReq,
            buddy.IMUsersInfoReq,
            buddy.IMChangeSignInfoReq,
            group_pb.IMGroupCreateReq,
            group_pb.IMGroupChangeMemberReq,
            group_pb.IMGroupInfoListReq,
            switch_pb.IMP2PCmdMsg,
        )
    }
)
UNKNOWN_COMMANDS = st.integers(0, 0xFFFF).filter(lambda c: c not in command_ids())


class MsgServerFuzz(RuleBasedStateMachine):
    """The model of one msg_server as several raw clients see it (module docstring)."""

    suite: RunningSuite
    bob: Client
    ids: dict[str, int]
    log_offsets: dict[str, int]

    def __init__(self) -> None:
        super().__init__()
        self.conns: list[Conn] = []
        self.acked: list[Acked] = []
        self.groups: list[Group] = []
        self.seq = 0

    # -- helpers ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.suite.layout.msg_ports[0]

    def next_seq(self) -> int:
        self.seq = self.seq % (VALID_SEQS - 1) + 1
        return self.seq

    def conn(self, pick: int) -> Conn:
        return self.conns[pick % len(self.conns)]

    def logged_in(self) -> list[Conn]:
        return [c for c in self.conns if c.name and not c.doomed]

    def gone(self, c: Conn) -> None:
        c.wire.close()
        self.conns.remove(c)

    def expect_closed(self, c: Conn) -> None:
        c.wire.wait_closed()
        self.gone(c)

    def request(self, c: Conn, message: Message, rsp: type[Message]) -> Message | None:
        """Send ``message``; its answer, which must be a ``rsp`` (None: doomed and closed)."""
        seq = self.next_seq()
        c.wire.send(frame_of(message, seq))
        try:
            answer, frame = c.wire.answer(seq)
        except Closed:
            assert c.doomed, f"closed instead of answering {type(message).__name__}"
            self.gone(c)
            return None
        assert isinstance(answer, rsp), (type(message).__name__, parse_header(frame))
        return answer

    def bad_pdu(self, c: Conn) -> None:
        """``c`` sent a PDU the server refuses and counts: closed before login or past
        MAX_BAD_PDUS, else kept (and answering heartbeats)."""
        c.bad += 1
        if not c.name or c.bad > MAX_BAD_PDUS:
            self.expect_closed(c)
        else:
            self.closed_or_alive(c)

    def closed_or_alive(self, c: Conn) -> None:
        """The server closes ``c`` or answers its heartbeat; never leaves it hanging."""
        if not c.wire.alive():
            assert c.doomed or c.bad > MAX_BAD_PDUS, "a connection the model keeps was closed"
            self.gone(c)

    def uncertain(self, c: Conn) -> None:
        """After input the model cannot judge: closed, or still answering a heartbeat, or
        (input that began a PDU longer than what followed) waiting for the rest: then
        our end of the stream ends, and the server must close."""
        c.doomed = True
        c.wire.send(HEARTBEAT_PDU)
        deadline = time.monotonic() + QUIET_S
        try:
            while c.wire.frame(deadline, quiet=True) != HEARTBEAT_PDU:
                deadline = time.monotonic() + WAIT_S  # answers came: the rest will too
        except Closed:
            self.gone(c)
        except Quiet:
            c.wire.sock.shutdown(socket.SHUT_WR)
            self.expect_closed(c)

    # -- connections and sessions -----------------------------------------------------------

    @precondition(lambda self: len(self.conns) < MAX_CONNS)
    @rule(
        user=st.sampled_from(FUZZ_USERS) | st.none(),
        client_type=st.sampled_from(CLIENT_TYPES),
    )
    def connect(self, user: str | None, client_type: int) -> None:
        """A new connection, logged in at once as ``user`` (None: left anonymous)."""
        c = Conn(Wire(self.port))
        self.conns.append(c)
        if user is not None:
            self.log_in(c, user, client_type, True)

    @precondition(lambda self: any(not c.name for c in self.conns))
    @rule(
        pick=st.integers(0, MAX_CONNS),
        user=st.sampled_from(FUZZ_USERS),
        client_type=st.sampled_from(CLIENT_TYPES),
        right=st.booleans(),
    )
    def login(self, pick: int, user: str, client_type: int, right: bool) -> None:
        anonymous = [c for c in self.conns if not c.name]
        self.log_in(anonymous[pick % len(anonymous)], user, client_type, right)

    def log_in(self, c: Conn, user: str, client_type: int, right: bool) -> None:
        req = login_pb.IMLoginReq(
            user_name=user,
            password=password_digest(DEMO_PASSWORD if right else DEMO_PASSWORD + "x"),
            online_status=base.USER_STATUS_ONLINE,
            client_type=base.ClientType.ValueType(client_type),
        )
        res = self.request(c, req, login_pb.IMLoginRes)
        if res is None:
            return
        assert isinstance(res, login_pb.IMLoginRes)
        if not right:
            assert res.result_code == base.REFUSE_REASON_DB_VALIDATE_FAILED, res
            self.expect_closed(c)
            return
        assert res.result_code == 0, res
        device = device_class(client_type)
        same = [o for o in self.conns if o is not c and o.name == user and o.device == device]
        if any(o.doomed for o in same):
            # Whether those are still open (and so which one is the oldest) is unknown.
            kicked = same
        else:
            kicked = same[: max(0, len(same) + 1 - SESSIONS[device])]
        for older in kicked:
            older.doomed = True  # kicked by this login
        c.name, c.user_id, c.device = user, res.user_info.user_id, device

    @precondition(lambda self: any(c.name for c in self.conns))
    @rule(pick=st.integers(0, MAX_CONNS))
    def login_again(self, pick: int) -> None:
        # A second IMLoginReq on a logged-in connection is ignored (logged), not answered.
        c = self.conn(pick)
        if not c.name:
            return
        req = login_pb.IMLoginReq(
            user_name=c.name,
            password=password_digest(DEMO_PASSWORD),
            online_status=base.USER_STATUS_ONLINE,
            client_type=base.CLIENT_TYPE_WINDOWS,
        )
        c.wire.send(frame_of(req, self.next_seq()))
        self.closed_or_alive(c)

    @precondition(lambda self: bool(self.conns))
    @rule(pick=st.integers(0, MAX_CONNS))
    def logout(self, pick: int) -> None:
        c = self.conn(pick)
        if not c.name:
            return
        if self.request(c, login_pb.IMLogoutReq(), login_pb.IMLogoutRsp) is not None:
            self.expect_closed(c)

    @precondition(lambda self: bool(self.conns))
    @rule(pick=st.integers(0, MAX_CONNS), reset=st.booleans(), partial=st.integers(0, 40))
    def hang_up(self, pick: int, reset: bool, partial: int) -> None:
        """Go away: after part of a PDU, with a FIN or a reset."""
        c = self.conn(pick)
        c.wire.send(frame_of(msg_pb.IMClientTimeReq(), 1)[:partial] if partial else b"")
        if reset:
            c.wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.gone(c)

    @precondition(lambda self: bool(self.conns))
    @rule(pick=st.integers(0, MAX_CONNS))
    def heartbeat(self, pick: int) -> None:
        self.closed_or_alive(self.conn(pick))

    # -- what clients send ------------------------------------------------------------------

    @precondition(lambda self: bool(self.logged_in()))
    @rule(
        pick=st.integers(0, MAX_CONNS),
        to=st.sampled_from(["alice", "bob", *FUZZ_USERS]),
        data=st.binary(max_size=300),
    )
    def send_message(self, pick: int, to: str, data: bytes) -> None:
        c = self.logged_in()[pick % len(self.logged_in())]
        if self.ids[to] == c.user_id:
            c.wire.send(frame_of(text_msg(c.user_id, data), self.next_seq()))
            self.bad_pdu(c)  # refused at once, as a bad PDU
            return
        ack = self.request(c, text_msg(self.ids[to], data), msg_pb.IMMsgDataAck)
        assert isinstance(ack, msg_pb.IMMsgDataAck)
        assert ack.msg_id > 0 and ack.session_id == self.ids[to], ack
        self.acked.append(Acked(c.name, base.SESSION_TYPE_SINGLE, self.ids[to], ack.msg_id, data))

    @precondition(lambda self: bool(self.logged_in()))
    @rule(pick=st.integers(0, MAX_CONNS), data=st.data())
    def query(self, pick: int, data: st.DataObject) -> None:
        c = self.logged_in()[pick % len(self.logged_in())]
        message, rsp = data.draw(queries(list(self.ids.values())))
        self.request(c, message, rsp)

    @precondition(lambda self: bool(self.logged_in()))
    @rule(
        pick=st.integers(0, MAX_CONNS),
        members=st.lists(st.sampled_from(["alice", "bob", *FUZZ_USERS]), max_size=4),
        name=st.text(max_size=20),
    )
    def create_group(self, pick: int, members: list[str], name: str) -> None:
        c = self.logged_in()[pick % len(self.logged_in())]
        ids = [self.ids[m] for m in members]
        req = group_pb.IMGroupCreateReq(
            user_id=0,
            group_type=base.GROUP_TYPE_TMP,
            group_name=name,
            group_avatar="",
            member_id_list=ids,
        )
        rsp = self.request(c, req, group_pb.IMGroupCreateRsp)
        assert isinstance(rsp, group_pb.IMGroupCreateRsp)
        if rsp.result_code == 0:
            self.groups.append(Group(rsp.group_id, c.user_id, set(rsp.user_id_list)))

    @precondition(lambda self: bool(self.logged_in()) and bool(self.groups))
    @rule(
        pick=st.integers(0, MAX_CONNS),
        which=st.integers(0, 100),
        add=st.booleans(),
        members=st.lists(st.sampled_from(["alice", "bob", *FUZZ_USERS]), max_size=3),
    )
    def change_group(self, pick: int, which: int, add: bool, members: list[str]) -> None:
        c = self.logged_in()[pick % len(self.logged_in())]
        group = self.groups[which % len(self.groups)]
        req = group_pb.IMGroupChangeMemberReq(
            user_id=0,
            change_type=base.GROUP_MODIFY_TYPE_ADD if add else base.GROUP_MODIFY_TYPE_DEL,
            group_id=group.group_id,
            member_id_list=[self.ids[m] for m in members],
        )
        rsp = self.request(c, req, group_pb.IMGroupChangeMemberRsp)
        assert isinstance(rsp, group_pb.IMGroupChangeMemberRsp)
        if rsp.result_code == 0:
            assert c.user_id in group.members, "a non-member changed a group"
            group.members = set(rsp.cur_user_id_list)

    @precondition(lambda self: bool(self.logged_in()) and bool(self.groups))
    @rule(pick=st.integers(0, MAX_CONNS), which=st.integers(0, 100), data=st.binary(max_size=100))
    def group_message(self, pick: int, which: int, data: bytes) -> None:
        c = self.logged_in()[pick % len(self.logged_in())]
        group = self.groups[which % len(self.groups)]
        msg = text_msg(group.group_id, data, base.MSG_TYPE_GROUP_TEXT)
        if c.user_id not in group.members:
            c.wire.send(frame_of(msg, self.next_seq()))  # refused: not a member
            self.bad_pdu(c)
            return
        ack = self.request(c, msg, msg_pb.IMMsgDataAck)
        assert isinstance(ack, msg_pb.IMMsgDataAck) and ack.msg_id > 0, ack
        self.acked.append(Acked(c.name, base.SESSION_TYPE_GROUP, group.group_id, ack.msg_id, data))

    @precondition(lambda self: bool(self.logged_in()))
    @rule(
        pick=st.integers(0, MAX_CONNS),
        kind=st.sampled_from(["read_ack", "data_ack", "p2p"]),
        to=st.sampled_from(["alice", "bob", *FUZZ_USERS]),
        msg_id=u32,
    )
    def notification(self, pick: int, kind: str, to: str, msg_id: int) -> None:
        """Messages that get no answer: read receipts, delivery acks, p2p commands."""
        c = self.logged_in()[pick % len(self.logged_in())]
        message: Message
        if kind == "read_ack":
            message = msg_pb.IMMsgDataReadAck(
                user_id=0,
                session_id=self.ids[to],
                msg_id=msg_id,
                session_type=base.SESSION_TYPE_SINGLE,
            )
        elif kind == "data_ack":
            message = msg_pb.IMMsgDataAck(
                user_id=0,
                session_id=self.ids[to],
                msg_id=msg_id,
                session_type=base.SESSION_TYPE_SINGLE,
            )
        else:
            message = switch_pb.IMP2PCmdMsg(
                from_user_id=0, to_user_id=self.ids[to], cmd_msg_data=str(msg_id)
            )
        c.wire.send(frame_of(message, self.next_seq()))
        self.closed_or_alive(c)

    @precondition(lambda self: bool(self.logged_in()))
    @rule(pick=st.integers(0, MAX_CONNS), n=st.integers(2, 8), cuts=st.lists(st.integers(1, 200)))
    def packed_and_split(self, pick: int, n: int, cuts: list[int]) -> None:
        """``n`` requests in one stream, cut at arbitrary points: all answered, in order."""
        c = self.logged_in()[pick % len(self.logged_in())]
        seqs = [self.next_seq() for _ in range(n)]
        stream = b"".join(frame_of(msg_pb.IMClientTimeReq(), s) for s in seqs)
        at = 0
        for cut in cuts:
            c.wire.send(stream[at : at + cut])
            at += cut
            time.sleep(0.001)
        c.wire.send(stream[at:])
        for s in seqs:
            try:
                answer, _ = c.wire.answer(s)
            except Closed:
                raise AssertionError("closed while answering packed requests") from None
            assert isinstance(answer, msg_pb.IMClientTimeRsp)

    # -- what clients should not send -------------------------------------------------------

    @precondition(lambda self: bool(self.conns))
    @rule(pick=st.integers(0, MAX_CONNS), length=st.integers(0, HEADER_LEN - 1))
    def length_too_short(self, pick: int, length: int) -> None:
        c = self.conn(pick)
        c.wire.send(struct.pack(">IHHHHHH", length, 1, 0, 7, 0x0701, 0, 0))
        self.expect_closed(c)

    @precondition(lambda self: bool(self.conns))
    @rule(pick=st.integers(0, MAX_CONNS), length=st.integers(MAX_PDU_BYTES + 1, 2**32 - 1))
    def length_too_long(self, pick: int, length: int) -> None:
        c = self.conn(pick)
        c.wire.send(struct.pack(">IHHHHHH", length, 1, 0, 3, 0x0301, 1, 0) + b"x" * 100)
        self.expect_closed(c)

    @precondition(lambda self: bool(self.conns))
    @rule(
        pick=st.integers(0, MAX_CONNS),
        service=st.integers(0, 0xFFFF),
        command=UNKNOWN_COMMANDS,
        body=st.binary(max_size=64),
    )
    def unknown_command(self, pick: int, service: int, command: int, body: bytes) -> None:
        c = self.conn(pick)
        c.wire.send(encode_pdu(service, command, self.next_seq(), body))
        if c.doomed:
            self.closed_or_alive(c)
        else:
            self.bad_pdu(c)

    @precondition(lambda self: bool(self.logged_in()))
    @rule(pick=st.integers(0, MAX_CONNS), service=st.integers(0, 0xFFFF))
    def wrong_service(self, pick: int, service: int) -> None:
        c = self.logged_in()[pick % len(self.logged_in())]
        sid, cid = ids_of(msg_pb.IMClientTimeReq)
        if service == sid:
            service += 1
        c.wire.send(encode_pdu(service, cid, self.next_seq(), b""))
        self.bad_pdu(c)

    @precondition(lambda self: any(not c.name and not c.doomed for c in self.conns))
    @rule(pick=st.integers(0, MAX_CONNS), data=st.data())
    def before_login(self, pick: int, data: st.DataObject) -> None:
        fresh = [c for c in self.conns if not c.name and not c.doomed]
        c = fresh[pick % len(fresh)]
        message, _ = data.draw(queries(list(self.ids.values())))
        c.wire.send(frame_of(message, self.next_seq()))
        self.expect_closed(c)

    @precondition(lambda self: bool(self.conns))
    @rule(
        pick=st.integers(0, MAX_CONNS),
        ids=st.sampled_from(CLIENT_COMMANDS),
        body=st.binary(max_size=200),
        seq=st.integers(VALID_SEQS, 0xFFFF) | st.just(0),
    )
    def garbage_body(self, pick: int, ids: tuple[int, int], body: bytes, seq: int) -> None:
        # Garbage may still parse as a whole request (protobuf is lenient): then it is
        # served, so the model cannot say more than "closed or still answering".
        c = self.conn(pick)
        c.wire.send(encode_pdu(*ids, seq, body))
        self.uncertain(c)

    @precondition(lambda self: bool(self.conns))
    @rule(pick=st.integers(0, MAX_CONNS), data=st.data(), cut=st.integers(0, 100))
    def truncated_body(self, pick: int, data: st.DataObject, cut: int) -> None:
        c = self.conn(pick)
        message, _ = data.draw(queries(list(self.ids.values())))
        body = message.SerializePartialToString()
        body = body[: cut % (len(body) + 1)]
        c.wire.send(encode_pdu(*ids_of(message), VALID_SEQS + 1, body))
        self.uncertain(c)

    @precondition(lambda self: bool(self.logged_in()))
    @rule(
        pick=st.integers(0, MAX_CONNS),
        to=st.sampled_from([0]) | u32,
        msg_type=st.integers(0, 0xFF),
    )
    def odd_message(self, pick: int, to: int, msg_type: int) -> None:
        """IMMsgData to session 0, to no such user, or of a type that does not exist."""
        c = self.logged_in()[pick % len(self.logged_in())]
        msg = text_msg(to, b"odd")
        msg.ClearField("msg_type")
        # Field 5 (msg_type) as a varint, written by hand: the API refuses unknown enum values.
        body = msg.SerializePartialToString() + bytes([5 << 3]) + varint(msg_type)
        c.wire.send(encode_pdu(*ids_of(msg), VALID_SEQS + 2, body))
        self.uncertain(c)

    @precondition(lambda self: bool(self.conns))
    @rule(pick=st.integers(0, MAX_CONNS), data=st.binary(min_size=1, max_size=300))
    def random_bytes(self, pick: int, data: bytes) -> None:
        c = self.conn(pick)
        c.wire.send(data)
        self.uncertain(c)

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def servers_run_and_log_no_traceback(self) -> None:
        for name, child in self.suite.children.items():
            assert child.proc.poll() is None, f"{name} exited with {child.proc.returncode}"
            path = Path(self.suite.layout.data_dir) / f"{name}.log"
            with path.open("rb") as f:
                f.seek(self.log_offsets.get(name, 0))
                new = f.read()
            self.log_offsets[name] = self.log_offsets.get(name, 0) + len(new)
            assert b"Traceback" not in new, f"{name} logged:\n{new.decode(errors='replace')}"

    @invariant()
    def a_probe_logs_in_and_is_acked(self) -> None:
        probe = Wire(self.port)
        try:
            probe.send(
                frame_of(
                    login_pb.IMLoginReq(
                        user_name="alice",
                        password=password_digest(DEMO_PASSWORD),
                        online_status=base.USER_STATUS_ONLINE,
                        client_type=base.CLIENT_TYPE_SCRIPT,
                    ),
                    1,
                )
            )
            res, _ = probe.answer(1)
            assert isinstance(res, login_pb.IMLoginRes) and res.result_code == 0, res
            data = f"probe {len(self.acked)}".encode()
            probe.send(frame_of(text_msg(self.ids["bob"], data), 2))
            ack, _ = probe.answer(2)
            assert isinstance(ack, msg_pb.IMMsgDataAck) and ack.msg_id > 0, ack
        finally:
            probe.close()
        self.acked.append(
            Acked("alice", base.SESSION_TYPE_SINGLE, self.ids["bob"], ack.msg_id, data)
        )
        deadline = time.monotonic() + WAIT_S
        while True:
            got = self.bob.wait_for(msg_pb.IMMsgData, max(0.1, deadline - time.monotonic()))
            if got.from_user_id == self.ids["alice"] and got.msg_id == ack.msg_id:
                assert got.msg_data == data
                break

    def teardown(self) -> None:
        for c in list(self.conns):
            self.gone(c)
        members = {g.group_id: g.members for g in self.groups}
        verify_history(self.suite, self.acked, self.ids, members)


def verify_history(
    suite: RunningSuite, acked: list[Acked], ids: dict[str, int], members: dict[int, set[int]]
) -> None:
    """Every acked message is in history, as sent (asked as its sender; a group message
    only while its sender is still a member: a member who left reads the group no more)."""
    readers: dict[str, Client] = {}
    try:
        for a in acked:
            if a.session_type == base.SESSION_TYPE_GROUP and ids[a.sender] not in members.get(
                a.session_id, set()
            ):
                continue
            if a.sender not in readers:
                readers[a.sender] = suite.login(a.sender, client_type=base.CLIENT_TYPE_SCRIPT)
            rsp = readers[a.sender].request(
                msg_pb.IMGetMsgByIdReq(
                    user_id=0,
                    session_type=base.SessionType.ValueType(a.session_type),
                    session_id=a.session_id,
                    msg_id_list=[a.msg_id],
                ),
                msg_pb.IMGetMsgByIdRsp,
            )
            found = [m.msg_data for m in rsp.msg_list if m.msg_id == a.msg_id]
            assert found == [a.data], f"acked message {a} not in history: {rsp}"
    finally:
        for reader in readers.values():
            reader.close()


@pytest.fixture
def fuzz_suite(tmp_path: Path) -> Iterator[RunningSuite]:
    suite = start_suite(tmp_path / "suite", f"sqlite:///{tmp_path / 'im.db'}", overrides=OVERRIDES)
    try:
        yield suite
    finally:
        suite.stop()


def fuzz(suite: RunningSuite, config: settings) -> None:
    bob = suite.login("bob")
    ids = {u.user_nick_name.lower(): u.user_id for u in bob.all_users().user_list}

    class Machine(MsgServerFuzz):
        pass

    Machine.suite, Machine.bob, Machine.ids, Machine.log_offsets = suite, bob, ids, {}
    run_state_machine_as_test(Machine, settings=config)
    assert bob.is_connected, "bob, whom no rule touched, was disconnected"


@pytest.mark.timeout(300)
def test_msg_server_survives_stateful_fuzzing(fuzz_suite: RunningSuite) -> None:
    fuzz(fuzz_suite, FAST)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_msg_server_survives_deep_stateful_fuzzing(fuzz_suite: RunningSuite) -> None:
    fuzz(fuzz_suite, DEEP)


# -- what the fuzzing found, kept as plain tests ----------------------------------------------


def test_a_message_to_oneself_is_refused_at_once_and_the_connection_kept(
    fuzz_suite: RunningSuite,
) -> None:
    carol = fuzz_suite.login("carol")
    carol.send(text_msg(carol.user_id, b"to me"), seq=7)
    # Kept (it answers), and told nothing was stored: no ack ever comes for seq 7.
    assert carol.request(msg_pb.IMClientTimeReq(), msg_pb.IMClientTimeRsp).server_time > 0
    assert "seq 7: a message to oneself" in fuzz_suite.log_text("msg_server")
    assert "message to oneself" not in fuzz_suite.log_text("db_proxy_server")
    assert carol.history(carol.user_id).msg_list == []
