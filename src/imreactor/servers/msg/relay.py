"""msg_server's side of route_server: what it tells route_server and what it hears back.

Every (re)connect announces this server's online users (route_server forgot them when
the link dropped) and, with subscribed presence, the users watched here. Messages,
read receipts, p2p commands, kicks and group changes for users elsewhere travel once,
through one live route_server; what route_server relays here is delivered to the
connections of this server. Loop thread only.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from ...pdu.imconn import Dispatcher
from ...pdu.kinds import GROUP_MSG_TYPES, device_class
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_group_pb2 as group_pb
from ...pdu.proto import im_message_pb2 as msg_pb
from ...pdu.proto import im_server_pb2 as server_pb
from ...pdu.proto import im_switch_service_pb2 as switch_pb
from ..links import Link
from .client import ClientConn

if TYPE_CHECKING:
    from .server import MsgServer

log = logging.getLogger(__name__)


class Relay:
    """One msg_server's traffic to and from route_server (this module's docstring)."""

    def __init__(self, server: MsgServer) -> None:
        self.server = server
        self.master = False  #: route_server's IMRoleSet

    def register(self, routes: Dispatcher[Link]) -> None:
        """Serve what route_server relays to this server."""
        routes.register(msg_pb.IMMsgData, self._from_route_msg)
        routes.register(msg_pb.IMMsgDataReadNotify, self._from_route_read_notify)
        routes.register(switch_pb.IMP2PCmdMsg, self._from_route_p2p)
        routes.register(server_pb.IMServerKickUser, self._from_route_kick)
        routes.register(group_pb.IMGroupChangeMemberNotify, self._from_route_group_change)
        routes.register(server_pb.IMRoleSet, self._from_route_role)

    def announce(self, link: Link) -> None:
        # Every (re)connect: route_server forgot this server's users when the link dropped.
        info = server_pb.IMOnlineUserInfo()
        for conns in self.server.users.values():
            for c in conns:
                info.user_stat_list.add(
                    user_id=c.user_id,
                    status=base.USER_STATUS_ONLINE,
                    client_type=base.ClientType.ValueType(c.client_type),
                )
        link.send(info)
        if self.server.presence.subscribed:
            # After the users: the answer then counts them. Sent even when empty: it is
            # what makes this link a subscribed one (broadcast until then).
            self.server.presence.watch_to_route(
                link, list(self.server.presence.watchers), replace=True
            )

    def status_to_route(self, conn: ClientConn, status: int) -> None:
        self.server.route.broadcast(
            server_pb.IMUserStatusUpdate(
                user_status=status,
                user_id=conn.user_id,
                client_type=base.ClientType.ValueType(conn.client_type),
            )
        )

    def to_route(self, message: Message) -> None:
        """Relay through one live route_server (each message must travel once)."""
        link = self.server.route.pick()
        if link is not None:
            link.send(message, partial=True)

    def _from_route_msg(self, link: Link, msg: msg_pb.IMMsgData, seq: int) -> None:
        if msg.msg_type in GROUP_MSG_TYPES:
            data = msg.attach_data
            members = struct.unpack(f">{len(data) // 4}I", data[: len(data) // 4 * 4])
            msg.ClearField("attach_data")
            self.server.delivery.deliver_msg(msg, members)
        else:
            msg.ClearField("attach_data")
            self.server.delivery.deliver_msg(msg, (msg.to_session_id, msg.from_user_id))

    def _from_route_read_notify(
        self, link: Link, msg: msg_pb.IMMsgDataReadNotify, seq: int
    ) -> None:
        self.server.delivery.deliver(msg, msg.user_id)

    def _from_route_p2p(self, link: Link, msg: switch_pb.IMP2PCmdMsg, seq: int) -> None:
        self.server.delivery.deliver(msg, msg.to_user_id)

    def _from_route_kick(self, link: Link, msg: server_pb.IMServerKickUser, seq: int) -> None:
        conns = self.server.users.get(msg.user_id)
        if conns is None:
            return
        device = device_class(msg.client_type)
        if self.server.sessions.sessions_of(device) != 1:
            return  # larger limits hold per msg_server (see Sessions._logged_in)
        for older in conns.of_class(device):
            self.server.sessions.kick(older, msg.reason or base.KICK_REASON_DUPLICATE_USER)

    def _from_route_group_change(
        self, link: Link, msg: group_pb.IMGroupChangeMemberNotify, seq: int
    ) -> None:
        self.server.groups.invalidate(msg.group_id)
        self.server.delivery.notify_group_members(msg)  # route_server relayed it: nothing goes back

    def _from_route_role(self, link: Link, msg: server_pb.IMRoleSet, seq: int) -> None:
        self.master = bool(msg.master)
        log.info("route_server: this msg_server is %s", "master" if self.master else "not master")
