"""What a run keeps of each user, connection, sending connection and message sent.

Plain records, loop thread only, shared by the parts of a run: logins (:mod:`.login`)
set an endpoint's state and session, the verifier (:mod:`.verify`) what it received,
the sending side (:mod:`.send`) a sender's window.
"""

from __future__ import annotations

from typing import Any

from ...net import Transport
from ...pdu.kinds import GROUP_MSG_TYPES
from ...pdu.proto import im_base_define_pb2 as base
from ..session import ClientSession

#: An endpoint's state: not connected, asking login_server, connecting, logging in,
#: logged in, given up.
IDLE, QUERY, CONNECTING, LOGIN, READY, FAILED = range(6)


class User:
    """One user; ``index`` is its number in the whole run (``first_user`` + position)."""

    __slots__ = ("endpoints", "index", "name", "user_id")

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.user_id = 0
        self.endpoints: list[Endpoint] = []


class Endpoint:
    """One client connection and what it received.

    ``got``: (sending endpoint, seq) → [copies, and of the first copy: msg_id, arrival
    time, from_user_id, to_session_id, msg_type, how it came (:data:`LIVE`,
    :data:`CAUGHT`: fetched from history after a reconnect, :data:`CAUGHT_AND_LIVE`:
    that and then pushed once too)];
    ``last_id``: conversation → highest msg_id received on it;
    ``lost_at``: when its connection dropped, until it is back and caught up (0 else).
    """

    __slots__ = (
        "client_type",
        "conn",
        "first_try",
        "got",
        "index",
        "kicked",
        "last_id",
        "lost_at",
        "session",
        "state",
        "user",
    )

    def __init__(self, index: int, user: User, client_type: int) -> None:
        self.index = index
        self.user = user
        self.client_type = client_type
        self.state = IDLE
        self.session: ClientSession | None = None
        self.conn: Transport | None = None
        self.first_try = 0.0
        self.kicked = False
        self.got: dict[tuple[int, int], list[Any]] = {}
        self.last_id: dict[tuple[int, int], int] = {}
        self.lost_at = 0.0


LIVE, CAUGHT, CAUGHT_AND_LIVE = range(3)


class Sender:
    """One sending connection and where its messages go.

    ``session_id``: the recipient's user id (1:1) or the group id; ``receivers``:
    the users whose connections, except this one, get each message (the
    recipient and the sender; every member of a group); ``conv``: the
    conversation's key (see :func:`conversation`).
    """

    __slots__ = (
        "conv",
        "endpoint",
        "msg_type",
        "next_seq",
        "outstanding",
        "queued",
        "receivers",
        "session_id",
        "session_type",
    )

    def __init__(
        self, endpoint: Endpoint, session_id: int, receivers: list[User], group: bool
    ) -> None:
        self.endpoint = endpoint
        self.session_id = session_id
        self.receivers = receivers
        if group:
            self.msg_type = base.MSG_TYPE_GROUP_TEXT
            self.session_type = base.SESSION_TYPE_GROUP
        else:
            self.msg_type = base.MSG_TYPE_SINGLE_TEXT
            self.session_type = base.SESSION_TYPE_SINGLE
        self.conv = conversation(endpoint.user.user_id, session_id, self.msg_type)
        self.next_seq = 0
        self.outstanding = 0
        self.queued = False


def conversation(from_user_id: int, to_session_id: int, msg_type: int) -> tuple[int, int]:
    """A conversation's key: (smaller, larger) user id for 1:1, (0, group id) for a group
    (user ids start at 1, so no pair of users has this key)."""
    if msg_type in GROUP_MSG_TYPES:
        return (0, to_session_id)
    if from_user_id <= to_session_id:
        return (from_user_id, to_session_id)
    return (to_session_id, from_user_id)


class Sent:
    """One message sent: when, and once acked, its msg_id and who should receive it."""

    __slots__ = ("expected", "msg_id", "t_ack", "t_sent")

    def __init__(self, t_sent: float) -> None:
        self.t_sent = t_sent
        self.t_ack = 0.0
        self.msg_id = 0
        self.expected: tuple[int, ...] = ()
