"""msg_server: where clients keep their long connections.

Flows (WIRE.md §5):

- **login**: ``IMLoginReq`` → refused with 3/4 when the db_proxy/login_server
  links are down → ``IMValidateReq`` to db_proxy → on failure result 6 and close;
  on success the older connection of the same class (desktop or mobile) is
  kicked (``IMKickUser``) and closed, login_server gets ``IMUserCntUpdate``, the
  client gets ``IMLoginRes`` with its request's seq.
- **presence**: ``IMUsersStatReq`` is answered with each named user's status and, with
  ``presence = "subscribed"``, subscribes the connection to them (at most
  ``max_subscriptions`` per connection, until it closes): ``IMUserStatNotify`` about a
  user goes to the connections subscribed to that user. Alone, this server sees every
  transition itself; with route_servers, a user may be online on several msg_servers, so
  only route_server knows when one comes online or goes offline everywhere: this server
  subscribes route_server to every user watched here (``WATCH_SET`` on each connect,
  ``WATCH_ADD`` for each newly watched user; see ``servers/route/server.py``) and passes
  its notifies on. With ``presence = "broadcast"`` every online user gets every notify
  (TeamTalk's behaviour) and route_server is asked for no subscription.
- **before login** only login and heartbeats are served: anything else closes
  the connection; so does missing the login deadline.
- **1:1 message**: ``IMMsgData`` from a client gets its sender from the
  session, is stored by db_proxy (which assigns the msg_id), and only then is
  acknowledged to the sender (``IMMsgDataAck`` with the request's seq) and
  delivered (seq 0, msg_id set, attach_data cleared) to every connection of
  the peer and the sender's other connections.
- **queries** (unread counts, history, users, sessions, ...): forwarded to
  db_proxy with ``user_id`` taken from the session; the answer goes back with
  the request's seq.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import resource
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf.message import Message

from ...net import ConnState, EventLoop, Server, Timer
from ...net.connection import parse_address
from ...pdu.imconn import (
    Dispatcher,
    ImConnection,
    Keepalive,
    LinkPolicy,
    encode_message,
)
from ...pdu.kinds import GROUP_MSG_TYPES, SINGLE_MSG_TYPES, is_mobile
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy
from ...pdu.proto import im_group_pb2 as group_pb
from ...pdu.proto import im_login_pb2 as login_pb
from ...pdu.proto import im_message_pb2 as msg_pb
from ...pdu.proto import im_other_pb2 as other_pb
from ...pdu.proto import im_server_pb2 as server_pb
from ...pdu.proto import im_switch_service_pb2 as switch_pb
from ...pdu.registry import ids_of
from ..links import Link, LinkSet
from ..route.server import WATCH_ADD, WATCH_SET
from .config import MsgConfig
from .groups import GroupCache, GroupEntry
from .ordering import NAMES_LATEST, Sequencer
from .throttle import Limits, LoginThrottle

log = logging.getLogger(__name__)

USER_ACTION_ADD = 1
USER_ACTION_DEL = 2
#: Undecodable or incomplete PDUs tolerated from a logged-in client before it is closed.
MAX_BAD_PDUS = 10
_ATTACH = struct.Struct(">III")
_ATTACH_TYPE_HANDLE = 1
#: Users per WATCH_SET/WATCH_ADD request to route_server: one PDU stays about 60 KB.
WATCH_CHUNK_USERS = 10_000
#: Users nobody here watches any more that route_server may go on telling us about before
#: we send it the set still watched (and never fewer than are still watched).
IDLE_WATCHES_KEPT = 1024


def _limits(config: MsgConfig, kind: str) -> Limits:
    """The throttle's limits for ``kind`` (``account`` or ``address``) from ``config``."""
    return Limits(
        free=getattr(config, f"throttle_{kind}_free"),
        lockout=getattr(config, f"throttle_{kind}_lockout"),
        delay_s=config.throttle_delay_s,
        max_delay_s=config.throttle_max_delay_s,
        lockout_s=config.throttle_lockout_s,
    )


def _host_of(conn: ImConnection) -> str:
    """The client's IP address as text ("" when the transport has none)."""
    peer = conn.conn.remote_address
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class ClientConn(ImConnection):
    """msg_server's side of one client connection.

    Slotted and lean, because a server holds tens of thousands of idle ones: what a
    logged-in connection keeps is its ids and counters; the user's profile is not kept
    (login answers it and forgets it), and the per-connection sequencer is made when
    the first relayed message or ack needs it.
    """

    __slots__ = (
        "_dropped",
        "_login_timer",
        "_sequencer",
        "_tokens",
        "_tokens_at",
        "client_type",
        "handle",
        "kicked",
        "login_pending",
        "server",
        "user_id",
        "watching",
    )

    def __init__(self, server: MsgServer) -> None:
        super().__init__(server.client_dispatch, server.keepalive, server.client_policy)
        self.handle = next(server.handles)  #: never reused, unlike fds: safe in attach_data
        self.server = server
        self.user_id = 0
        self.client_type = 0
        self.login_pending = False
        self.kicked = False
        self._login_timer: Timer | None = None
        self._tokens = float(server.config.msg_burst)
        self._tokens_at = 0.0
        self._dropped = 0
        #: The users whose presence this connection subscribed to; None until it first
        #: does, so that a connection that never asks costs one slot.
        self.watching: set[int] | None = None
        self._sequencer: Sequencer | None = None

    @property
    def logged_in(self) -> bool:
        return self.user_id != 0

    @property
    def sequencer(self) -> Sequencer | None:
        """What orders this connection's relayed messages and acks; None with one msg_server
        (whose deliveries are in order already). Made on first use."""
        if self._sequencer is None and self.server.ordered:
            self._sequencer = Sequencer(self.server.loop, self.server.config.reorder_wait_s)
        return self._sequencer

    def attach(self) -> bytes:
        """The original's 12-byte attach_data naming this connection."""
        return _ATTACH.pack(_ATTACH_TYPE_HANDLE, self.handle, 0)

    def on_connected(self) -> None:
        self.server.clients[self.handle] = self
        self._login_timer = self.server.loop.call_later(
            self.server.config.login_timeout_s, self._login_deadline
        )

    def _login_deadline(self) -> None:
        self._login_timer = None
        if not self.logged_in:
            log.info("%r: not logged in within the deadline; closing", self.conn)
            self.conn.close()

    def on_closed(self, exc: BaseException | None) -> None:
        if self._sequencer is not None:
            self._sequencer.close()
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self.server.clients.pop(self.handle, None)
        self.server.unwatch(self)
        if self.logged_in:
            self.server.user_gone(self)

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Any) -> None:
        if not self.logged_in and command_id not in _BEFORE_LOGIN:
            log.warning(
                "%r: command 0x%04x before login; closing the connection", self.conn, command_id
            )
            self.conn.abort()
            return
        super().frame_received(service_id, command_id, seq, frame)

    def bad_pdu(self, service_id: int, command_id: int, seq: int, reason: str) -> None:
        super().bad_pdu(service_id, command_id, seq, reason)
        if not self.logged_in or self.bad_pdus > MAX_BAD_PDUS:
            self.conn.abort()

    def take_token(self) -> bool:
        """Token bucket: ``msg_rate_per_s`` sustained, ``msg_burst`` at once."""
        config = self.server.config
        now = self.server.loop.time()
        self._tokens = min(
            float(config.msg_burst), self._tokens + (now - self._tokens_at) * config.msg_rate_per_s
        )
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


_MSG_DATA_IDS = ids_of(msg_pb.IMMsgData)  # for bad_pdu reports, not looked up per message
_BEFORE_LOGIN = frozenset({ids_of(login_pb.IMLoginReq)[1], ids_of(other_pb.IMHeartBeat)[1]})


def _stat_notify(user_id: int, status: int) -> Any:
    return buddy.IMUserStatNotify(
        user_stat=base.UserStat(user_id=user_id, status=base.UserStatType.ValueType(status))
    )


class UserConns:
    """The connections of one user on this server: at most one desktop and one mobile."""

    __slots__ = ("desktop", "mobile")

    def __init__(self) -> None:
        self.desktop: ClientConn | None = None
        self.mobile: ClientConn | None = None

    def __iter__(self) -> Iterator[ClientConn]:
        if self.desktop is not None:
            yield self.desktop
        if self.mobile is not None:
            yield self.mobile


class Watch:
    """The connections here subscribed to one user's presence, and what they were told.

    ``status`` is the user's status as last told to them (0: not known yet), so that a
    notify that repeats it (from a second route_server, or a route_server re-learning
    who is online after its restart) reaches nobody twice. With route_servers an entry
    outlives its last watcher (``conns`` empty) while route_server still sends its
    notifies; :meth:`MsgServer.unwatch` forgets such entries in batches.
    """

    __slots__ = ("conns", "status")

    def __init__(self, status: int) -> None:
        self.conns: set[ClientConn] = set()
        self.status = status


#: Descriptors msg_server keeps apart from clients': links, listener, poller, logs.
FD_RESERVE = 128


def connection_capacity(max_conn_cnt: int) -> int:
    """Client connections this process can hold: ``max_conn_cnt``, or fewer if the
    open-file limit leaves fewer (one descriptor each, :data:`FD_RESERVE` kept)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_conn_cnt
    return max(1, min(max_conn_cnt, soft - FD_RESERVE))


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


class MsgServer:
    """All of one msg_server's state and links, on one loop."""

    def __init__(self, loop: EventLoop, config: MsgConfig) -> None:
        self.loop = loop
        self.config = config
        self.keepalive = Keepalive(loop)
        self.client_policy = LinkPolicy(
            heartbeat_s=None,
            timeout_s=config.client_timeout_s,
            echo_heartbeat=True,
            max_pdu_bytes=config.max_pdu_bytes,
        )
        self.mobile_policy = LinkPolicy(
            heartbeat_s=None,
            timeout_s=config.mobile_timeout_s,
            echo_heartbeat=True,
            max_pdu_bytes=config.max_pdu_bytes,
        )
        self.clients: dict[int, ClientConn] = {}
        #: Connections beyond this are refused at login (MSG_SERVER_FULL), so that a
        #: full server turns clients away at once instead of leaving them to time out
        #: in an accept queue; login_server is told it as max_conn_cnt.
        self.capacity = connection_capacity(config.max_conn_cnt)
        if self.capacity < config.max_conn_cnt:
            log.info(
                "holding at most %d clients (the open-file limit), not max_conn_cnt %d",
                self.capacity,
                config.max_conn_cnt,
            )
        self.handles = itertools.count(1)
        self.throttle = LoginThrottle(
            _limits(config, "account"),
            _limits(config, "address"),
            config.throttle_max_entries,
            loop.time,
        )
        self.users: dict[int, UserConns] = {}
        self.subscribed = config.presence == "subscribed"
        #: Several msg_servers: deliveries to a connection may need reordering.
        self.ordered = bool(config.route_servers)
        #: user id → the connections here watching them (``presence = "subscribed"``).
        self.watchers: dict[int, Watch] = {}
        #: Entries of :attr:`watchers` with no connection left (route_server still has them).
        self._idle_watches = 0
        self._server: Server | None = None
        delays = tuple(config.reconnect_delays_s)

        self.client_dispatch = Dispatcher()
        d = self.client_dispatch
        d.register(login_pb.IMLoginReq, self._on_login)
        d.register(login_pb.IMLogoutReq, self._on_logout)
        d.register(msg_pb.IMMsgData, self._on_msg_data)
        d.register(msg_pb.IMMsgDataAck, self._on_msg_data_ack)
        d.register(msg_pb.IMMsgDataReadAck, self._on_read_ack)
        d.register(msg_pb.IMClientTimeReq, self._on_client_time)
        d.register(buddy.IMUsersStatReq, self._on_users_stat)
        d.register(buddy.IMChangeSignInfoReq, self._on_change_sign_info)
        d.register(switch_pb.IMP2PCmdMsg, self._on_p2p_cmd)
        d.register(group_pb.IMGroupCreateReq, self._on_group_create)
        d.register(group_pb.IMGroupChangeMemberReq, self._on_group_change_member)
        for req_cls, rsp_cls in FORWARDED:
            d.register(req_cls, self._forwarder(rsp_cls))

        self.db = LinkSet(
            loop,
            "db_proxy",
            [parse_address(a, 10600) for a in config.db_proxies],
            Dispatcher(),
            self.keepalive,
            backoff_delays_s=delays,
        )
        self.login = LinkSet(
            loop,
            "login_server",
            [parse_address(a, 8100) for a in config.login_servers],
            Dispatcher(),
            self.keepalive,
            backoff_delays_s=delays,
            on_up=self._announce_to_login,
        )
        route_dispatch = Dispatcher()
        route_dispatch.register(msg_pb.IMMsgData, self._from_route_msg)
        route_dispatch.register(msg_pb.IMMsgDataReadNotify, self._from_route_read_notify)
        route_dispatch.register(switch_pb.IMP2PCmdMsg, self._from_route_p2p)
        route_dispatch.register(server_pb.IMServerKickUser, self._from_route_kick)
        route_dispatch.register(buddy.IMUserStatNotify, self._from_route_stat_notify)
        route_dispatch.register(group_pb.IMGroupChangeMemberNotify, self._from_route_group_change)
        route_dispatch.register(server_pb.IMRoleSet, self._from_route_role)
        self.route = LinkSet(
            loop,
            "route_server",
            [parse_address(a, 8200) for a in config.route_servers],
            route_dispatch,
            self.keepalive,
            backoff_delays_s=delays,
            on_up=self._announce_to_route,
        )
        self.groups = GroupCache(loop, self.db, config.group_cache_ttl_s, config.db_timeout_s)
        self.master = False  #: route_server's IMRoleSet

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._server = self.loop.listen(
            self.config.listen_host, self.config.port, lambda: ClientConn(self), backlog=4096
        )
        self.db.start()
        self.login.start()
        self.route.start()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.db.stop()
        self.login.stop()
        self.route.stop()
        for conn in list(self.clients.values()):
            conn.conn.close()

    @property
    def online_count(self) -> int:
        return sum(1 for conns in self.users.values() for _ in conns)

    def _announce_to_login(self, link: Link) -> None:
        # After every (re)connect, with a recount: login_server forgot us when the link dropped.
        c = self.config
        link.send(
            server_pb.IMMsgServInfo(
                ip1=c.ip1,
                ip2=c.ip2,
                port=self.port,
                max_conn_cnt=self.capacity,
                cur_conn_cnt=self.online_count,
                host_name=c.host_name,
            )
        )

    def _announce_to_route(self, link: Link) -> None:
        # Every (re)connect: route_server forgot this server's users when the link dropped.
        info = server_pb.IMOnlineUserInfo()
        for conns in self.users.values():
            for c in conns:
                info.user_stat_list.add(
                    user_id=c.user_id,
                    status=base.USER_STATUS_ONLINE,
                    client_type=base.ClientType.ValueType(c.client_type),
                )
        link.send(info)
        if self.subscribed:
            # After the users: the answer then counts them. Sent even when empty: it is
            # what makes this link a subscribed one (broadcast until then).
            self._watch_to_route(link, list(self.watchers), replace=True)

    def _status_to_route(self, conn: ClientConn, status: int) -> None:
        self.route.broadcast(
            server_pb.IMUserStatusUpdate(
                user_status=status,
                user_id=conn.user_id,
                client_type=base.ClientType.ValueType(conn.client_type),
            )
        )

    def _to_route(self, message: Message) -> None:
        """Relay through one live route_server (each message must travel once)."""
        link = self.route.pick()
        if link is not None:
            link.send(message, partial=True)

    # -- login ----------------------------------------------------------------------------

    def _on_login(self, conn: ImConnection, req: Any, seq: int) -> None:
        assert isinstance(conn, ClientConn)
        if conn.logged_in or conn.login_pending:
            log.warning("%r: second IMLoginReq ignored", conn.conn)
            return
        name = req.user_name
        address = _host_of(conn)
        wait = self.throttle.retry_after(name, address)
        if wait > 0.0:
            # No db request, so no hash: a guesser's attempts cost a dict lookup. The answer
            # is held back (a timer, no CPU) so that a guesser waits instead of spinning on
            # answers it gets at once: a flood's rate, and so its cost to everyone else's
            # logins, is then bounded by its connections, not by our speed.
            log.debug("login of %r from %s throttled for %.0f s", name, address, wait)
            why = f"too many failed logins; try again in {math.ceil(wait)} s"
            # Answered well before the login deadline would close the connection unanswered.
            config = self.config
            delay = min(wait, config.throttle_answer_delay_s, config.login_timeout_s / 2)
            if delay > 0.0:
                conn.login_pending = True  # a second IMLoginReq meanwhile is ignored
                self.loop.call_later(delay, self._throttled_answer, conn, seq, why)
            else:
                self._login_refused(conn, seq, base.REFUSE_REASON_DB_VALIDATE_FAILED, why)
            return
        refuse = 0
        db = self.db.pick()
        if len(self.clients) > self.capacity:
            self._login_refused(conn, seq, base.REFUSE_REASON_MSG_SERVER_FULL, "server full")
            return
        if db is None:
            refuse = base.REFUSE_REASON_NO_DB_SERVER
        elif self.login.configured and not self.login.live:
            refuse = base.REFUSE_REASON_NO_LOGIN_SERVER
        elif self.route.configured and not self.route.live:
            refuse = base.REFUSE_REASON_NO_ROUTE_SERVER
        if refuse or db is None:
            self._login_refused(conn, seq, refuse, "server not ready")
            return
        conn.login_pending = True
        validate = server_pb.IMValidateReq(
            user_name=req.user_name, password=req.password, attach_data=conn.attach()
        )
        client_type = req.client_type
        online_status = req.online_status

        def validated(rsp: Any, exc: BaseException | None) -> None:
            conn.login_pending = False
            if conn.conn.state is not ConnState.CONNECTED:
                return
            if exc is not None:
                log.warning("validate for %r failed: %s", req.user_name, exc)
                self._login_refused(conn, seq, base.REFUSE_REASON_NO_DB_SERVER, "database busy")
                return
            if rsp.result_code != 0 or not rsp.HasField("user_info"):
                # db_proxy says 3 when its database failed: not the user's fault.
                code = rsp.result_code
                if code != base.REFUSE_REASON_NO_DB_SERVER:
                    code = base.REFUSE_REASON_DB_VALIDATE_FAILED
                    for kind in self.throttle.failure(name, address):
                        log.warning(
                            "%s %r locked out for %.0f s after too many failed logins",
                            kind,
                            name if kind == "account" else address,
                            self.config.throttle_lockout_s,
                        )
                self._login_refused(conn, seq, code, rsp.result_string)
                return
            self.throttle.success(name)
            self._logged_in(conn, seq, rsp.user_info, client_type, online_status)

        db.request(
            validate,
            validated,
            timeout_s=self.config.db_timeout_s,
            response=server_pb.IMValidateRsp,
        )

    def _throttled_answer(self, conn: ClientConn, seq: int, why: str) -> None:
        conn.login_pending = False
        if conn.conn.state is ConnState.CONNECTED:
            self._login_refused(conn, seq, base.REFUSE_REASON_DB_VALIDATE_FAILED, why)

    def _login_refused(self, conn: ClientConn, seq: int, code: int, why: str) -> None:
        log.info("%r: login refused (%d %s)", conn.conn, code, why)
        conn.send(
            login_pb.IMLoginRes(
                server_time=int(time.time()),
                result_code=base.ResultType.ValueType(code),
                result_string=why,
            ),
            seq,
        )
        conn.conn.close()

    def _logged_in(
        self, conn: ClientConn, seq: int, user_info: Any, client_type: int, status: int
    ) -> None:
        user_id = user_info.user_id
        conns = self.users.get(user_id)
        was_online = conns is not None and any(True for _ in conns)
        if conns is None:
            conns = self.users[user_id] = UserConns()
        mobile = is_mobile(client_type)
        older = conns.mobile if mobile else conns.desktop
        if older is not None:
            self._kick(older, base.KICK_REASON_DUPLICATE_USER)
            conns = self.users.setdefault(user_id, conns)  # the kick may have dropped the entry
        if mobile:
            conns.mobile = conn
            conn.policy = self.mobile_policy
        else:
            conns.desktop = conn
        conn.user_id = user_id
        conn.client_type = client_type
        if conn._login_timer is not None:
            conn._login_timer.cancel()
            conn._login_timer = None
        self.login.broadcast(
            server_pb.IMUserCntUpdate(user_action=USER_ACTION_ADD, user_id=user_id)
        )
        conn.send(
            login_pb.IMLoginRes(
                server_time=int(time.time()),
                result_code=base.REFUSE_REASON_NONE,
                online_status=base.UserStatType.ValueType(status or base.USER_STATUS_ONLINE),
                user_info=user_info,
            ),
            seq,
        )
        log.info("user %d logged in (%r, client type 0x%x)", user_id, conn.conn, client_type)
        self._status_to_route(conn, base.USER_STATUS_ONLINE)
        # The same class of client on another msg_server is kicked there.
        self._to_route(
            server_pb.IMServerKickUser(
                user_id=user_id,
                client_type=base.ClientType.ValueType(client_type),
                reason=base.KICK_REASON_DUPLICATE_USER,
            )
        )
        if not was_online and not self.route.configured:
            # With route_server, presence is cluster-wide: route_server announces it.
            self._notify_status(user_id, base.USER_STATUS_ONLINE)

    def _kick(self, older: ClientConn, reason: int) -> None:
        log.info("user %d: kicking %r (reason %d)", older.user_id, older.conn, reason)
        older.send(
            login_pb.IMKickUser(
                user_id=older.user_id, kick_reason=base.KickReasonType.ValueType(reason)
            )
        )
        # Detach before closing: the close notification must not log the user out.
        self._detach(older)
        self.unwatch(older)  # a kicked connection is told nothing more
        older.kicked = True
        older.user_id = 0
        older.conn.close()

    def _detach(self, conn: ClientConn) -> bool:
        """Remove ``conn`` from its user's slots; True if the user has no connection left."""
        conns = self.users.get(conn.user_id)
        if conns is None:
            return False
        if conns.desktop is conn:
            conns.desktop = None
        elif conns.mobile is conn:
            conns.mobile = None
        else:
            return False
        self.login.broadcast(
            server_pb.IMUserCntUpdate(user_action=USER_ACTION_DEL, user_id=conn.user_id)
        )
        self._status_to_route(conn, base.USER_STATUS_OFFLINE)
        if conns.desktop is None and conns.mobile is None:
            del self.users[conn.user_id]
            return True
        return False

    def user_gone(self, conn: ClientConn) -> None:
        """A logged-in connection closed."""
        user_id = conn.user_id
        if self._detach(conn):
            log.info("user %d offline", user_id)
            if not self.route.configured:
                self._notify_status(user_id, base.USER_STATUS_OFFLINE)

    def _on_logout(self, conn: ImConnection, req: Any, seq: int) -> None:
        assert isinstance(conn, ClientConn)
        conn.send(login_pb.IMLogoutRsp(result_code=0), seq)
        conn.conn.close()

    def _notify_status(self, user_id: int, status: int) -> None:
        """A transition this server saw itself (no route_server): tell who must know."""
        if self.subscribed:
            self._watched_status(user_id, status)
            return
        self._broadcast_status(_stat_notify(user_id, status))

    def _broadcast_status(self, notify: Any) -> None:
        """An ``IMUserStatNotify`` to every online user but its subject, encoded once."""
        frame = encode_message(notify)
        subject = notify.user_stat.user_id
        for other_id, conns in self.users.items():
            if other_id != subject:
                for c in conns:
                    c.send_frame(frame)

    # -- presence subscriptions -------------------------------------------------------------

    def _watch(self, conn: ClientConn, user_ids: Iterable[int]) -> list[int]:
        """Subscribe ``conn`` to ``user_ids`` while it watches fewer than ``max_subscriptions``.

        Returns the users nobody here watched before (route_server must be told of them).
        Without route_server, a new entry's status is known here and now.
        """
        limit = self.config.max_subscriptions
        watching = conn.watching
        added: list[int] = []
        for user_id in user_ids:
            if watching is not None and user_id in watching:
                continue
            if watching is None:
                if limit == 0:
                    break
                watching = conn.watching = set()
            elif len(watching) >= limit:
                break  # the rest is answered, not subscribed
            watching.add(user_id)
            entry = self.watchers.get(user_id)
            if entry is None:
                # Alone, this server knows the status; with route_server, its answer will.
                status = 0
                if not self.route.configured:
                    online = user_id in self.users
                    status = base.USER_STATUS_ONLINE if online else base.USER_STATUS_OFFLINE
                entry = self.watchers[user_id] = Watch(status)
                added.append(user_id)
            elif not entry.conns:
                self._idle_watches -= 1
            entry.conns.add(conn)
        return added

    def unwatch(self, conn: ClientConn) -> None:
        """End ``conn``'s subscriptions (it is closing); idempotent.

        Without route_server an entry goes with its last watcher. With one, it stays
        (route_server keeps sending its notifies, and the protocol has no way to
        unsubscribe one user) until the idle entries outnumber both the live ones and
        :data:`IDLE_WATCHES_KEPT`; then they go at once and every route_server gets the
        live set (``WATCH_SET``): each rebuild is paid for by as many closed watches.
        """
        watching, conn.watching = conn.watching, None
        if not watching:
            return
        keep = self.route.configured
        watchers = self.watchers
        for user_id in watching:
            entry = watchers[user_id]
            entry.conns.discard(conn)
            if not entry.conns:
                if keep:
                    self._idle_watches += 1
                else:
                    del watchers[user_id]
        idle = self._idle_watches
        if idle > IDLE_WATCHES_KEPT and idle > len(watchers) - idle:
            self.watchers = {uid: e for uid, e in watchers.items() if e.conns}
            self._idle_watches = 0
            log.info("presence: %d users still watched; route_server told", len(self.watchers))
            users = list(self.watchers)
            for link in self.route.live:
                self._watch_to_route(link, users, replace=True)

    def _watch_to_route(self, link: Link, user_ids: list[int], *, replace: bool) -> None:
        """Subscribe ``link``'s route_server to ``user_ids``: instead of its set if ``replace``.

        In chunks of :data:`WATCH_CHUNK_USERS` (the first one a ``WATCH_SET`` when
        replacing, even if empty). The answers give each user's status now.
        """
        for start in range(0, max(len(user_ids), 1), WATCH_CHUNK_USERS):
            link.request(
                buddy.IMUsersStatReq(
                    user_id=0,
                    user_id_list=user_ids[start : start + WATCH_CHUNK_USERS],
                    attach_data=WATCH_SET if replace and start == 0 else WATCH_ADD,
                ),
                self._watch_answered,
                timeout_s=self.config.db_timeout_s,
                response=buddy.IMUsersStatRsp,
            )

    def _watch_answered(self, rsp: Any, exc: BaseException | None) -> None:
        """Take the status a new entry starts from (what its watcher's own answer says).

        Never a notify: an answer is not a transition. Right after a route_server
        restart it may not know every msg_server's users yet, and telling watchers
        "offline" then would be a storm of false flaps; a change missed while the
        link was down is missed, as in TeamTalk (a client re-asks after a reconnect).
        """
        if exc is not None:
            # Nothing to redo: the link's next connect sends the whole set again.
            log.info("presence subscription not answered: %s", exc)
            return
        for stat in rsp.user_stat_list:
            entry = self.watchers.get(stat.user_id)
            if entry is not None and entry.status == 0:
                entry.status = stat.status

    def _watched_status(self, user_id: int, status: int) -> None:
        """``user_id`` just became ``status``: tell its watchers here, unless they know it.

        They know it when it repeats what they were last told: a second route_server's
        copy of a notify, or a route_server re-learning who is online after a restart.
        """
        entry = self.watchers.get(user_id)
        if entry is None or entry.status == status:
            return
        entry.status = status
        if entry.conns:
            frame = encode_message(_stat_notify(user_id, status))
            for c in entry.conns:
                c.send_frame(frame)

    # -- messages -------------------------------------------------------------------------

    def _on_msg_data(self, conn: ImConnection, msg: Any, seq: int) -> None:
        assert isinstance(conn, ClientConn)
        if not conn.take_token():
            conn._dropped += 1
            log.warning("%r: message rate limit exceeded; message dropped", conn.conn)
            if conn._dropped > self.config.msg_burst:
                log.warning("%r: keeps flooding; closing", conn.conn)
                conn.conn.abort()
            return
        sid, cid = _MSG_DATA_IDS
        if msg.to_session_id == 0:
            conn.bad_pdu(sid, cid, seq, "to_session_id 0")
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

            self.groups.get(msg.to_session_id, with_group)
        else:
            conn.bad_pdu(sid, cid, seq, f"msg_type {msg.msg_type} refused")

    def _store_message(
        self, conn: ClientConn, msg: Any, seq: int, group: GroupEntry | None
    ) -> None:
        """Store via db_proxy; only then ack to the sender and deliver everywhere."""
        db = self.db.pick()
        if db is None:
            log.warning("%r: no db_proxy; message not accepted", conn.conn)
            return
        msg.create_time = int(time.time())
        msg.msg_id = 0
        msg.attach_data = conn.attach()

        def stored(rsp: Any, exc: BaseException | None) -> None:
            if exc is not None or rsp.msg_id == 0:
                # Not stored: no ack, no delivery; the client retries.
                log.warning("message from %d not stored: %s", msg.from_user_id, exc or "refused")
                return
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
                self._deliver_msg(rsp, (rsp.to_session_id, rsp.from_user_id), exclude=conn)
                self._to_route(rsp)
            else:
                members = sorted(group.members)
                self._deliver_msg(rsp, members, exclude=conn)
                # route_server needs the members to find their servers; they travel
                # in attach_data, the field servers own.
                # A copy: ``rsp`` may still be waiting in a connection's sequencer.
                relay = msg_pb.IMMsgData()
                relay.CopyFrom(rsp)
                relay.attach_data = struct.pack(f">{len(members)}I", *members)
                self._to_route(relay)

        db.request(msg, stored, timeout_s=self.config.db_timeout_s, response=msg_pb.IMMsgData)

    def _deliver_msg(
        self, msg: Any, user_ids: Iterable[int], exclude: ClientConn | None = None
    ) -> None:
        """Deliver an ``IMMsgData`` to these users' connections, in msg_id order per conversation.

        Encoded once, when the first recipient is found: a group message to m
        members costs one serialization, not m.
        """
        frame: bytes | None = None
        for user_id in user_ids:
            conns = self.users.get(user_id)
            if conns is None:
                continue
            for c in conns:
                if c is exclude:
                    continue
                if frame is None:
                    frame = encode_message(msg)
                sequencer = c.sequencer
                if sequencer is not None:
                    sequencer.deliver(msg, functools.partial(c.send_frame, frame))
                else:
                    c.send_frame(frame)

    def _deliver(self, message: Message, user_id: int, exclude: ClientConn | None = None) -> None:
        conns = self.users.get(user_id)
        if conns is None:
            return
        for c in conns:
            if c is not exclude:
                c.send(message)

    def _on_msg_data_ack(self, conn: ImConnection, msg: Any, seq: int) -> None:
        # Delivery receipts: nothing is queued for redelivery (clients catch up by
        # pulling unread counts and history), so there is nothing to release.
        pass

    def _on_read_ack(self, conn: ImConnection, msg: Any, seq: int) -> None:
        assert isinstance(conn, ClientConn)
        msg.user_id = conn.user_id
        db = self.db.pick()
        if db is not None:
            db.send(msg)
        notify = msg_pb.IMMsgDataReadNotify(
            user_id=conn.user_id,
            session_id=msg.session_id,
            msg_id=msg.msg_id,
            session_type=msg.session_type,
        )
        self._deliver(notify, conn.user_id, exclude=conn)
        self._to_route(notify)

    def _on_client_time(self, conn: ImConnection, msg: Any, seq: int) -> None:
        conn.send(msg_pb.IMClientTimeRsp(server_time=int(time.time())), seq)

    def _on_users_stat(self, conn: ImConnection, msg: Any, seq: int) -> None:
        assert isinstance(conn, ClientConn)
        if self.subscribed:
            added = self._watch(conn, msg.user_id_list)
            if added:
                # Every route_server, not one: any of them may be the one that stays up.
                for link in self.route.live:
                    self._watch_to_route(link, added, replace=False)
        route = self.route.pick()
        if route is not None:
            # Presence is cluster-wide: route_server knows every msg_server's users.
            msg.user_id = conn.user_id
            msg.attach_data = conn.attach()

            def answered(rsp: Any, exc: BaseException | None) -> None:
                if exc is None and conn.conn.state is ConnState.CONNECTED:
                    rsp.ClearField("attach_data")
                    conn.send(rsp, seq)

            route.request(
                msg, answered, timeout_s=self.config.db_timeout_s, response=buddy.IMUsersStatRsp
            )
            return
        rsp = buddy.IMUsersStatRsp(user_id=conn.user_id)
        for uid in msg.user_id_list:
            online = uid in self.users
            rsp.user_stat_list.add(
                user_id=uid,
                status=base.USER_STATUS_ONLINE if online else base.USER_STATUS_OFFLINE,
            )
        conn.send(rsp, seq)

    def _on_p2p_cmd(self, conn: ImConnection, msg: Any, seq: int) -> None:
        assert isinstance(conn, ClientConn)
        msg.from_user_id = conn.user_id
        self._deliver(msg, msg.to_user_id)
        self._to_route(msg)

    def _on_change_sign_info(self, conn: ImConnection, msg: Any, seq: int) -> None:
        assert isinstance(conn, ClientConn)

        def changed(rsp: Any) -> None:
            if rsp.result_code == 0:
                notify = buddy.IMSignInfoChangedNotify(
                    changed_user_id=conn.user_id, sign_info=msg.sign_info
                )
                for uid in list(self.users):
                    self._deliver(notify, uid, exclude=conn)

        self._forward(conn, msg, seq, buddy.IMChangeSignInfoRsp, changed)

    # -- groups ---------------------------------------------------------------------------

    def _on_group_create(self, conn: ImConnection, msg: Any, seq: int) -> None:
        assert isinstance(conn, ClientConn)
        # Clients create temporary groups only; normal groups are made by the admin CLI.
        msg.group_type = base.GROUP_TYPE_TMP

        def created(rsp: Any) -> None:
            if rsp.result_code != 0:
                return
            members = list(rsp.user_id_list)
            self.groups.put(rsp.group_id, conn.user_id, base.GROUP_TYPE_TMP, members)
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

        self._forward(conn, msg, seq, group_pb.IMGroupCreateRsp, created)

    def _on_group_change_member(self, conn: ImConnection, msg: Any, seq: int) -> None:
        assert isinstance(conn, ClientConn)
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

            def changed(rsp: Any) -> None:
                if rsp.result_code != 0:
                    return
                self.groups.update_members(msg.group_id, rsp.cur_user_id_list)
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

            self._forward(conn, msg, seq, group_pb.IMGroupChangeMemberRsp, changed)

        self.groups.get(msg.group_id, with_group)

    def _group_changed(self, conn: ClientConn, notify: Any) -> None:
        """Tell current and removed members here, and the other servers through route."""
        self._notify_group_members(notify, exclude=conn)
        self._to_route(notify)

    def _notify_group_members(self, notify: Any, exclude: ClientConn | None = None) -> None:
        for uid in set(notify.cur_user_id_list) | set(notify.chg_user_id_list):
            self._deliver(notify, uid, exclude=exclude)

    # -- from route_server ----------------------------------------------------------------

    def _from_route_msg(self, link: ImConnection, msg: Any, seq: int) -> None:
        if msg.msg_type in GROUP_MSG_TYPES:
            data = msg.attach_data
            members = struct.unpack(f">{len(data) // 4}I", data[: len(data) // 4 * 4])
            msg.ClearField("attach_data")
            self._deliver_msg(msg, members)
        else:
            msg.ClearField("attach_data")
            self._deliver_msg(msg, (msg.to_session_id, msg.from_user_id))

    def _from_route_read_notify(self, link: ImConnection, msg: Any, seq: int) -> None:
        self._deliver(msg, msg.user_id)

    def _from_route_p2p(self, link: ImConnection, msg: Any, seq: int) -> None:
        self._deliver(msg, msg.to_user_id)

    def _from_route_kick(self, link: ImConnection, msg: Any, seq: int) -> None:
        conns = self.users.get(msg.user_id)
        if conns is None:
            return
        older = conns.mobile if is_mobile(msg.client_type) else conns.desktop
        if older is not None:
            self._kick(older, msg.reason or base.KICK_REASON_DUPLICATE_USER)

    def _from_route_stat_notify(self, link: ImConnection, msg: Any, seq: int) -> None:
        if self.subscribed:
            self._watched_status(msg.user_stat.user_id, msg.user_stat.status)
        else:
            self._broadcast_status(msg)

    def _from_route_group_change(self, link: ImConnection, msg: Any, seq: int) -> None:
        self.groups.invalidate(msg.group_id)
        self._notify_group_members(msg)  # route_server relayed it: nothing goes back

    def _from_route_role(self, link: ImConnection, msg: Any, seq: int) -> None:
        self.master = bool(msg.master)
        log.info("route_server: this msg_server is %s", "master" if self.master else "not master")

    # -- forwarding to db_proxy -----------------------------------------------------------

    def _forwarder(self, rsp_cls: type[Message]) -> Any:
        def handler(conn: ImConnection, msg: Any, seq: int) -> None:
            assert isinstance(conn, ClientConn)
            self._forward(conn, msg, seq, rsp_cls)

        return handler

    def _forward(
        self,
        conn: ClientConn,
        msg: Any,
        seq: int,
        rsp_cls: type[Message],
        then: Any = None,
    ) -> None:
        db = self.db.pick()
        if db is None:
            log.warning("%r: no db_proxy; %s dropped", conn.conn, type(msg).__name__)
            return
        msg.user_id = conn.user_id
        msg.attach_data = conn.attach()

        def answered(rsp: Any, exc: BaseException | None) -> None:
            if exc is not None:
                log.warning("%s for user %d failed: %s", type(msg).__name__, conn.user_id, exc)
                return
            rsp.ClearField("attach_data")
            if conn.conn.state is ConnState.CONNECTED:
                conn.send(rsp, seq)
                if rsp_cls in NAMES_LATEST and (sequencer := conn.sequencer) is not None:
                    sequencer.learned(rsp, conn.user_id)
            if then is not None:
                then(rsp)

        db.request(msg, answered, timeout_s=self.config.db_timeout_s, response=rsp_cls)
