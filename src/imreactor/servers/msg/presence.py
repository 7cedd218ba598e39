"""msg_server presence: who is told when a user comes online or goes offline.

With ``presence = "subscribed"`` (the default) an ``IMUsersStatReq`` is answered with
each named user's status and subscribes the asking connection to those users (at most
``max_subscriptions`` per connection, until it closes): ``IMUserStatNotify`` about a user
goes to the connections subscribed to that user. Alone, this server sees every
transition itself; with route_servers a user may be online on several msg_servers, so
only route_server knows when one comes online or goes offline everywhere: this server
subscribes route_server to every user watched here (``WATCH_SET`` on each connect,
``WATCH_ADD`` for each newly watched user; see ``servers/route/server.py``) and passes
its notifies on. With ``presence = "broadcast"`` every online user gets every notify
(TeamTalk's behaviour) and route_server is asked for no subscription. Loop thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ...pdu.imconn import Dispatcher, encode_message
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy
from ..links import Link
from ..route.server import WATCH_ADD, WATCH_SET
from .client import ClientConn

if TYPE_CHECKING:
    from .server import MsgServer

log = logging.getLogger(__name__)

#: Users per WATCH_SET/WATCH_ADD request to route_server: one PDU stays about 60 KB.
WATCH_CHUNK_USERS = 10_000
#: Users nobody here watches any more that route_server may go on telling us about before
#: we send it the set still watched (and never fewer than are still watched).
IDLE_WATCHES_KEPT = 1024


def _stat_notify(user_id: int, status: int) -> buddy.IMUserStatNotify:
    return buddy.IMUserStatNotify(
        user_stat=base.UserStat(user_id=user_id, status=base.UserStatType.ValueType(status))
    )


class Watch:
    """The connections here subscribed to one user's presence, and what they were told.

    ``status`` is the user's status as last told to them (0: not known yet), so that a
    notify that repeats it (from a second route_server, or a route_server re-learning
    who is online after its restart) reaches nobody twice. With route_servers an entry
    outlives its last watcher (``conns`` empty) while route_server still sends its
    notifies; :meth:`Presence.unwatch` forgets such entries in batches.
    """

    __slots__ = ("conns", "status")

    def __init__(self, status: int) -> None:
        self.conns: set[ClientConn] = set()
        self.status = status


class Presence:
    """One msg_server's presence subscriptions and notifies (this module's docstring)."""

    def __init__(self, server: MsgServer) -> None:
        self.server = server
        self.subscribed = server.config.presence == "subscribed"
        #: user id → the connections here watching them (``presence = "subscribed"``).
        self.watchers: dict[int, Watch] = {}
        #: Entries of :attr:`watchers` with no connection left (route_server still has them).
        self._idle_watches = 0

    def register(self, clients: Dispatcher[ClientConn]) -> None:
        """Serve status requests from clients (notifies from peers: :meth:`relayed_stat_notify`)."""
        clients.register(buddy.IMUsersStatReq, self._on_users_stat)

    def notify_status(self, user_id: int, status: int) -> None:
        """A transition this server saw itself (no route_server): tell who must know."""
        if self.subscribed:
            self.watched_status(user_id, status)
            return
        self.broadcast_status(_stat_notify(user_id, status))

    def broadcast_status(self, notify: buddy.IMUserStatNotify) -> None:
        """An ``IMUserStatNotify`` to every online user but its subject, encoded once."""
        frame = encode_message(notify)
        subject = notify.user_stat.user_id
        for other_id, conns in self.server.users.items():
            if other_id != subject:
                for c in conns:
                    c.send_frame(frame)

    def _watch(self, conn: ClientConn, user_ids: Iterable[int]) -> list[int]:
        """Subscribe ``conn`` to ``user_ids`` while it watches fewer than ``max_subscriptions``.

        Returns the users nobody here watched before (route_server must be told of them).
        Without route_server, a new entry's status is known here and now.
        """
        limit = self.server.config.max_subscriptions
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
                if not self.server.relay.clustered:
                    online = user_id in self.server.users
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
        keep = self.server.route.configured
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
            for link in self.server.route.live:
                self.watch_to_route(link, users, replace=True)

    def watch_to_route(self, link: Link, user_ids: list[int], *, replace: bool) -> None:
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
                timeout_s=self.server.config.db_timeout_s,
                response=buddy.IMUsersStatRsp,
            )

    def _watch_answered(self, rsp: buddy.IMUsersStatRsp | None, exc: BaseException | None) -> None:
        """Take the status a new entry starts from (what its watcher's own answer says).

        Never a notify: an answer is not a transition. Right after a route_server
        restart it may not know every msg_server's users yet, and telling watchers
        "offline" then would be a storm of false flaps; a change missed while the
        link was down is missed, as in TeamTalk (a client re-asks after a reconnect).
        """
        if rsp is None:
            # Nothing to redo: the link's next connect sends the whole set again.
            log.info("presence subscription not answered: %s", exc)
            return
        for stat in rsp.user_stat_list:
            entry = self.watchers.get(stat.user_id)
            if entry is not None and entry.status == 0:
                entry.status = stat.status

    def watched_status(self, user_id: int, status: int) -> None:
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

    def _on_users_stat(self, conn: ClientConn, msg: buddy.IMUsersStatReq, seq: int) -> None:
        if self.subscribed:
            added = self._watch(conn, msg.user_id_list)
            if added:
                # Every route_server, not one: any of them may be the one that stays up.
                for link in self.server.route.live:
                    self.watch_to_route(link, added, replace=False)
        if self.server.relay.users_status(conn, msg, seq):
            return
        rsp = buddy.IMUsersStatRsp(user_id=conn.user_id)
        for uid in msg.user_id_list:
            online = uid in self.server.users
            rsp.user_stat_list.add(
                user_id=uid,
                status=base.USER_STATUS_ONLINE if online else base.USER_STATUS_OFFLINE,
            )
        conn.send(rsp, seq)

    def relayed_stat_notify(self, msg: buddy.IMUserStatNotify) -> None:
        """A cluster-wide transition, as the fabric announced it."""
        if self.subscribed:
            self.watched_status(msg.user_stat.user_id, msg.user_stat.status)
        else:
            self.broadcast_status(msg)
