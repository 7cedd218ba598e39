"""The route_server fabric: what msg_server tells route_server and what it hears back.

Every (re)connect announces this server's online users (route_server forgot them when
the link dropped) and, with subscribed presence, the users watched here. Messages,
read receipts, p2p commands, kicks and group changes for users elsewhere travel once,
through one live route_server; what route_server relays here goes through
:meth:`Fabric.inbound <.fabric.Fabric.inbound>` like every fabric's. Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from ...net import ConnState
from ...pdu.imconn import Dispatcher
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy
from ...pdu.proto import im_server_pb2 as server_pb
from ..links import Link
from .client import ClientConn
from .fabric import Fabric, Inbound

if TYPE_CHECKING:
    from .server import MsgServer

log = logging.getLogger(__name__)


def _from_link(handler: Inbound) -> Callable[[Link, Any, int], None]:
    def on_link(link: Link, message: Any, seq: int) -> None:
        handler(message)

    return on_link


class Relay(Fabric):
    """One msg_server's traffic to and from route_server (this module's docstring)."""

    def __init__(self, server: MsgServer) -> None:
        super().__init__(server)
        self.master = False  #: route_server's IMRoleSet

    @property
    def clustered(self) -> bool:
        return self.server.route.configured

    @property
    def ready(self) -> bool:
        route = self.server.route
        return not route.configured or bool(route.live)

    def register(self, routes: Dispatcher[Link]) -> None:
        """Serve what route_server relays to this server."""
        for message, handler in self.inbound().items():
            routes.register(message, _from_link(handler))
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

    def status_changed(self, conn: ClientConn, status: int) -> None:
        self.server.route.broadcast(
            server_pb.IMUserStatusUpdate(
                user_status=status,
                user_id=conn.user_id,
                client_type=base.ClientType.ValueType(conn.client_type),
            )
        )

    def forward(self, message: Message) -> None:
        """Relay through one live route_server (each message must travel once)."""
        link = self.server.route.pick()
        if link is not None:
            link.send(message, partial=True)
            self.count_out(message)

    def users_status(self, conn: ClientConn, msg: buddy.IMUsersStatReq, seq: int) -> bool:
        route = self.server.route.pick()
        if route is None:
            return False
        # Presence is cluster-wide: route_server knows every msg_server's users.
        msg.user_id = conn.user_id
        msg.attach_data = conn.attach()

        def answered(rsp: buddy.IMUsersStatRsp | None, exc: BaseException | None) -> None:
            if rsp is not None and conn.conn.state is ConnState.CONNECTED:
                rsp.ClearField("attach_data")
                conn.send(rsp, seq)

        route.request(
            msg,
            answered,
            timeout_s=self.server.config.db_timeout_s,
            response=buddy.IMUsersStatRsp,
        )
        return True

    def _from_route_role(self, link: Link, msg: server_pb.IMRoleSet, seq: int) -> None:
        self.master = bool(msg.master)
        log.info("route_server: this msg_server is %s", "master" if self.master else "not master")
