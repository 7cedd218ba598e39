"""The route_server fabric: what msg_server tells route_server and what it hears back.

Every (re)connect announces this server's online users (route_server forgot them when
the link dropped) and, with subscribed presence, the users watched here. Messages,
read receipts, p2p commands, kicks and group changes for users elsewhere travel once,
through one live route_server; what route_server relays here goes through
:meth:`Fabric.inbound <.fabric.Fabric.inbound>` like every fabric's.

route_server acknowledges nothing, so a link that drops (route_server killed, a reset)
takes with it whatever was in flight. The relay therefore:

- keeps every message it forwarded in the last :data:`RESEND_S`; when that link drops,
  those go again, once a route_server link is back, before anything newer;
- holds what is forwarded while no link is up (or while older messages wait to go) in
  an outbox of at most :data:`OUTBOX_MAX`, sent in order;
- after a link comes up waits :data:`FLUSH_DELAY_S` before sending the outbox, so that
  the other msg_servers have re-announced their users to a restarted route_server
  (it relays only to the msg_servers it knows to host the recipient);
- drops, as a receiver, a second copy of a message (:class:`~.dedupe.SeenMessages`).

So an acked message reaches an online recipient on another msg_server exactly once
across a route_server restart, unless the recipient's msg_server needs longer than
:data:`FLUSH_DELAY_S` to re-announce or the outbox overflows (counted and logged).
Loop thread only.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from ...net import ConnState
from ...pdu.imconn import Dispatcher
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy
from ...pdu.proto import im_message_pb2 as msg_pb
from ...pdu.proto import im_server_pb2 as server_pb
from ..links import Link
from .client import ClientConn
from .dedupe import SeenMessages
from .fabric import Fabric, Inbound

if TYPE_CHECKING:
    from .server import MsgServer

log = logging.getLogger(__name__)

#: Seconds of forwarded messages kept, to send again when their link drops.
RESEND_S = 2.0
#: Seconds after a route_server link comes up before the outbox goes (re-announcements).
FLUSH_DELAY_S = 1.5
#: Messages held while no route_server link is up; beyond it the oldest are dropped.
OUTBOX_MAX = 50_000


def _from_link(handler: Inbound) -> Callable[[Link, Any, int], None]:
    def on_link(link: Link, message: Any, seq: int) -> None:
        handler(message)

    return on_link


class Relay(Fabric):
    """One msg_server's traffic to and from route_server (this module's docstring)."""

    def __init__(self, server: MsgServer) -> None:
        super().__init__(server)
        self.master = False  #: route_server's IMRoleSet
        #: (when, link, message) of each message forwarded in the last RESEND_S.
        self._recent: deque[tuple[float, Link, Message]] = deque()
        self._outbox: deque[Message] = deque()
        self._flushing: Any = None  # the timer that sends the outbox
        self.seen = SeenMessages()
        self.resent = 0  #: messages sent again after their link dropped
        self.overflowed = 0  #: messages the outbox had no room for

    @property
    def pending_work(self) -> int:
        # Only what can still go: with no route_server link up (all of them draining too,
        # say), the outbox waits for a link that a draining server must not wait for.
        return len(self._outbox) if self.server.route.live else 0

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
            if message is msg_pb.IMMsgData:
                handler = self._once(handler)
            routes.register(message, _from_link(handler))
        routes.register(server_pb.IMRoleSet, self._from_route_role)

    def _once(self, handler: Inbound) -> Inbound:
        def first_copy(msg: msg_pb.IMMsgData) -> None:
            if self.seen.first_time(msg):
                handler(msg)

        return first_copy

    def link_down(self, link: Link) -> None:
        """``link`` dropped: what went over it lately goes again, ahead of the outbox."""
        lost = [message for _, via, message in self._recent if via is link]
        if lost:
            self._recent = deque(entry for entry in self._recent if entry[1] is not link)
            self.resent += len(lost)
            self._outbox.extendleft(reversed(lost))
            log.info("route_server link lost: %d recent messages will be sent again", len(lost))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._outbox and self._flushing is None and self.server.route.live:
            self._flushing = self.server.loop.call_later(FLUSH_DELAY_S, self._flush)

    def _flush(self) -> None:
        self._flushing = None
        while self._outbox:
            link = self.server.route.pick()
            if link is None:
                return  # the next link up schedules the rest
            self._send(link, self._outbox.popleft())

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
        self._schedule_flush()

    def status_changed(self, conn: ClientConn, status: int) -> None:
        self.server.route.broadcast(
            server_pb.IMUserStatusUpdate(
                user_status=status,
                user_id=conn.user_id,
                client_type=base.ClientType.ValueType(conn.client_type),
            )
        )

    def forward(self, message: Message) -> None:
        """Relay through one live route_server (each message must travel once), or hold it
        in the outbox while there is none or older messages wait (the module docstring).
        Without route_servers configured (a single msg_server) there is nowhere to go."""
        if not self.server.route.configured:
            return
        link = self.server.route.pick() if not self._outbox else None
        if link is None:
            if len(self._outbox) >= OUTBOX_MAX:
                self._outbox.popleft()
                self.overflowed += 1
                if self.overflowed == 1 or self.overflowed % 1000 == 0:
                    log.warning("route_server outbox full: %d messages dropped", self.overflowed)
            self._outbox.append(message)
            self._schedule_flush()
            return
        self._send(link, message)

    def _send(self, link: Link, message: Message) -> None:
        link.send(message, partial=True)
        self.count_out(message)
        if isinstance(message, msg_pb.IMMsgData):
            now = self.server.loop.time()
            recent = self._recent
            recent.append((now, link, message))
            while recent and recent[0][0] < now - RESEND_S:
                recent.popleft()

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
