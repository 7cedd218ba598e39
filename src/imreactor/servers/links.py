"""Outbound links from one server to its peer servers (db_proxy, login, route).

A :class:`LinkSet` keeps one reconnecting :class:`~imreactor.net.Connector`
per configured peer and hands out a live link, round-robin, for each request.
Every link is an :class:`~imreactor.pdu.imconn.ImConnection` with the
server-to-server policy (heartbeat after 5 s, timeout after 30 s).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from ssl import SSLContext
from typing import Any

from ..net import Backoff, Connector, ConnState, EventLoop
from ..pdu.imconn import SERVER_LINK, Dispatcher, ImConnection, Keepalive, LinkPolicy

log = logging.getLogger(__name__)


class Link(ImConnection):
    """One server-to-server link; tells its :class:`LinkSet` when it goes up or down."""

    def __init__(self, owner: LinkSet, dispatcher: Dispatcher[Link], policy: LinkPolicy) -> None:
        super().__init__(dispatcher, owner.keepalive, policy)
        self.owner = owner

    def on_connected(self) -> None:
        self.owner._up(self)

    def on_closed(self, exc: BaseException | None) -> None:
        self.owner._down(self)


class LinkSet:
    """Links to every peer of one kind. Loop thread only.

    ``on_up(link)`` runs when a link is established (to announce ourselves),
    ``on_down(link)`` when it is lost. With ``ssl`` (servers.linkauth) every
    link is mutually authenticated TLS.
    """

    def __init__(
        self,
        loop: EventLoop,
        kind: str,
        addresses: list[tuple[str, int]],
        dispatcher: Dispatcher[Link],
        keepalive: Keepalive,
        *,
        policy: LinkPolicy = SERVER_LINK,
        backoff_delays_s: tuple[float, ...] | None = None,
        on_up: Callable[[Link], Any] | None = None,
        on_down: Callable[[Link], Any] | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        self.loop = loop
        self.kind = kind
        self.keepalive = keepalive
        self.on_up = on_up
        self.on_down = on_down
        self._live: list[Link] = []
        self._rr = itertools.count()
        self.connectors = [
            Connector(
                loop,
                host,
                port,
                lambda: Link(self, dispatcher, policy),
                backoff=Backoff(backoff_delays_s) if backoff_delays_s else None,
                ssl=ssl,
            )
            for host, port in addresses
        ]

    def start(self) -> None:
        for connector in self.connectors:
            connector.start()

    def stop(self) -> None:
        for connector in self.connectors:
            connector.stop()

    @property
    def configured(self) -> bool:
        return bool(self.connectors)

    @property
    def live(self) -> list[Link]:
        """The links that are up (not those being closed, which still await their EOF)."""
        return [link for link in self._live if link.conn.state is ConnState.CONNECTED]

    @property
    def pending_requests(self) -> int:
        """Requests on these links (those being closed too) still waiting for an answer."""
        return sum(link.pending_requests for link in self._live)

    def pick(self) -> Link | None:
        """A live link (round-robin), or None if every peer is down."""
        live = self._live
        for _ in range(len(live)):
            link = live[next(self._rr) % len(live)]
            if link.conn.state is ConnState.CONNECTED:
                return link
        return None

    def broadcast(self, message: Any) -> None:
        for link in self._live:
            link.send(message)

    def _up(self, link: Link) -> None:
        self._live.append(link)
        log.info("%s link up: %s", self.kind, link.conn.remote_address)
        if self.on_up is not None:
            self.on_up(link)

    def _down(self, link: Link) -> None:
        if link in self._live:
            self._live.remove(link)
            log.warning("%s link down", self.kind)
            if self.on_down is not None:
                self.on_down(link)
