"""The storage interface db_proxy_server runs on its worker threads.

Contract for every implementation:

- **Thread-safety**: every method may be called from any number of threads at once.
  Each call runs in its own transaction on a connection that no other thread is using
  at the same time; there is no cross-call transaction state. :meth:`Storage.close` is
  the exception: call it once, after the threads using the storage have stopped.
- **Blocking**: methods block on the database; call them from worker threads, never
  from the event loop thread.
- **Durability**: a write method returns only after its transaction committed durably
  (the commit reached stable storage); if it raises, nothing of it was stored.
- **Errors**: every database failure raises :class:`~.errors.StorageError` (or a
  subclass). Invalid arguments that are the caller's bug raise ValueError.
- **Time**: timestamps are integer seconds from the storage's clock (injectable for tests).
- **"Since"**: the incremental queries return rows whose ``updated`` is at or after the
  given time. At-or-after rather than after, because timestamps have one-second
  resolution: a change in the same second as the client's last sync must not be lost.
  A row may therefore come twice; clients replace by id, so that is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .records import (
    ContactSession,
    Department,
    GroupInfo,
    GroupType,
    GroupVersion,
    InsertResult,
    LoginRecord,
    Message,
    NewMessage,
    SessionType,
    UnreadInfo,
    User,
)

MAX_MSG_LIST = 200
"""Most messages one history or by-id query returns, whatever the client asks for."""

MAX_RECENT_SESSIONS = 500
"""Most sessions one recent-session query returns."""


class Storage(Protocol):
    """Users, departments, messages, unread counts, recent sessions and groups."""

    # -- users and departments ------------------------------------------------------------

    def add_user(
        self,
        name: str,
        password_md5_hex: str,
        *,
        nick: str = "",
        real_name: str = "",
        gender: int = 0,
        avatar_url: str = "",
        department_id: int = 0,
        email: str = "",
        phone: str = "",
        domain: str = "",
        sign_info: str = "",
        status: int = 0,
        origin: str = "",
    ) -> User:
        """Create a user. ``origin`` says who made it ("" an operator or the suite,
        ``"load"`` the load generator: see :meth:`users_of_origin`).
        ``password_md5_hex`` is what clients send (hex MD5 of the
        plaintext); only a salted scrypt hash of it is stored. ``domain`` (UserInfo's
        ``user_domain``, which clients show as the account name) defaults to ``name``.
        Raises ConflictError if ``name`` is taken, ValueError if the password is not a
        hex MD5."""
        ...

    def validate_user(self, name: str, password_md5_hex: str) -> User | None:
        """The user if ``name`` exists, is not disabled and the password matches, else
        None. Takes about the same time whether or not the name exists; the comparison
        is constant-time."""
        ...

    def login_record(self, name: str) -> LoginRecord | None:
        """The account a login names (one indexed read, no hashing), None if none."""
        ...

    def check_password(self, password_md5_hex: str, stored: str | None) -> bool:
        """Does ``password_md5_hex`` match a stored hash (``None``: no such user, which
        costs a full hash anyway and is False)? Pure CPU: call it on any thread."""
        ...

    def set_disabled(self, user_id: int, disabled: bool) -> bool:
        """Disable (every login refused) or enable an account; False if no such user."""
        ...

    def change_password(self, user_id: int, new_password_md5_hex: str) -> bool:
        """Replace the password hash; False if there is no such user."""
        ...

    def change_sign_info(self, user_id: int, sign_info: str) -> bool:
        """Set the signature line and bump ``updated``; False if there is no such user."""
        ...

    def change_avatar(self, user_id: int, avatar_url: str) -> bool:
        """Set the avatar URL and bump ``updated``; False if there is no such user."""
        ...

    def get_users(self, user_ids: Sequence[int]) -> list[User]:
        """The users that exist among ``user_ids``, ascending by id."""
        ...

    def user_by_name(self, name: str) -> User | None: ...

    def users_updated_since(self, since: int) -> list[User]:
        """Users whose ``updated`` >= ``since`` (0: all users), ascending by id."""
        ...

    def list_users(self) -> list[User]:
        """All users, ascending by id."""
        ...

    def users_of_origin(self, origin: str) -> list[User]:
        """The users created with ``origin`` (:meth:`add_user`), ascending by id."""
        ...

    def delete_users(self, user_ids: Sequence[int]) -> list[int]:
        """Delete those of ``user_ids`` that exist, in one transaction; returns them,
        ascending. Their group memberships (the groups' versions grow by one), unread
        counts and recent sessions go with them; the messages they exchanged stay in
        the history of the others. An id is never given to a new user again."""
        ...

    def add_department(self, name: str, *, priority: int = 0, parent_id: int = 0) -> Department: ...

    def departments_updated_since(self, since: int) -> list[Department]:
        """Departments whose ``updated`` >= ``since``, ascending by id."""
        ...

    # -- messages -------------------------------------------------------------------------

    def insert_messages(self, batch: Sequence[NewMessage]) -> list[InsertResult]:
        """Store a batch in ONE transaction; one result per message, in order.

        Each stored message gets the next ``msg_id`` of its conversation (an unordered
        user pair, or a group), contiguous from 1, allocated in the same transaction as
        the insert: concurrent batches never produce gaps or duplicates. Within a batch,
        messages of one conversation get ascending ids in batch order. Also, in the same
        transaction: the unread count of every recipient (the peer; for a group every
        member but the sender) grows by one per message, and the recent session of the
        sender and of every recipient is updated (and revived if it had been removed).

        A message that cannot be stored (bad type, unknown recipient, message to
        oneself, sender not a member of the group) is refused in its result and the
        others are stored. If the transaction fails, StorageError is raised and NOTHING
        of the batch is stored.
        """
        ...

    def insert_message(self, message: NewMessage) -> InsertResult:
        """:meth:`insert_messages` for one message."""
        ...

    def get_msg_list(
        self,
        user_id: int,
        session_type: SessionType,
        session_id: int,
        msg_id_begin: int,
        msg_cnt: int,
    ) -> list[Message]:
        """History as IMGetMsgListReq asks for it: ``msg_id_begin`` 0 means from the
        newest, else ids <= ``msg_id_begin``; newest first; at most ``msg_cnt`` (and at
        most MAX_MSG_LIST). Empty for a group ``user_id`` is not a member of."""
        ...

    def get_msgs_by_ids(
        self, user_id: int, session_type: SessionType, session_id: int, msg_ids: Sequence[int]
    ) -> list[Message]:
        """The messages among ``msg_ids`` that exist (at most MAX_MSG_LIST), ascending by
        id. Empty for a group ``user_id`` is not a member of."""
        ...

    def latest_msg_id(self, user_id: int, session_type: SessionType, session_id: int) -> int:
        """The newest ``msg_id`` of the session, 0 if it has none (or, for a group,
        if ``user_id`` is not a member)."""
        ...

    def unread_counts(self, user_id: int) -> list[UnreadInfo]:
        """Every session of ``user_id`` with unread messages, with its latest message."""
        ...

    def read_ack(
        self, user_id: int, session_type: SessionType, session_id: int, msg_id: int
    ) -> None:
        """``user_id`` has read the session up to and including ``msg_id``: its unread
        count becomes the number of later messages from others. An ack older than an
        earlier one changes nothing."""
        ...

    def recent_sessions(
        self,
        user_id: int,
        since: int,
        *,
        limit: int = 100,
        include_removed: bool = False,
    ) -> list[ContactSession]:
        """Sessions of ``user_id`` updated at or after ``since``, most recent first, at most
        ``limit`` (capped at MAX_RECENT_SESSIONS). Removed sessions only if asked."""
        ...

    def remove_session(self, user_id: int, session_type: SessionType, session_id: int) -> bool:
        """Mark a recent session removed (a new message revives it); False if unknown."""
        ...

    # -- groups ---------------------------------------------------------------------------

    def create_group(
        self,
        creator_id: int,
        name: str,
        *,
        group_type: GroupType = GroupType.TMP,
        avatar: str = "",
        member_ids: Sequence[int] = (),
    ) -> GroupInfo:
        """Create a group at version 1; the creator is always a member. Member ids that
        are not users are dropped. Every member gets the group as a recent session."""
        ...

    def add_group_members(self, group_id: int, user_ids: Sequence[int]) -> list[int]:
        """Add users (those that exist and are not members yet); returns the new member
        list, ascending. The version grows by one if anything changed. Raises
        NotFoundError for an unknown group. Who may do this is the caller's policy."""
        ...

    def remove_group_members(self, group_id: int, user_ids: Sequence[int]) -> list[int]:
        """Remove members (their unread count for the group goes too); returns the new
        member list. The version grows by one if anything changed. Raises NotFoundError
        for an unknown group."""
        ...

    def list_groups(self) -> list[GroupInfo]:
        """Every group, ascending by id (``shield_status`` 0: as nobody in particular)."""
        ...

    def group_members(self, group_id: int) -> list[int]:
        """Member ids ascending; empty for an unknown group."""
        ...

    def groups_of_user(
        self, user_id: int, group_type: GroupType | None = None
    ) -> list[GroupVersion]:
        """Groups ``user_id`` is a member of (of one type, if given), ascending by id."""
        ...

    def group_infos(self, group_ids: Sequence[int], user_id: int) -> list[GroupInfo]:
        """The groups that exist among ``group_ids``, as ``user_id`` sees them."""
        ...

    def set_group_shield(self, group_id: int, user_id: int, shield_status: int) -> bool:
        """Set the member's push-shield flag; False if ``user_id`` is not a member."""
        ...

    def group_shield_statuses(self, group_id: int, user_ids: Sequence[int]) -> dict[int, int]:
        """Shield flag of each of ``user_ids`` that is a member of the group."""
        ...

    # -- lifecycle ------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The newest migration applied to the database."""
        ...

    def close(self) -> None:
        """Close every connection. Call once, after all using threads are done; later
        calls of other methods raise StorageError."""
        ...
