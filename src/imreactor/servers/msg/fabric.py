"""The fabric: how one msg_server reaches the others, whatever carries the traffic.

A cluster's msg_servers share two things: *presence* (who is online on which
msg_server, with which client types) and *relay* (a message, read notify, p2p
command, kick, group change or status notify for users hosted elsewhere reaches
exactly the msg_servers hosting them). Two fabrics implement it:

- :class:`~.relay.Relay`, through route_server (TeamTalk's way, and the one that
  mixes with TeamTalk's own servers);
- :class:`~.redis_fabric.RedisFabric`, through a Redis: presence in hashes with a
  heartbeat key per msg_server, relay through a Redis Stream per msg_server.

The rest of msg_server talks to :class:`Fabric` only: :meth:`~Fabric.forward` what
other servers must see, :meth:`~Fabric.status_changed` on each login and logout,
:attr:`~Fabric.ready` before a login is accepted (result 5 when not), and
:meth:`~Fabric.users_status` for a status query. What arrives from other servers
goes through one table, :meth:`Fabric.inbound`, whichever fabric carried it, so both
deliver alike. Loop thread only.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from ...pdu.kinds import GROUP_MSG_TYPES, device_class
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy
from ...pdu.proto import im_group_pb2 as group_pb
from ...pdu.proto import im_message_pb2 as msg_pb
from ...pdu.proto import im_server_pb2 as server_pb
from ...pdu.proto import im_switch_service_pb2 as switch_pb
from .client import ClientConn

if TYPE_CHECKING:
    from .server import MsgServer

log = logging.getLogger(__name__)

Inbound = Callable[[Any], None]


class Fabric:
    """What every fabric offers msg_server (the module docstring); this class is the one
    without peers (a single msg_server), and the base of the real ones."""

    def __init__(self, server: MsgServer) -> None:
        self.server = server

    @property
    def clustered(self) -> bool:
        """True when other msg_servers exist: presence is cluster-wide and the fabric
        announces every transition (this server's own included)."""
        return False

    @property
    def ready(self) -> bool:
        """False while the fabric is configured but unreachable: logins are refused (5)."""
        return True

    @property
    def pending_work(self) -> int:
        """Relays and presence writes sent and not yet confirmed, or waiting to be sent on a
        link that is up (a draining msg_server waits for them); requests on route_server
        links are counted by their :class:`~imreactor.servers.links.LinkSet`."""
        return 0

    def start(self) -> None:
        """Begin linking to the fabric."""

    def close(self) -> None:
        """Leave the fabric."""

    def forward(self, message: Message) -> None:
        """Relay ``message`` to the msg_servers that host its recipients (each once)."""

    def status_changed(self, conn: ClientConn, status: int) -> None:
        """``conn`` logged in (online) or its session ended (offline)."""

    def users_status(self, conn: ClientConn, msg: buddy.IMUsersStatReq, seq: int) -> bool:
        """Answer ``msg`` to ``conn`` with cluster-wide presence; False: answer it locally."""
        return False

    # -- what other msg_servers relayed here ------------------------------------------------

    def inbound(self) -> dict[type[Message], Inbound]:
        """Message class → handler of a copy relayed from another msg_server (each one
        counted in ``imreactor_msg_relayed_total{direction="in"}``)."""
        handlers: dict[type[Message], Inbound] = {
            msg_pb.IMMsgData: self.relayed_msg,
            msg_pb.IMMsgDataReadNotify: self.relayed_read_notify,
            switch_pb.IMP2PCmdMsg: self.relayed_p2p,
            server_pb.IMServerKickUser: self.relayed_kick,
            group_pb.IMGroupChangeMemberNotify: self.relayed_group_change,
            buddy.IMUserStatNotify: self.server.presence.relayed_stat_notify,
        }
        return {cls: self._counted(cls, handler) for cls, handler in handlers.items()}

    def _counted(self, cls: type[Message], handler: Inbound) -> Inbound:
        name, server = cls.__name__, self.server

        def counted(msg: Any) -> None:
            server.stats.relayed.inc("in", name)  # read here: stats are made after the fabric
            handler(msg)

        return counted

    def count_out(self, message: Message) -> None:
        """Count ``message`` as relayed out (a fabric calls it once per message sent)."""
        self.server.stats.relayed.inc("out", type(message).__name__)

    def relayed_msg(self, msg: msg_pb.IMMsgData) -> None:
        delivery = self.server.delivery
        if msg.msg_type in GROUP_MSG_TYPES:
            # The members travel in attach_data, big-endian u32s (see Delivery).
            data = msg.attach_data
            members = struct.unpack(f">{len(data) // 4}I", data[: len(data) // 4 * 4])
            msg.ClearField("attach_data")
            delivery.deliver_msg(msg, members)
        else:
            msg.ClearField("attach_data")
            delivery.deliver_msg(msg, (msg.to_session_id, msg.from_user_id))

    def relayed_read_notify(self, msg: msg_pb.IMMsgDataReadNotify) -> None:
        self.server.delivery.deliver(msg, msg.user_id)

    def relayed_p2p(self, msg: switch_pb.IMP2PCmdMsg) -> None:
        self.server.delivery.deliver(msg, msg.to_user_id)

    def relayed_kick(self, msg: server_pb.IMServerKickUser) -> None:
        conns = self.server.users.get(msg.user_id)
        if conns is None:
            return
        device = device_class(msg.client_type)
        if self.server.sessions.sessions_of(device) != 1:
            return  # larger limits hold per msg_server (see Sessions._logged_in)
        for older in conns.of_class(device):
            self.server.sessions.kick(older, msg.reason or base.KICK_REASON_DUPLICATE_USER)

    def relayed_group_change(self, msg: group_pb.IMGroupChangeMemberNotify) -> None:
        self.server.groups.invalidate(msg.group_id)
        self.server.delivery.notify_group_members(msg)  # relayed: nothing goes back
