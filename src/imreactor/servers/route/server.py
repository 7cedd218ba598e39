"""route_server: who is online on which msg_server, and relaying between msg_servers.

Every msg_server connects to every route_server (each route_server is independent and
knows only what its own links told it). Per link, route_server keeps the set of
``(user_id, client_type)`` connected to that msg_server:

- ``IMOnlineUserInfo`` replaces the link's whole set (entries with status offline are
  skipped; any other status counts as connected);
- ``IMUserStatusUpdate`` adds one entry (``user_status`` 1 online, or 3 leave) or removes
  it (2 offline);
- when the link closes, is aborted for a bad PDU length, or is silent for ``timeout_s``,
  all of its entries are forgotten.

A user is online while at least one link hosts them. When a user goes from offline
everywhere to online somewhere, or back, ``IMUserStatNotify`` goes to every connected
msg_server that wants it, the one that caused it included. A second device of an online
user, or one of several devices going away, changes nothing visible.

Who wants a notify (presence subscriptions, an extension in ``IMUsersStatReq``): a link is
a *broadcast* link, told about every user, until it sends an ``IMUsersStatReq`` whose
``attach_data`` is :data:`WATCH_SET`; from then on it is told only about the users that
request and later :data:`WATCH_ADD` ones named. ``WATCH_SET`` replaces the link's set,
``WATCH_ADD`` adds to it (and changes nothing on a broadcast link); a set that would hold
more than ``max_link_subscriptions`` users makes the link a broadcast link again until its
next ``WATCH_SET``. Both are answered like any ``IMUsersStatReq``. An original TeamTalk
msg_server never sends them, so it stays a broadcast link and misses nothing; our
msg_server sends ``WATCH_SET`` on every connect unless its ``presence`` is "broadcast";
an original route_server answers them as plain queries and ignores the rest. Plain
``IMUsersStatReq`` (a client's query relayed) stays a query and subscribes nothing.

What each command from a msg_server does (the link it came from is never a target, and
each target link gets a relayed PDU once, however many of its users it concerns):

- ``IMMsgData``, single (0x01/0x02): to the links hosting ``to_session_id`` or
  ``from_user_id`` (the sender's other devices);
- ``IMMsgData``, group (0x11/0x12): to the links hosting a member; the members are
  ``attach_data``, big-endian u32s (a trailing partial u32 is ignored);
- ``IMMsgDataReadNotify``: to the links hosting ``user_id``;
- ``IMP2PCmdMsg``: to the links hosting ``to_user_id``;
- ``IMServerKickUser``: to the links hosting ``user_id`` with a client of the same class
  as ``client_type`` (desktop below 0x10, mobile 0x1X);
- ``IMGroupChangeMemberNotify``: to every other link;
- ``IMUsersStatReq``: answered with ``IMUsersStatRsp`` (the request's seq, ``user_id`` and
  ``attach_data``; each user 1 online if any link hosts them, else 2 offline); with
  ``WATCH_SET`` or ``WATCH_ADD`` it also subscribes the link (above).

A relayed PDU carries the body bytes exactly as received (unknown fields, ``attach_data``
and all) with seq 0, as every server push does: a receiver must never take a relayed
PDU for the answer to one of its own requests that happens to use the same seq.

``IMRoleSet{master=1}`` goes to one link, the first to connect; every later link gets
``master=0``. When the master's link closes, the oldest remaining link gets ``master=1``.

Bad input: an unknown command, an undecodable body or missing required fields is logged
and dropped and the link stays up (:class:`~imreactor.pdu.imconn.ImConnection`'s
default); a PDU length outside 16..max closes that link alone (the framing layer).

Cost: a relay is one dict lookup per user concerned (user id → the links hosting them),
never a scan of all users; a group message stops looking up members once every other
link is a target. A presence change costs one set lookup per link (links are msg_servers:
few). Everything here runs on the loop thread.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Final, Generic, TypeVar

from ...net import EventLoop, Server
from ...pdu.framing import Frame
from ...pdu.imconn import Dispatcher, ImConnection, Keepalive, LinkPolicy, encode_message
from ...pdu.kinds import GROUP_MSG_TYPES, device_class
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy_pb
from ...pdu.proto import im_group_pb2 as group_pb
from ...pdu.proto import im_message_pb2 as msg_pb
from ...pdu.proto import im_server_pb2 as server_pb
from ...pdu.proto import im_switch_service_pb2 as switch_pb
from ..linkauth import link_server_context
from ..metrics import Metrics
from ..runner import Done, when_idle
from .config import RouteConfig

log = logging.getLogger(__name__)

_SEQ_OFFSET: Final = 12  # where the header's u16 seq_num lives

L = TypeVar("L", bound=Hashable)

_NO_HOSTS: Final[Mapping[Any, set[int]]] = {}

#: ``attach_data`` of an ``IMUsersStatReq`` that makes its users the whole set a link is
#: subscribed to. No TeamTalk server sends it: theirs is 12 bytes (type, handle, service).
WATCH_SET: Final = b"imreactor:presence:watch-set"
#: ``attach_data`` of an ``IMUsersStatReq`` that adds its users to a link's subscriptions.
WATCH_ADD: Final = b"imreactor:presence:watch-add"


class Presence(Generic[L]):
    """Which link hosts which ``(user_id, client_type)``, indexed both ways. Loop thread only.

    Each mutator reports the users whose cluster-wide presence changed, so that the
    caller can announce exactly those transitions. The per-link sets are shared by both
    indexes (``user → link → types`` and ``link → user → types``).
    """

    def __init__(self) -> None:
        self._users: dict[int, dict[L, set[int]]] = {}
        self._links: dict[L, dict[int, set[int]]] = {}

    def __len__(self) -> int:
        """Users online on at least one link."""
        return len(self._users)

    def hosts(self, user_id: int) -> Mapping[L, set[int]]:
        """The links hosting ``user_id`` and the client types there (empty if offline)."""
        return self._users.get(user_id, _NO_HOSTS)

    def is_online(self, user_id: int) -> bool:
        return user_id in self._users

    def users_on(self, link: L) -> int:
        return len(self._links.get(link, ()))

    def add(self, link: L, user_id: int, client_type: int) -> bool:
        """Record a connection; True if the user was offline everywhere until now."""
        hosts = self._users.get(user_id)
        came_online = hosts is None
        if hosts is None:
            hosts = self._users[user_id] = {}
        types = hosts.get(link)
        if types is None:
            types = hosts[link] = set()
            self._links.setdefault(link, {})[user_id] = types
        types.add(client_type)
        return came_online

    def remove(self, link: L, user_id: int, client_type: int) -> bool:
        """Forget a connection; True if the user is now offline everywhere."""
        hosts = self._users.get(user_id)
        if hosts is None:
            return False
        types = hosts.get(link)
        if types is None:
            return False
        types.discard(client_type)
        if types:
            return False
        del hosts[link]
        on_link = self._links[link]
        del on_link[user_id]
        if not on_link:
            del self._links[link]
        if hosts:
            return False
        del self._users[user_id]
        return True

    def drop(self, link: L) -> list[int]:
        """Forget everything on ``link``; return the users now offline everywhere."""
        on_link = self._links.pop(link, None)
        if on_link is None:
            return []
        gone = []
        for user_id in on_link:
            hosts = self._users[user_id]
            del hosts[link]
            if not hosts:
                del self._users[user_id]
                gone.append(user_id)
        return gone

    def replace(self, link: L, entries: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Make ``entries`` the whole of ``link``'s set; return ``(came online, went offline)``."""
        dropped = self.drop(link)
        added = [
            user_id for user_id, client_type in entries if self.add(link, user_id, client_type)
        ]
        # A user dropped and added back was online before and still is: no transition.
        dropped_set, added_set = set(dropped), set(added)
        came = [u for u in added if u not in dropped_set]
        went = [u for u in dropped if u not in added_set]
        return came, went


class RouteServer:
    """route_server's listener, its msg_server links and what they told it."""

    def __init__(self, loop: EventLoop, config: RouteConfig) -> None:
        self.loop = loop
        self.config = config
        self.keepalive = Keepalive(loop)
        self.presence: Presence[RouteLink] = Presence()
        #: Live links in the order they connected (a dict used as an ordered set).
        self.links: dict[RouteLink, None] = {}
        self.master: RouteLink | None = None
        self._server: Server | None = None
        self._closing = False
        self._policy = LinkPolicy(heartbeat_s=config.heartbeat_s, timeout_s=config.timeout_s)
        # route_server serves once it listens: nothing it needs can be down.
        self.metrics = Metrics(loop, "route_server", lambda: (True, {"links": len(self.links)}))
        self.metrics.gauge("imreactor_route_links", "msg_server links", lambda: len(self.links))
        self.metrics.gauge(
            "imreactor_route_users_online",
            "Users online on some msg_server",
            lambda: len(self.presence),
        )
        self._relayed = self.metrics.counter(
            "imreactor_route_relayed", "PDUs relayed to msg_servers (one per target link)"
        )

        d = self.dispatcher = Dispatcher[RouteLink]()
        d.register(server_pb.IMOnlineUserInfo, self._on_online_user_info)
        d.register(server_pb.IMUserStatusUpdate, self._on_user_status_update)
        d.register(buddy_pb.IMUsersStatReq, self._on_users_stat_req)
        d.register(msg_pb.IMMsgData, self._on_msg_data)
        d.register(msg_pb.IMMsgDataReadNotify, self._on_read_notify)
        d.register(switch_pb.IMP2PCmdMsg, self._on_p2p_cmd)
        d.register(server_pb.IMServerKickUser, self._on_kick_user)
        d.register(group_pb.IMGroupChangeMemberNotify, self._on_group_change)

    def start(self) -> None:
        c = self.config
        if c.http_port:
            self.metrics.listen(c.listen_host, c.http_port)
        self._server = self.loop.listen(
            c.listen_host, c.port, self._new_link, ssl=link_server_context(c, "route")
        )

    @property
    def ports(self) -> dict[str, int]:
        return {} if self._server is None else {"msg_server": self._server.port}

    def drain(self, done: Done) -> None:
        """Stop listening; close every link after what is queued on it (relays go out as
        they arrive, so nothing else is in flight); ``done()`` once every link is closed.
        msg_servers reconnect to another route_server of their ``route_servers``."""
        self._close_links()
        when_idle(self.loop, lambda: len(self.keepalive) > 0, done)

    def close(self) -> None:
        """Stop listening and close every link (without announcing anyone offline)."""
        self.metrics.close()
        self._close_links()

    def _close_links(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in tuple(self.links):
            link.conn.close()

    # -- links ----------------------------------------------------------------------------

    def _new_link(self) -> RouteLink:
        return RouteLink(self, self.dispatcher, self.keepalive, self._policy)

    def _link_up(self, link: RouteLink) -> None:
        self.links[link] = None
        if self.master is None:
            self.master = link
        link.send(server_pb.IMRoleSet(master=int(link is self.master)))
        log.info(
            "msg_server %s linked (%s; %d links)",
            link.peer,
            "master" if link is self.master else "not master",
            len(self.links),
        )

    def _link_down(self, link: RouteLink) -> None:
        """Forget ``link`` and its users, once; runs when its close begins or ends."""
        if link not in self.links:
            return
        del self.links[link]
        gone = self.presence.drop(link)
        log.info(
            "msg_server %s gone: %d users offline everywhere; %d links left",
            link.peer,
            len(gone),
            len(self.links),
        )
        if self._closing:
            return
        for user_id in gone:
            self._announce(user_id, base.USER_STATUS_OFFLINE)
        if self.master is link:
            self.master = next(iter(self.links), None)
            if self.master is not None:
                self.master.send(server_pb.IMRoleSet(master=1))
                log.info("msg_server %s is now master", self.master.peer)

    # -- presence -------------------------------------------------------------------------

    def _announce(self, user_id: int, status: int) -> None:
        """``IMUserStatNotify`` to every link that wants it, the one that caused it included.

        A broadcast link wants every user; a subscribed link the users in its set.
        """
        notify = buddy_pb.IMUserStatNotify(
            user_stat=base.UserStat(user_id=user_id, status=base.UserStatType.ValueType(status))
        )
        pdu = encode_message(notify)
        for link in self.links:
            watching = link.watching
            if watching is None or user_id in watching:
                link.send_frame(pdu)

    def _on_online_user_info(
        self, link: RouteLink, msg: server_pb.IMOnlineUserInfo, seq: int
    ) -> None:
        entries = [
            (stat.user_id, stat.client_type)
            for stat in msg.user_stat_list
            if stat.status != base.USER_STATUS_OFFLINE
        ]
        came, went = self.presence.replace(link, entries)
        log.info("msg_server %s hosts %d users", link.peer, self.presence.users_on(link))
        for user_id in went:
            self._announce(user_id, base.USER_STATUS_OFFLINE)
        for user_id in came:
            self._announce(user_id, base.USER_STATUS_ONLINE)

    def _on_user_status_update(
        self, link: RouteLink, msg: server_pb.IMUserStatusUpdate, seq: int
    ) -> None:
        if msg.user_status == base.USER_STATUS_OFFLINE:
            if self.presence.remove(link, msg.user_id, msg.client_type):
                self._announce(msg.user_id, base.USER_STATUS_OFFLINE)
        elif self.presence.add(link, msg.user_id, msg.client_type):
            self._announce(msg.user_id, base.USER_STATUS_ONLINE)

    def _on_users_stat_req(self, link: RouteLink, msg: buddy_pb.IMUsersStatReq, seq: int) -> None:
        mark = msg.attach_data
        if mark in (WATCH_SET, WATCH_ADD):
            link.subscribe(
                msg.user_id_list,
                replace=mark == WATCH_SET,
                limit=self.config.max_link_subscriptions,
            )
        rsp = buddy_pb.IMUsersStatRsp(user_id=msg.user_id)
        online = self.presence.is_online
        for user_id in msg.user_id_list:
            rsp.user_stat_list.add(
                user_id=user_id,
                status=base.USER_STATUS_ONLINE if online(user_id) else base.USER_STATUS_OFFLINE,
            )
        if msg.HasField("attach_data"):
            rsp.attach_data = msg.attach_data
        link.send(rsp, seq)

    # -- relaying -------------------------------------------------------------------------

    def _links_hosting(self, user_ids: Iterable[int], origin: RouteLink) -> dict[RouteLink, None]:
        """The links other than ``origin`` that host any of ``user_ids``, each once."""
        targets: dict[RouteLink, None] = {}
        others = len(self.links) - 1
        if others <= 0:
            return targets
        hosts = self.presence.hosts
        for user_id in user_ids:
            for link in hosts(user_id):
                if link is not origin:
                    targets[link] = None
            if len(targets) >= others:
                break  # every other link already gets it
        return targets

    def _relay(self, origin: RouteLink, targets: Iterable[RouteLink]) -> None:
        pdu: Frame | None = None
        for link in targets:
            if pdu is None:
                pdu = origin.relay_pdu()
            link.send_frame(pdu)
            self._relayed.inc()

    def _on_msg_data(self, link: RouteLink, msg: msg_pb.IMMsgData, seq: int) -> None:
        if msg.msg_type in GROUP_MSG_TYPES:
            data = msg.attach_data
            count, extra = divmod(len(data), 4)
            if extra:
                log.warning(
                    "msg_server %s: group message %d: attach_data of %d bytes is not u32s",
                    link.peer,
                    msg.msg_id,
                    len(data),
                )
            users: Iterable[int] = struct.unpack_from(f">{count}I", data)
        else:
            users = (msg.to_session_id, msg.from_user_id)
        self._relay(link, self._links_hosting(users, link))

    def _on_read_notify(self, link: RouteLink, msg: msg_pb.IMMsgDataReadNotify, seq: int) -> None:
        self._relay(link, self._links_hosting((msg.user_id,), link))

    def _on_p2p_cmd(self, link: RouteLink, msg: switch_pb.IMP2PCmdMsg, seq: int) -> None:
        self._relay(link, self._links_hosting((msg.to_user_id,), link))

    def _on_kick_user(self, link: RouteLink, msg: server_pb.IMServerKickUser, seq: int) -> None:
        device = device_class(msg.client_type)
        targets = [
            other
            for other, types in self.presence.hosts(msg.user_id).items()
            if other is not link and any(device_class(t) == device for t in types)
        ]
        self._relay(link, targets)

    def _on_group_change(
        self, link: RouteLink, msg: group_pb.IMGroupChangeMemberNotify, seq: int
    ) -> None:
        self._relay(link, [other for other in self.links if other is not link])


class RouteLink(ImConnection):
    """route_server's side of one msg_server link.

    While a handler runs, :attr:`frame` is the PDU being handled, so that a relay
    forwards the received bytes instead of serializing the message again.
    """

    def __init__(
        self,
        owner: RouteServer,
        dispatcher: Dispatcher[RouteLink],
        keepalive: Keepalive,
        policy: LinkPolicy,
    ) -> None:
        super().__init__(dispatcher, keepalive, policy)
        self.owner = owner
        self.frame: Frame = b""
        #: The msg_server's address, for log lines (kept after the socket is gone).
        self.peer = "?"
        #: The users this link is subscribed to; None: a broadcast link, told about everyone
        #: (what a TeamTalk msg_server expects). Dies with the link.
        self.watching: set[int] | None = None

    def subscribe(self, user_ids: Iterable[int], *, replace: bool, limit: int) -> None:
        """Subscribe to ``user_ids``: instead of the current set if ``replace``, else besides it.

        Adding to a broadcast link changes nothing: it is told about everyone already,
        and the users it named while it was one are not known any more. Past ``limit``
        users the link becomes a broadcast link, which costs route_server nothing to
        keep, until the next ``replace``.
        """
        if replace:
            watching: set[int] = set()
        elif self.watching is not None:
            watching = self.watching
        else:
            return
        was_broadcast = self.watching is None
        watching.update(user_ids)
        self.watching = watching
        if len(watching) > limit:
            log.warning(
                "msg_server %s: subscribes to more than %d users; it gets every presence"
                " notify until it sends a smaller set",
                self.peer,
                limit,
            )
            self.watching = None
        elif was_broadcast:
            log.info("msg_server %s: presence by subscription (%d users)", self.peer, len(watching))

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Frame) -> None:
        self.frame = frame
        try:
            super().frame_received(service_id, command_id, seq, frame)
        finally:
            self.frame = b""  # do not hold a large PDU between reads

    def relay_pdu(self) -> Frame:
        """The PDU being handled, as a push: same bytes, seq 0."""
        frame = self.frame
        if frame[_SEQ_OFFSET] == 0 and frame[_SEQ_OFFSET + 1] == 0:
            return frame
        pdu = bytearray(frame)
        pdu[_SEQ_OFFSET : _SEQ_OFFSET + 2] = b"\x00\x00"
        return pdu

    def on_connected(self) -> None:
        address = self.conn.remote_address
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self.owner._link_up(self)

    def on_closed(self, exc: BaseException | None) -> None:
        self.owner._link_down(self)
