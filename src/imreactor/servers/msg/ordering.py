"""Per-connection delivery order of one conversation's messages across msg_servers.

On one msg_server, messages of a conversation reach every connection in msg_id
order: db_proxy answers stores in commit order and they are delivered as
answered. With several msg_servers, two senders on different servers store
through different links and reach a third connection by different paths (one
local, one through route_server), so id n+1 can come before id n.

:class:`Sequencer` restores the order for one connection. msg_ids are
contiguous per conversation, so a gap is visible: a message that skips ahead is
held until the missing ids arrive, or for ``wait_s`` at most (a message the
connection was never going to get, or a relay lost with a server, must not hold
the conversation up for good: the client can pull history). The ids the
connection's own sends were acknowledged with count as seen. A conversation's
first message on a connection has no known predecessor: unless it is id 1 or the
connection has learned the conversation's latest id from an answer that names it
(:func:`latest_ids`: unread counts, recent sessions, latest id, a history page, which
TeamTalk clients ask for right after login), it too waits up to ``wait_s`` for a
smaller id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from ...pdu.kinds import GROUP_MSG_TYPES
from ...pdu.proto import im_base_define_pb2 as base
from ...pdu.proto import im_buddy_pb2 as buddy
from ...pdu.proto import im_message_pb2 as msg_pb

if TYPE_CHECKING:
    from ...net import EventLoop, Timer

ConvKey = tuple[int, int, int]
SINGLE = 1
GROUP = 2


def conversation_of(msg: Any) -> ConvKey:
    """(kind, a, b): a 1:1 conversation is its two users in order, a group its id."""
    if msg.msg_type in GROUP_MSG_TYPES:
        return (GROUP, msg.to_session_id, 0)
    a, b = msg.from_user_id, msg.to_session_id
    return (SINGLE, a, b) if a < b else (SINGLE, b, a)


def session_of(user_id: int, session_type: int, session_id: int) -> ConvKey:
    """The conversation ``user_id``'s session ``session_id`` names (as queries name it)."""
    if session_type == base.SESSION_TYPE_GROUP:
        return (GROUP, session_id, 0)
    a, b = user_id, session_id
    return (SINGLE, a, b) if a < b else (SINGLE, b, a)


def latest_ids(rsp: Message) -> Iterator[tuple[int, int, int]]:
    """(session_type, session_id, msg_id) of every stored id an answer to ``rsp.user_id``
    names as its session's latest (or, for a history page, the page's highest)."""
    if isinstance(rsp, msg_pb.IMGetLatestMsgIdRsp):
        yield rsp.session_type, rsp.session_id, rsp.latest_msg_id
    elif isinstance(rsp, msg_pb.IMGetMsgListRsp):
        if rsp.msg_list:
            yield rsp.session_type, rsp.session_id, max(m.msg_id for m in rsp.msg_list)
    elif isinstance(rsp, msg_pb.IMUnreadMsgCntRsp):
        for info in rsp.unreadinfo_list:
            yield info.session_type, info.session_id, info.latest_msg_id
    elif isinstance(rsp, buddy.IMRecentContactSessionRsp):
        for contact in rsp.contact_session_list:
            yield contact.session_type, contact.session_id, contact.latest_msg_id


#: The answers :func:`latest_ids` reads.
NAMES_LATEST: frozenset[type[Message]] = frozenset(
    {
        msg_pb.IMGetLatestMsgIdRsp,
        msg_pb.IMGetMsgListRsp,
        msg_pb.IMUnreadMsgCntRsp,
        buddy.IMRecentContactSessionRsp,
    }
)


Emit = Callable[[], Any]


class Sequencer:
    """Emits one connection's messages and acks in msg_id order per conversation.

    Loop thread only. The connection's own sends are part of the order: the ack of
    message n goes out after n-1 has been delivered, so what the connection sees of a
    conversation (messages and acks alike) never goes backwards.
    """

    __slots__ = ("_held", "_loop", "_seen", "_timers", "wait_s")

    def __init__(self, loop: EventLoop, wait_s: float) -> None:
        self._loop = loop
        self.wait_s = wait_s
        self._seen: dict[ConvKey, int] = {}
        self._held: dict[ConvKey, dict[int, Emit]] = {}
        self._timers: dict[ConvKey, Timer] = {}

    @property
    def holding(self) -> bool:
        """True while some message or ack waits for a gap to fill."""
        return bool(self._held)

    def deliver(self, msg: Any, emit: Emit) -> None:
        """Run ``emit`` (which sends the message ``msg``) now if ``msg`` is next (or
        late), else once the gap fills. The caller encodes: a fan-out encodes once
        and passes every recipient an ``emit`` that writes the same PDU."""
        self.submit(conversation_of(msg), msg.msg_id, emit)

    def acked(self, msg: Any, msg_id: int, send_ack: Emit) -> None:
        """This connection's ``msg`` was stored as ``msg_id``; ``send_ack`` sends its ack."""
        self.submit(conversation_of(msg), msg_id, send_ack)

    def submit(self, key: ConvKey, msg_id: int, emit: Emit) -> None:
        last = self._seen.get(key)
        if (last is None and msg_id == 1) or (last is not None and msg_id <= last + 1):
            emit()
            if last is None or msg_id > last:
                self._seen[key] = msg_id
                self._release(key)
            return
        self._held.setdefault(key, {})[msg_id] = emit
        if key not in self._timers:
            self._timers[key] = self._loop.call_later(self.wait_s, self._give_up, key)

    def learned(self, rsp: Message, user_id: int) -> None:
        """The connection (of ``user_id``) was sent ``rsp``: every id it names as stored
        no longer waits for anything smaller, and held messages up to it go out."""
        for session_type, session_id, msg_id in latest_ids(rsp):
            if msg_id <= 0:
                continue
            key = session_of(user_id, session_type, session_id)
            if self._seen.get(key, 0) < msg_id:
                self._seen[key] = msg_id
                self._release(key)

    def _release(self, key: ConvKey) -> None:
        held = self._held.get(key)
        if not held:
            return
        nxt = self._seen[key] + 1
        # Anything at or below what is seen is late (the connection learned of a later
        # id first): it goes out as it is, before what follows.
        for msg_id in sorted(i for i in held if i < nxt):
            held.pop(msg_id)()
        while nxt in held:
            held.pop(nxt)()
            self._seen[key] = nxt
            nxt += 1
        if not held:
            del self._held[key]
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()

    def _give_up(self, key: ConvKey) -> None:
        # The gap did not fill in time: emit what is held, in order, and move on.
        self._timers.pop(key, None)
        held = self._held.pop(key, {})
        for msg_id in sorted(held):
            held[msg_id]()
        if held:
            self._seen[key] = max(self._seen.get(key, 0), max(held))

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._held.clear()
