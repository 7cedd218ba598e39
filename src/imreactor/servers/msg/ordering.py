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
first message on a connection has no known predecessor: unless it is id 1, it
too waits up to ``wait_s`` for a smaller id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...pdu.kinds import GROUP_MSG_TYPES

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

    def _release(self, key: ConvKey) -> None:
        held = self._held.get(key)
        if not held:
            return
        nxt = self._seen[key] + 1
        while nxt in held:
            held.pop(nxt)()
            self._seen[key] = nxt
            nxt += 1
        # Anything at or below what is now seen is late: it goes out as it is.
        for msg_id in sorted(i for i in held if i < nxt):
            held.pop(msg_id)()
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
