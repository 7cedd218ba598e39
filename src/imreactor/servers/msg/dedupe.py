"""Relayed messages seen already: a fabric that may carry a message twice drops the copy.

A fabric that resends after a fault (route_server's resend window, a Redis Stream's
re-read of entries not yet acknowledged) delivers at least once; this makes it exactly
once at the receiving msg_server. A stored message is named by its conversation and
msg_id, which db_proxy assigns once, so two copies always carry the same key.
"""

from __future__ import annotations

from collections import deque

from ...pdu.proto import im_message_pb2 as msg_pb

#: Messages remembered; a copy that arrives after this many others is not recognised
#: (a resend comes seconds after the original, far fewer messages later at any rate).
SEEN_MAX = 65_536

Key = tuple[int, int, int, int]


class SeenMessages:
    """The last :data:`SEEN_MAX` relayed messages, by (type, sender, session, msg_id)."""

    __slots__ = ("_order", "_seen", "duplicates", "limit")

    def __init__(self, limit: int = SEEN_MAX) -> None:
        self.limit = limit
        self._seen: set[Key] = set()
        self._order: deque[Key] = deque()
        self.duplicates = 0  #: copies recognised and dropped

    def first_time(self, msg: msg_pb.IMMsgData) -> bool:
        """True the first time ``msg`` is seen (remembering it); False for a copy."""
        key = (msg.msg_type, msg.from_user_id, msg.to_session_id, msg.msg_id)
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self.limit:
            self._seen.discard(self._order.popleft())
        return True
