"""Plain records that storage returns and accepts; the server layer converts them to protobuf.

All records are immutable and safe to hand between threads. Ids and timestamps are
integers; timestamps are seconds since the epoch. Enum values are the wire values of
``IM.BaseDefine`` so the conversion is a plain copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class SessionType(IntEnum):
    """Which kind of conversation a session id names."""

    SINGLE = 1  #: the session id is the peer's user id
    GROUP = 2  #: the session id is a group id


class MsgType(IntEnum):
    """Message types; the 0x10 bit marks a group message."""

    SINGLE_TEXT = 0x01
    SINGLE_AUDIO = 0x02
    GROUP_TEXT = 0x11
    GROUP_AUDIO = 0x12

    @property
    def session_type(self) -> SessionType:
        return SessionType.GROUP if self & 0x10 else SessionType.SINGLE


class GroupType(IntEnum):
    NORMAL = 0x01
    TMP = 0x02


class SessionStatus(IntEnum):
    OK = 0
    DELETED = 1


class DepartmentStatus(IntEnum):
    OK = 0
    DELETED = 1


@dataclass(frozen=True, slots=True)
class User:
    """A user account. The password hash is deliberately not part of it."""

    user_id: int
    name: str  #: the login name
    nick: str
    real_name: str
    gender: int
    avatar_url: str
    department_id: int
    email: str
    phone: str
    domain: str
    status: int
    sign_info: str
    created: int
    updated: int  #: last change of any field; drives incremental user lists


@dataclass(frozen=True, slots=True)
class LoginRecord:
    """What a login needs of an account: the user, the stored password hash, the flag.

    The hash is the stored ``scrypt$...`` string (never the MD5 a client sends); it
    changes whenever the password does, so it also serves as the credential's version.
    """

    user: User
    password_hash: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class Department:
    dept_id: int
    name: str
    priority: int
    parent_id: int
    status: DepartmentStatus
    created: int
    updated: int


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store, as msg_server hands it over (``from_user_id`` already trusted).

    ``to_session_id`` is the peer's user id for a single message and the group id for a
    group message, as ``msg_type`` says. ``create_time`` 0 means "now, by storage's clock".
    """

    from_user_id: int
    to_session_id: int
    msg_type: int
    msg_data: bytes
    create_time: int = 0


@dataclass(frozen=True, slots=True)
class InsertResult:
    """What became of one :class:`NewMessage` of a batch.

    Stored: ``error`` is None, ``msg_id`` is its id in the conversation (from 1) and
    ``create_time`` the time stored. Refused: ``error`` says why (unknown recipient, not a
    group member, bad type), ``msg_id`` is 0 and nothing of that message was stored.
    """

    msg_id: int
    create_time: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message (``IM.BaseDefine.MsgInfo``)."""

    msg_id: int
    from_user_id: int
    create_time: int
    msg_type: int
    msg_data: bytes


@dataclass(frozen=True, slots=True)
class UnreadInfo:
    """Unread messages of one session of a user, with the session's latest message."""

    session_id: int
    session_type: SessionType
    unread_cnt: int
    latest_msg_id: int
    latest_msg_data: bytes
    latest_msg_type: int
    latest_msg_from_user_id: int


@dataclass(frozen=True, slots=True)
class ContactSession:
    """One entry of a user's recent sessions (``IM.BaseDefine.ContactSessionInfo``).

    A session without any message yet (a group just joined) has ``latest_msg_id`` 0,
    empty data, sender 0 and the text type of its kind, so every field is a valid wire value.
    """

    session_id: int
    session_type: SessionType
    status: SessionStatus
    updated_time: int
    latest_msg_id: int
    latest_msg_data: bytes
    latest_msg_type: int
    latest_msg_from_user_id: int


@dataclass(frozen=True, slots=True)
class GroupVersion:
    group_id: int
    version: int


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group as one user sees it: ``shield_status`` is that user's flag (0 if not a member)."""

    group_id: int
    version: int  #: starts at 1, grows by one on every change of its member list
    name: str
    avatar: str
    creator_id: int
    group_type: GroupType
    shield_status: int
    members: tuple[int, ...]  #: ascending user ids
    created: int
    updated: int
