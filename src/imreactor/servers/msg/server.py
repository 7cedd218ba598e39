"""msg_server: where clients keep their long connections.

:class:`MsgServer` holds what every part shares (the client connections, who is
online where, the links to db_proxy, login_server and route_server, the group cache)
and the parts that serve requests, each in its own module:

- :mod:`.client`: one client connection (what holds before login, rate limit);
- :mod:`.sessions`: login (capacity, throttling, validation), kick, logout;
- :mod:`.presence`: status requests, subscriptions and notifies;
- :mod:`.delivery`: messages (stored before acked), acks, groups, queries to db_proxy;
- :mod:`.fabric`: how this server reaches the others: :mod:`.relay` through
  route_server, :mod:`.redis_fabric` through Redis.

Flows in detail: docs/servers.md, "msg_server". Loop thread only.
"""

from __future__ import annotations

import itertools
import logging

from ...net import EventLoop, Server, websocket
from ...net.connection import parse_address
from ...pdu.framing import one_pdu_check
from ...pdu.imconn import Dispatcher, Keepalive, LinkPolicy
from ...pdu.proto import im_server_pb2 as server_pb
from ..linkauth import link_client_context, public_server_context
from ..links import Link, LinkSet
from ..runner import Done, when_idle
from .client import ClientConn, UserConns
from .config import MsgConfig
from .delivery import Delivery
from .fabric import Fabric
from .groups import GroupCache
from .presence import Presence
from .redis_fabric import RedisFabric
from .relay import Relay
from .report import StatsReporter
from .sessions import FD_RESERVE, Sessions, connection_capacity
from .stats import MsgStats

__all__ = ["FD_RESERVE", "ClientConn", "MsgServer", "connection_capacity"]

log = logging.getLogger(__name__)


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
        #: Set by :meth:`drain`: no more requests are read from clients.
        self.draining = False
        self.users: dict[int, UserConns] = {}
        #: Several msg_servers: deliveries to a connection may need reordering.
        self.ordered = bool(config.route_servers or config.redis)
        self._server: Server | None = None
        self._tls_server: Server | None = None
        self._ws_server: Server | None = None
        self._wss_server: Server | None = None
        delays = tuple(config.reconnect_delays_s)

        self.sessions = Sessions(self)
        self.presence = Presence(self)
        self.delivery = Delivery(self)
        self.route_relay = Relay(self)
        #: The fabric to the other msg_servers: Redis if configured, else route_server's
        #: (which, without route_servers, is none).
        self.relay: Fabric = RedisFabric(self) if config.redis else self.route_relay
        self.client_dispatch = Dispatcher[ClientConn]()
        self.sessions.register(self.client_dispatch)
        self.delivery.register(self.client_dispatch)
        route_dispatch = Dispatcher[Link]()
        self.presence.register(self.client_dispatch)
        self.route_relay.register(route_dispatch)

        link_ssl = link_client_context(config, "msg")
        self.db = LinkSet(
            loop,
            "db_proxy",
            [parse_address(a, 10600) for a in config.db_proxies],
            Dispatcher[Link](),
            self.keepalive,
            backoff_delays_s=delays,
            ssl=link_ssl,
        )
        login_dispatch = Dispatcher[Link]()
        # An administrator closed the account (through login_server): end its sessions.
        login_dispatch.register(
            server_pb.IMServerKickUser, lambda link, msg, seq: self.sessions.close_user(msg.user_id)
        )
        self.login = LinkSet(
            loop,
            "login_server",
            [parse_address(a, 8100) for a in config.login_servers],
            login_dispatch,
            self.keepalive,
            backoff_delays_s=delays,
            on_up=self._announce_to_login,
            ssl=link_ssl,
        )
        self.route = LinkSet(
            loop,
            "route_server",
            [parse_address(a, 8200) for a in config.route_servers],
            route_dispatch,
            self.keepalive,
            backoff_delays_s=delays,
            on_up=self.route_relay.announce,
            on_down=self.route_relay.link_down,
            ssl=link_ssl,
        )
        self.groups = GroupCache(loop, self.db, config.group_cache_ttl_s, config.db_timeout_s)
        self.stats = MsgStats(self)
        self.reporter = StatsReporter(self)  # for login_server's dashboard

    def start(self) -> None:
        c = self.config
        self._server = self.loop.listen(
            c.listen_host, c.port, lambda: ClientConn(self), backlog=4096
        )
        if c.tls_port:
            # The same client sessions over TLS: ClientConn sees only the transport.
            self._tls_server = self.loop.listen(
                c.listen_host,
                c.tls_port,
                lambda: ClientConn(self),
                backlog=4096,
                ssl=public_server_context(c.cert_file, c.key_file, "msg"),
            )
        if c.http_port:
            self.stats.metrics.listen(c.listen_host, c.http_port)
        if c.ws_port or c.wss_port:
            # Browsers: the same client sessions again, one PDU per WebSocket message.
            # A page's timers may sleep; pings (answered by the browser itself) keep
            # it alive, several of them before client_timeout_s would close it.
            ws = websocket.accepting(
                self.loop,
                lambda: ClientConn(self),
                origins=c.ws_origins,
                max_message_bytes=c.max_pdu_bytes,
                message_check=one_pdu_check(c.max_pdu_bytes),
                ping_interval_s=c.client_timeout_s / 4,
                handshake_timeout_s=c.login_timeout_s,
            )
            if c.ws_port:
                self._ws_server = self.loop.listen(c.listen_host, c.ws_port, ws, backlog=4096)
            if c.wss_port:
                self._wss_server = self.loop.listen(
                    c.listen_host,
                    c.wss_port,
                    ws,
                    backlog=4096,
                    ssl=public_server_context(c.cert_file, c.key_file, "msg"),
                )
        self.db.start()
        self.login.start()
        self.route.start()
        self.relay.start()
        self.reporter.start()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    @property
    def tls_port(self) -> int:
        """The TLS listener's port (0 without one)."""
        return self._tls_server.port if self._tls_server is not None else 0

    @property
    def ws_port(self) -> int:
        """The WebSocket listener's port (0 without one)."""
        return self._ws_server.port if self._ws_server is not None else 0

    @property
    def wss_port(self) -> int:
        """The WebSocket-over-TLS listener's port (0 without one)."""
        return self._wss_server.port if self._wss_server is not None else 0

    def _close_listeners(self) -> None:
        for server in (self._wss_server, self._ws_server, self._tls_server, self._server):
            if server is not None:
                server.close()

    def drain(self, done: Done) -> None:
        """Stop accepting and reading requests; answer every request read (stores,
        queries, logins, acks a sequencer holds, relays and presence writes sent); then
        close every client (after its answers) and call ``done()`` once they are gone
        and their presence is written. No PDU tells TeamTalk clients to go: they see
        the close and reconnect through login_server, which stops offering this server
        at once (docs/deployment.md, "Drain")."""
        self.draining = True
        self._close_listeners()
        self.login.stop()  # login_server forgets us when the link closes
        self.reporter.close()  # no dashboard reports without that link
        log.info("draining %d client connections", len(self.clients))
        for conn in list(self.clients.values()):
            conn.conn.pause_reading()

        def answering() -> bool:
            return bool(
                self.db.pending_requests
                or self.route.pending_requests
                or self.relay.pending_work
                or any(conn.answering for conn in self.clients.values())
            )

        def answered() -> None:
            for conn in list(self.clients.values()):
                conn.conn.close()
            # Their offline presence goes out as they close: wait for it too.
            when_idle(self.loop, lambda: bool(self.clients) or bool(self.relay.pending_work), done)

        when_idle(self.loop, answering, answered)

    def close(self) -> None:
        self.stats.metrics.close()
        self.reporter.close()
        self._close_listeners()
        self.db.stop()
        self.login.stop()
        self.route.stop()
        self.relay.close()
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
                tls_port=self.tls_port,
                ws_port=self.ws_port,
                wss_port=self.wss_port,
            )
        )
