"""msg_server's metrics: connections, logins, messages, latencies, relays, links.

One :class:`MsgStats` per server, built on its :class:`~..metrics.Metrics`; the
parts that serve requests report to it with one call where something happens.
What each series means is written in its help text (and in docs/servers.md,
"Metrics"). Loop thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..metrics import Metrics

if TYPE_CHECKING:
    from .server import MsgServer

#: Login outcomes (the ``result`` label of ``imreactor_msg_logins_total``).
LOGIN_RESULTS = ("ok", "failed", "throttled", "full", "unavailable")


class MsgStats:
    """The counters, gauges and histograms of one msg_server."""

    def __init__(self, server: MsgServer) -> None:
        self.loop = server.loop
        self.metrics = metrics = Metrics(server.loop, "msg_server", self._ready)
        self._server = server
        metrics.gauge(
            "imreactor_msg_connections",
            "Client connections, by state (anonymous: not logged in yet)",
            self._connections,
            ("state",),
        )
        metrics.gauge(
            "imreactor_msg_users_online", "Users with a session here", lambda: len(server.users)
        )
        metrics.gauge(
            "imreactor_msg_links_up",
            "Server links that are up, by peer role",
            lambda: {
                (links.kind,): len(links.live) for links in (server.db, server.login, server.route)
            },
            ("peer",),
        )
        self.logins = metrics.counter(
            "imreactor_msg_logins", "Login attempts answered, by result", ("result",)
        )
        self.login_latency = metrics.histogram(
            "imreactor_msg_login_seconds", "From IMLoginReq to its answer, when db_proxy was asked"
        )
        self.messages = metrics.counter(
            "imreactor_msg_messages",
            "Messages from clients here, by outcome (stored: acked to the sender)",
            ("outcome",),
        )
        self.store_latency = metrics.histogram(
            "imreactor_msg_store_seconds", "From a client's IMMsgData to db_proxy's stored answer"
        )
        self.delivery_latency = metrics.histogram(
            "imreactor_msg_delivery_seconds",
            "From a client's IMMsgData to its writes to the recipients' connections here"
            " (storage included)",
        )
        self.deliveries = metrics.counter(
            "imreactor_msg_deliveries", "Messages written to recipients' connections here"
        )
        self.relayed = metrics.counter(
            "imreactor_msg_relayed",
            "PDUs relayed through route_server, by direction and message",
            ("direction", "message"),
        )
        self.slowed = metrics.counter(
            "imreactor_msg_clients_slowed", "Times a client's reads were paused by its rate limit"
        )

    def _connections(self) -> dict[tuple[str, ...], float]:
        clients = self._server.clients
        online = sum(1 for c in clients.values() if c.logged_in)
        return {("online",): online, ("anonymous",): len(clients) - online}

    def _ready(self) -> tuple[bool, dict[str, object]]:
        # Ready when a login could succeed: the links a login needs are up (the same
        # test the login path makes before it asks db_proxy).
        server = self._server
        down = [
            links.kind
            for links in (server.db, server.login, server.route)
            if links.configured and not links.live
        ]
        if not server.db.configured:
            down.insert(0, "db_proxy (none configured)")
        if not server.relay.ready and not server.route.configured:
            down.append("redis")  # the Redis fabric, configured and unreachable
        return not down, {"links_down": down, "users_online": len(server.users)}
