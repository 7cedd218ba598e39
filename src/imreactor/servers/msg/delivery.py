"""msg_server delivery: messages, acks, read receipts, p2p commands, groups, queries.

An ``IMMsgData`` gets its sender from the session, is stored by db_proxy (which
assigns the msg_id), and only then is acknowledged to the sender (``IMMsgDataAck``
with the request's seq) and delivered (seq 0, msg_id set, attach_data cleared) to
every connection of the peer (or the group's members) and the sender's other
connections, here and through route_server. Queries (unread counts, history, users,
sessions, ...) are forwarded to db_proxy with ``user_id`` taken from the session; the
answer goes back with the request's seq.

A request that can get no answer because no db_proxy link is up, or because the link
closed before it answered, closes the client's connection (gracefully: the answers
before it go out first). So does a message db_proxy did not store (refused, failed or
too late): TeamTalk has no error ack for a message, and a client that sees its
connection close knows that what it had not had acked may not be stored: it
reconnects (perhaps to another msg_server) and sends again, instead of waiting for an
ack that never comes. Only the senders of such messages are closed; everyone else,
connected and idle through a database outage, stays. Loop thread only.
"""

from __future__ import annotations

import functools
import logging
import struct
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message

from ...logs import ids
from ...net import ConnState
from ...pdu.imconn import Dispatcher, encode_message
from ...pdu.kinds import GROUP_MSG_TYPES, SINGLE_MSG_TYPES
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy
from ...pdu.proto import im_group_pb2 as group_pb
from ...pdu.proto import im_message_pb2 as msg_pb
from ...pdu.proto import im_switch_service_pb2 as switch_pb
from ...pdu.registry import ids_of
from .client import ClientConn
from .groups import GroupEntry
from .ordering import NAMES_LATEST

if TYPE_CHECKING:
    from .server import MsgServer

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

_MSG_DATA_IDS = ids_of(msg_pb.IMMsgData)  # for bad_pdu reports, not looked up per message

#: Queries forwarded to db_proxy as they are (``user_id`` set from the session).
FORWARDED: list[tuple[type[Message], type[Message]]] = [
    (msg_pb.IMUnreadMsgCntReq, msg_pb.IMUnreadMsgCntRsp),
    (msg_pb.IMGetMsgListReq, msg_pb.IMGetMsgListRsp),
    (msg_pb.IMGetLatestMsgIdReq, msg_pb.IMGetLatestMsgIdRsp),
    (msg_pb.IMGetMsgByIdReq, msg_pb.IMGetMsgByIdRsp),
    (buddy.IMRecentContactSessionReq, buddy.IMRecentContactSessionRsp),
    (buddy.IMUsersInfoReq, buddy.IMUsersInfoRsp),
    (buddy.IMRemoveSessionReq, buddy.IMRemoveSessionRsp),
    (buddy.IMAllUserReq, buddy.IMAllUserRsp),
    (buddy.IMDepartmentReq, buddy.IMDepartmentRsp),
    (group_pb.IMNormalGroupListReq, group_pb.IMNormalGroupListRsp),
    (group_pb.IMGroupInfoListReq, group_pb.IMGroupInfoListRsp),
    (group_pb.IMGroupShieldReq, group_pb.IMGroupShieldRsp),
]


def unanswerable(conn: ClientConn, what: str, why: str) -> None:
    """``conn`` sent a request that will get no answer: close it (after what it is owed
    already), so that it does not wait for one (the module docstring)."""
    log.warning("%r: %s cannot be answered (%s); closing the connection", conn.conn, what, why)
    conn.conn.close()


class Delivery:
    """What one msg_server does with a logged-in client's messages and queries."""

    def __init__(self, server: MsgServer) -> None:
        self.server = server

    def register(self, clients: Dispatcher[ClientConn]) -> None:
        """Serve messages, acks, p2p commands, groups and queries from clients."""
        clients.register(msg_pb.IMMsgData, self._on_msg_data)
        clients.register(msg_pb.IMMsgDataAck, self._on_msg_data_ack)
        clients.register(msg_pb.IMMsgDataReadAck, self._on_read_ack)
        clients.register(msg_pb.IMClientTimeReq, self._on_client_time)
        clients.register(buddy.IMChangeSignInfoReq, self._on_change_sign_info)
        clients.register(switch_pb.IMP2PCmdMsg, self._on_p2p_cmd)
        clients.register(group_pb.IMGroupCreateReq, self._on_group_create)
        clients.register(group_pb.IMGroupChangeMemberReq, self._on_group_change_member)
        for req_cls, rsp_cls in FORWARDED:
            clients.register(req_cls, self._forwarder(rsp_cls))

    def _on_msg_data(self, conn: ClientConn, msg: msg_pb.IMMsgData, seq: int) -> None:
        if not conn.take_token():
            config = self.server.config
            log.warning(
                "%r: flooding (more than %d messages beyond %g/s); closing",
                conn.conn,
                config.msg_burst,
                config.msg_rate_per_s,
            )
            conn.conn.abort()
            return
        sid, cid = _MSG_DATA_IDS
        if msg.to_session_id == 0:
            conn.bad_pdu(sid, cid, seq, "to_session_id 0")
            return
        if msg.msg_type in SINGLE_MSG_TYPES and msg.to_session_id == conn.user_id:
            # Storage refuses it too, but its refusal reaches the client as no answer at all.
            conn.bad_pdu(sid, cid, seq, "a message to oneself")
            return
        msg.from_user_id = conn.user_id  # never trust the client's claim
        if msg.msg_type in SINGLE_MSG_TYPES:
            self._store_message(conn, msg, seq, None)
        elif msg.msg_type in GROUP_MSG_TYPES:

            def with_group(entry: GroupEntry | None) -> None:
                if entry is None or conn.user_id not in entry.members:
                    conn.bad_pdu(sid, cid, seq, f"not a member of group {msg.to_session_id}")
                    return
                self._store_message(conn, msg, seq, entry)

            self.server.groups.get(msg.to_session_id, with_group)
        else:
            conn.bad_pdu(sid, cid, seq, f"msg_type {msg.msg_type} refused")

    def _not_stored(self, conn: ClientConn, why: str) -> None:
        """A message could not be stored: close its sender's connection.

        IMMsgDataAck has no result code, so the one answer that cannot be taken for
        an ack is the close. Without it the sender would wait for an ack that never
        comes; after it, the sender knows its unacked messages may not be stored,
        logs in again (through login_server, perhaps elsewhere) and sends them again.
        Acks already queued on the connection go out before the close.
        """
        self.server.stats.messages.inc("not_stored")
        if conn.conn.state is ConnState.CONNECTED:
            unanswerable(conn, "IMMsgData", f"not stored: {why}")

    def _store_message(
        self, conn: ClientConn, msg: Any, seq: int, group: GroupEntry | None
    ) -> None:
        """Store via db_proxy; only then ack to the sender and deliver everywhere."""
        db = self.server.db.pick()
        stats = self.server.stats
        if db is None:
            self._not_stored(conn, "no db_proxy link is up")
            return
        received = stats.loop.time()
        msg.create_time = int(time.time())
        msg.msg_id = 0
        msg.attach_data = conn.attach()

        def stored(rsp: msg_pb.IMMsgData | None, exc: BaseException | None) -> None:
            if rsp is None or rsp.msg_id == 0:
                self._not_stored(conn, str(exc or "db_proxy refused it"))
                return
            stats.messages.inc("stored")
            log.debug(
                "message %d from user %d to session %d stored",
                rsp.msg_id,
                rsp.from_user_id,
                rsp.to_session_id,
                extra=ids(conn=conn.handle, user=rsp.from_user_id, msg=rsp.msg_id),
            )
            stats.store_latency.observe(stats.loop.time() - received)
            rsp.ClearField("attach_data")
            if conn.conn.state is ConnState.CONNECTED:
                ack = msg_pb.IMMsgDataAck(
                    user_id=rsp.from_user_id,
                    session_id=rsp.to_session_id,
                    msg_id=rsp.msg_id,
                    session_type=base.SESSION_TYPE_GROUP
                    if group is not None
                    else base.SESSION_TYPE_SINGLE,
                )
                sequencer = conn.sequencer
                if sequencer is not None:
                    sequencer.acked(rsp, rsp.msg_id, lambda: conn.send(ack, seq))
                else:
                    conn.send(ack, seq)
            if group is None:
                self.deliver_msg(rsp, (rsp.to_session_id, rsp.from_user_id), exclude=conn)
                self.server.relay.forward(rsp)
            else:
                members = sorted(group.members)
                self.deliver_msg(rsp, members, exclude=conn)
                # route_server needs the members to find their servers; they travel
                # in attach_data, the field servers own.
                # A copy: ``rsp`` may still be waiting in a connection's sequencer.
                relay = msg_pb.IMMsgData()
                relay.CopyFrom(rsp)
                relay.attach_data = struct.pack(f">{len(members)}I", *members)
                self.server.relay.forward(relay)
            stats.delivery_latency.observe(stats.loop.time() - received)

        db.request(
            msg, stored, timeout_s=self.server.config.db_timeout_s, response=msg_pb.IMMsgData
        )

    def deliver_msg(
        self, msg: Any, user_ids: Iterable[int], exclude: ClientConn | None = None
    ) -> None:
        """Deliver an ``IMMsgData`` to these users' connections, in msg_id order per conversation.

        Encoded once, when the first recipient is found: a group message to m
        members costs one serialization, not m.
        """
        frame: bytes | None = None
        delivered = 0
        for user_id in user_ids:
            conns = self.server.users.get(user_id)
            if conns is None:
                continue
            for c in conns:
                if c is exclude:
                    continue
                if frame is None:
                    frame = encode_message(msg)
                delivered += 1
                sequencer = c.sequencer
                if sequencer is not None:
                    sequencer.deliver(msg, functools.partial(c.send_frame, frame))
                else:
                    c.send_frame(frame)
        if delivered:
            self.server.stats.deliveries.inc(amount=delivered)

    def deliver(self, message: Message, user_id: int, exclude: ClientConn | None = None) -> None:
        conns = self.server.users.get(user_id)
        if conns is None:
            return
        for c in conns:
            if c is not exclude:
                c.send(message)

    def _on_msg_data_ack(self, conn: ClientConn, msg: msg_pb.IMMsgDataAck, seq: int) -> None:
        # Delivery receipts: nothing is queued for redelivery (clients catch up by
        # pulling unread counts and history), so there is nothing to release.
        pass

    def _on_read_ack(self, conn: ClientConn, msg: msg_pb.IMMsgDataReadAck, seq: int) -> None:
        msg.user_id = conn.user_id
        db = self.server.db.pick()
        if db is not None:
            db.send(msg)
        notify = msg_pb.IMMsgDataReadNotify(
            user_id=conn.user_id,
            session_id=msg.session_id,
            msg_id=msg.msg_id,
            session_type=msg.session_type,
        )
        self.deliver(notify, conn.user_id, exclude=conn)
        self.server.relay.forward(notify)

    def _on_client_time(self, conn: ClientConn, msg: msg_pb.IMClientTimeReq, seq: int) -> None:
        conn.send(msg_pb.IMClientTimeRsp(server_time=int(time.time())), seq)

    def _on_p2p_cmd(self, conn: ClientConn, msg: switch_pb.IMP2PCmdMsg, seq: int) -> None:
        msg.from_user_id = conn.user_id
        self.deliver(msg, msg.to_user_id)
        self.server.relay.forward(msg)

    def _on_change_sign_info(
        self, conn: ClientConn, msg: buddy.IMChangeSignInfoReq, seq: int
    ) -> None:

        def changed(rsp: buddy.IMChangeSignInfoRsp) -> None:
            if rsp.result_code == 0:
                notify = buddy.IMSignInfoChangedNotify(
                    changed_user_id=conn.user_id, sign_info=msg.sign_info
                )
                for uid in list(self.server.users):
                    self.deliver(notify, uid, exclude=conn)

        self.forward(conn, msg, seq, buddy.IMChangeSignInfoRsp, changed)

    def _on_group_create(self, conn: ClientConn, msg: group_pb.IMGroupCreateReq, seq: int) -> None:
        # Clients create temporary groups only; normal groups are made by the admin CLI.
        msg.group_type = base.GROUP_TYPE_TMP

        def created(rsp: group_pb.IMGroupCreateRsp) -> None:
            if rsp.result_code != 0:
                return
            members = list(rsp.user_id_list)
            self.server.groups.put(rsp.group_id, conn.user_id, base.GROUP_TYPE_TMP, members)
            self._group_changed(
                conn,
                group_pb.IMGroupChangeMemberNotify(
                    user_id=conn.user_id,
                    change_type=base.GROUP_MODIFY_TYPE_ADD,
                    group_id=rsp.group_id,
                    cur_user_id_list=members,
                    chg_user_id_list=members,
                ),
            )

        self.forward(conn, msg, seq, group_pb.IMGroupCreateRsp, created)

    def _on_group_change_member(
        self, conn: ClientConn, msg: group_pb.IMGroupChangeMemberReq, seq: int
    ) -> None:
        user_id = conn.user_id

        def refuse(why: str) -> None:
            log.info("user %d: group %d change refused: %s", user_id, msg.group_id, why)
            conn.send(
                group_pb.IMGroupChangeMemberRsp(
                    user_id=user_id,
                    change_type=msg.change_type,
                    result_code=1,
                    group_id=msg.group_id,
                ),
                seq,
            )

        def with_group(entry: GroupEntry | None) -> None:
            if entry is None or user_id not in entry.members:
                refuse("not a member")
                return
            removing_others = msg.change_type == base.GROUP_MODIFY_TYPE_DEL and any(
                uid != user_id for uid in msg.member_id_list
            )
            if removing_others and user_id != entry.creator_id:
                refuse("only the creator removes others")
                return

            def changed(rsp: group_pb.IMGroupChangeMemberRsp) -> None:
                if rsp.result_code != 0:
                    return
                self.server.groups.update_members(msg.group_id, rsp.cur_user_id_list)
                self._group_changed(
                    conn,
                    group_pb.IMGroupChangeMemberNotify(
                        user_id=user_id,
                        change_type=msg.change_type,
                        group_id=msg.group_id,
                        cur_user_id_list=list(rsp.cur_user_id_list),
                        chg_user_id_list=list(rsp.chg_user_id_list),
                    ),
                )

            self.forward(conn, msg, seq, group_pb.IMGroupChangeMemberRsp, changed)

        self.server.groups.get(msg.group_id, with_group)

    def _group_changed(self, conn: ClientConn, notify: Any) -> None:
        """Tell current and removed members here, and the other servers through route."""
        self.notify_group_members(notify, exclude=conn)
        self.server.relay.forward(notify)

    def notify_group_members(self, notify: Any, exclude: ClientConn | None = None) -> None:
        for uid in set(notify.cur_user_id_list) | set(notify.chg_user_id_list):
            self.deliver(notify, uid, exclude=exclude)

    def _forwarder(self, rsp_cls: type[Message]) -> Callable[[ClientConn, Message, int], None]:
        def handler(conn: ClientConn, msg: Message, seq: int) -> None:
            self.forward(conn, msg, seq, rsp_cls)

        return handler

    def forward(
        self,
        conn: ClientConn,
        msg: Any,
        seq: int,
        rsp_cls: type[M],
        then: Callable[[M], object] | None = None,
    ) -> None:
        db = self.server.db.pick()
        if db is None:
            unanswerable(conn, type(msg).__name__, "no db_proxy link is up")
            return
        msg.user_id = conn.user_id
        msg.attach_data = conn.attach()

        def answered(rsp: M | None, exc: BaseException | None) -> None:
            if rsp is None:
                log.warning("%s for user %d failed: %s", type(msg).__name__, conn.user_id, exc)
                if isinstance(exc, ConnectionError):
                    unanswerable(conn, type(msg).__name__, "the db_proxy link closed")
                return
            rsp.ClearField("attach_data")
            if conn.conn.state is ConnState.CONNECTED:
                conn.send(rsp, seq)
                if rsp_cls in NAMES_LATEST and (sequencer := conn.sequencer) is not None:
                    sequencer.learned(rsp, conn.user_id)
            if then is not None:
                then(rsp)

        db.request(msg, answered, timeout_s=self.server.config.db_timeout_s, response=rsp_cls)
