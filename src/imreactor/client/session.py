"""The client side of a msg_server connection, on the reactor (loop thread only)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.message import Message

from ..pdu.imconn import (
    CLIENT_SIDE,
    Dispatcher,
    ImConnection,
    Keepalive,
    LinkPolicy,
    ResponseCallback,
)
from ..pdu.proto import im_buddy_pb2 as buddy

PushCallback = Callable[[Any, int], Any]
"""``on_push(message, seq)``: a PDU the server sent on its own (a message, a kick, a notify)."""

#: Most distinct users one connection subscribes to with ``IMUsersStatReq``. msg_server
#: bounds its subscriptions per connection too (``max_subscriptions``, as many by
#: default); a client that stays within its own bound never depends on which ones the
#: server would keep.
DEFAULT_WATCH_LIMIT = 1000


class ClientSession(ImConnection):
    """A client connection: requests by seq, everything else to ``on_push``.

    Heartbeats every 30 s and a 120 s receive timeout by default (``policy``).
    One object serves one connection, so what it records (:attr:`watched`) is
    that connection's state; a reconnect starts with a new, empty one.
    """

    def __init__(
        self,
        on_push: PushCallback,
        on_closed: Callable[[BaseException | None], Any] | None = None,
        on_connected: Callable[[], Any] | None = None,
        keepalive: Keepalive | None = None,
        policy: LinkPolicy = CLIENT_SIDE,
        *,
        watch_limit: int = DEFAULT_WATCH_LIMIT,
    ) -> None:
        if watch_limit < 0:
            raise ValueError(f"watch_limit must be at least 0, not {watch_limit}")
        dispatcher = Dispatcher[ClientSession](
            default=lambda conn, message, seq: on_push(message, seq)
        )
        super().__init__(dispatcher, keepalive, policy)
        self._on_closed = on_closed
        self._on_connected = on_connected
        self.connected = False
        self.watch_limit = watch_limit
        #: Users this connection is subscribed to: the first :attr:`watch_limit`
        #: distinct ids that its ``IMUsersStatReq`` named, through :meth:`watch` or a
        #: plain :meth:`request` (msg_server subscribes on every such request, and
        #: the protocol has no unsubscribe, so this only grows until the connection
        #: closes).
        self.watched: set[int] = set()

    def on_connected(self) -> None:
        self.connected = True
        if self._on_connected is not None:
            self._on_connected()

    def on_closed(self, exc: BaseException | None) -> None:
        self.connected = False
        if self._on_closed is not None:
            self._on_closed(exc)

    # -- presence subscriptions -----------------------------------------------------------

    def watch(
        self,
        user_ids: Iterable[int],
        callback: ResponseCallback,
        *,
        user_id: int = 0,
        timeout_s: float | None = 10.0,
    ) -> list[int]:
        """Subscribe this connection to the presence of ``user_ids`` (``IMUsersStatReq``).

        Names, in the order given and each once, the ids already :attr:`watched`
        and new ones while fewer than :attr:`watch_limit` distinct users are
        watched; the rest are left out. Returns the ids named. If there is one,
        ``callback(rsp, exc)`` gets the ``IMUsersStatRsp`` (each named user's
        status now) as for :meth:`request`; with none, nothing is sent and
        ``callback`` is never called. The named ids count as watched once the
        request is sent, answered or not (the server may have subscribed them).
        ``user_id``: this user's id, the request's required field (msg_server
        uses the session's). Loop thread only.
        """
        named = self._within_limit(user_ids)
        if named:
            req = buddy.IMUsersStatReq(user_id=user_id, user_id_list=named)
            self.request(req, callback, timeout_s=timeout_s, response=buddy.IMUsersStatRsp)
        return named

    def _within_limit(self, user_ids: Iterable[int]) -> list[int]:
        """Of ``user_ids`` (each once, in order): the watched ones and the new ones that fit."""
        room = self.watch_limit - len(self.watched)
        named: list[int] = []
        for uid in dict.fromkeys(user_ids):
            if uid in self.watched:
                named.append(uid)
            elif room > 0:
                named.append(uid)
                room -= 1
        return named

    def _count_subscriptions(self, message: Message) -> None:
        # Every IMUsersStatReq subscribes on a msg_server that routes presence by
        # subscription, whoever sent it: counting them all here keeps `watched` what
        # the server holds (with equal bounds, the same first ids fit on both sides).
        if isinstance(message, buddy.IMUsersStatReq):
            self.watched.update(self._within_limit(message.user_id_list))

    def request(self, message: Message, callback: ResponseCallback, **kw: Any) -> int:
        """As :meth:`ImConnection.request`; an ``IMUsersStatReq`` also updates :attr:`watched`."""
        # **kw: the keyword options and their defaults stay the base class's alone.
        seq = super().request(message, callback, **kw)
        self._count_subscriptions(message)
        return seq

    def send(self, message: Message, seq: int = 0, *, partial: bool = False) -> None:
        """As :meth:`ImConnection.send`; an ``IMUsersStatReq`` also updates :attr:`watched`."""
        super().send(message, seq, partial=partial)
        self._count_subscriptions(message)
