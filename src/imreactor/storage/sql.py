"""The operations of :class:`~.base.Storage`, written once in the SQL both backends speak.

A backend supplies transactions (:meth:`SqlStorage._write`, :meth:`SqlStorage._read`)
that hand a :class:`Tx` to a function and map driver errors to StorageError; this module
holds every query. Queries use ``?`` placeholders (the PostgreSQL backend rewrites them)
and only SQL that SQLite >= 3.35 and PostgreSQL both accept (``ON CONFLICT``,
``RETURNING``). Every value reaches the database as a bound parameter, never as text in
the query: the only generated SQL is the count of ``?`` in an ``IN (...)`` list.

Schema in brief (each backend's migrations spell out the types):

- ``users``, ``departments``: one row each; ``updated`` drives the incremental lists.
- ``conversations``: one row per 1:1 pair ``(1, low user id, high user id)`` or group
  ``(2, group id, 0)``; ``last_msg_id`` is the id counter of the conversation.
- ``messages``: keyed by ``(conv_id, msg_id)``.
- ``unread``: per (user, session): unread count and the last msg id acknowledged read.
- ``sessions``: the recent-session list of each user, with a removed flag.
- ``chat_groups``, ``group_members`` (with the member's shield flag).

Locking rule (keeps PostgreSQL free of deadlocks): a transaction that changes what
belongs to a conversation (its messages, unread and session rows, a group's members)
first locks that conversation's row, and a transaction touching several conversations
locks them in ascending key order. ``read_ack`` and ``remove_session`` lock one row and
wait for nothing while holding it, so they cannot close a cycle either.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from .base import MAX_MSG_LIST, MAX_RECENT_SESSIONS
from .errors import ConflictError, NotFoundError, StorageError
from .passwords import PasswordHasher
from .records import (
    ContactSession,
    Department,
    DepartmentStatus,
    GroupInfo,
    GroupType,
    GroupVersion,
    InsertResult,
    LoginRecord,
    Message,
    MsgType,
    NewMessage,
    SessionStatus,
    SessionType,
    UnreadInfo,
    User,
)

T = TypeVar("T")
Row = tuple[Any, ...]
Clock = Callable[[], int]
ConvKey = tuple[int, int, int]

IN_CHUNK = 500  # ids per IN (...) list: far below SQLite's bound-variable limit

USER_COLS = (
    "user_id, name, nick, real_name, gender, avatar_url, department_id, email, phone, domain, "
    "status, sign_info, created, updated"
)
DEPT_COLS = "dept_id, name, priority, parent_id, status, created, updated"
MSG_COLS = "msg_id, from_user_id, create_time, msg_type, msg_data"
GROUP_COLS = "group_id, version, name, avatar, creator_id, group_type, created, updated"


class Tx(Protocol):
    """One open transaction; only valid inside the function it was passed to."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""
        ...

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


def wall_clock() -> int:
    return int(time.time())


def placeholders(n: int) -> str:
    return ",".join("?" * n)


def chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    """Distinct ids, ascending, in lists of at most IN_CHUNK."""
    unique = sorted(set(ids))
    for i in range(0, len(unique), IN_CHUNK):
        yield unique[i : i + IN_CHUNK]


def conv_key(session_type: SessionType, a: int, b: int) -> ConvKey:
    """The conversation of user ``a`` with session ``b``: a 1:1 pair is unordered."""
    if session_type == SessionType.SINGLE:
        return (int(SessionType.SINGLE), min(a, b), max(a, b))
    return (int(SessionType.GROUP), b, 0)


def _user(row: Row) -> User:
    return User(*row)


def _dept(row: Row) -> Department:
    dept_id, name, priority, parent_id, status, created, updated = row
    return Department(
        dept_id, name, priority, parent_id, DepartmentStatus(status), created, updated
    )


def _message(row: Row) -> Message:
    return Message(row[0], row[1], row[2], row[3], bytes(row[4]))


def _default_type(session_type: SessionType) -> int:
    return int(MsgType.GROUP_TEXT if session_type == SessionType.GROUP else MsgType.SINGLE_TEXT)


def apply_migrations(
    tx: Tx,
    migrations: Sequence[Sequence[str]],
    applied_type: str,
    where: str,
    now: int,
) -> None:
    """Bring the schema up to ``len(migrations)`` inside ``tx``; record each version applied.

    ``applied_type`` is the backend's integer type for the timestamp column; ``where``
    names the database in the error for a schema newer than this program.
    """
    tx.run(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        f" version INTEGER PRIMARY KEY, applied {applied_type} NOT NULL)"
    )
    row = tx.one("SELECT max(version) FROM schema_version")
    current = int(row[0]) if row and row[0] is not None else 0
    if current > len(migrations):
        raise StorageError(
            f"{where}: schema version {current} is newer than this program knows"
            f" ({len(migrations)})"
        )
    for version in range(current + 1, len(migrations) + 1):
        for statement in migrations[version - 1]:
            tx.run(statement)
        tx.run("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, now))


class SqlStorage:
    """Implements :class:`~.base.Storage` on top of a backend's transactions.

    Thread-safe as the backend's :meth:`_write` and :meth:`_read` are: each call runs its
    own transaction on a connection no other thread uses meanwhile.
    """

    #: appended to a SELECT that must lock its rows until commit ("" where the backend
    #: already serialises writers)
    FOR_UPDATE = ""

    def __init__(self, clock: Clock | None, hasher: PasswordHasher | None) -> None:
        self._clock = clock or wall_clock
        self._hasher = hasher or PasswordHasher()

    # -- backend hooks --------------------------------------------------------------------

    def _write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a read-write transaction, commit durably, return its result."""
        raise NotImplementedError

    def _read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a transaction that only reads."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def schema_version(self) -> int:
        row = self._read(lambda tx: tx.one("SELECT max(version) FROM schema_version"))
        return int(row[0]) if row and row[0] is not None else 0

    # -- users ----------------------------------------------------------------------------

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
    ) -> User:
        if not name:
            raise ValueError("user name must not be empty")
        # UserInfo has no login-name field; TeamTalk clients show user_domain as the
        # account name, so it defaults to the login name.
        domain = domain or name
        # Hash before the transaction: scrypt is slow and must not hold a connection.
        password_hash = self._hasher.hash(password_md5_hex)
        now = self._clock()

        def work(tx: Tx) -> User:
            if tx.one("SELECT 1 FROM users WHERE name = ?", (name,)) is not None:
                raise ConflictError(f"user name {name!r} is taken")
            row = tx.one(
                "INSERT INTO users (name, password_hash, nick, real_name, gender, avatar_url,"
                " department_id, email, phone, domain, status, sign_info, created, updated)"
                f" VALUES ({placeholders(14)}) RETURNING {USER_COLS}",
                (
                    name,
                    password_hash,
                    nick,
                    real_name,
                    gender,
                    avatar_url,
                    department_id,
                    email,
                    phone,
                    domain,
                    status,
                    sign_info,
                    now,
                    now,
                ),
            )
            assert row is not None
            return _user(row)

        return self._write(work)

    def validate_user(self, name: str, password_md5_hex: str) -> User | None:
        record = self.login_record(name)
        # check_password runs a full hash even when the row is missing: equal timing.
        stored = None if record is None else record.password_hash
        if not self.check_password(password_md5_hex, stored):
            return None
        assert record is not None
        return None if record.disabled else record.user

    def login_record(self, name: str) -> LoginRecord | None:
        row = self._read(
            lambda tx: tx.one(
                f"SELECT {USER_COLS}, password_hash, disabled FROM users WHERE name = ?", (name,)
            )
        )
        if row is None:
            return None
        return LoginRecord(_user(row[:-2]), row[-2], bool(row[-1]))

    def check_password(self, password_md5_hex: str, stored: str | None) -> bool:
        return self._hasher.verify(password_md5_hex, stored)

    def set_disabled(self, user_id: int, disabled: bool) -> bool:
        # Not part of UserInfo either: ``updated`` stays.
        changed = self._write(
            lambda tx: tx.run(
                "UPDATE users SET disabled = ? WHERE user_id = ?", (int(disabled), user_id)
            )
        )
        return changed > 0

    def change_password(self, user_id: int, new_password_md5_hex: str) -> bool:
        password_hash = self._hasher.hash(new_password_md5_hex)
        # The password is not part of UserInfo, so ``updated`` stays: no client must refetch.
        changed = self._write(
            lambda tx: tx.run(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
            )
        )
        return changed > 0

    def _set_user_field(self, user_id: int, column: str, value: str) -> bool:
        now = self._clock()
        changed = self._write(
            lambda tx: tx.run(
                f"UPDATE users SET {column} = ?, updated = ? WHERE user_id = ?",
                (value, now, user_id),
            )
        )
        return changed > 0

    def change_sign_info(self, user_id: int, sign_info: str) -> bool:
        return self._set_user_field(user_id, "sign_info", sign_info)

    def change_avatar(self, user_id: int, avatar_url: str) -> bool:
        return self._set_user_field(user_id, "avatar_url", avatar_url)

    def get_users(self, user_ids: Sequence[int]) -> list[User]:
        def work(tx: Tx) -> list[User]:
            users: list[User] = []
            for chunk in chunks(user_ids):
                rows = tx.all(
                    f"SELECT {USER_COLS} FROM users WHERE user_id IN ({placeholders(len(chunk))})"
                    " ORDER BY user_id",
                    chunk,
                )
                users.extend(_user(r) for r in rows)
            return users

        return self._read(work)

    def user_by_name(self, name: str) -> User | None:
        row = self._read(
            lambda tx: tx.one(f"SELECT {USER_COLS} FROM users WHERE name = ?", (name,))
        )
        return None if row is None else _user(row)

    def users_updated_since(self, since: int) -> list[User]:
        rows = self._read(
            lambda tx: tx.all(
                f"SELECT {USER_COLS} FROM users WHERE updated >= ? ORDER BY user_id", (since,)
            )
        )
        return [_user(r) for r in rows]

    def list_users(self) -> list[User]:
        return self.users_updated_since(0)

    # -- departments ----------------------------------------------------------------------

    def add_department(self, name: str, *, priority: int = 0, parent_id: int = 0) -> Department:
        now = self._clock()

        def work(tx: Tx) -> Department:
            row = tx.one(
                "INSERT INTO departments (name, priority, parent_id, status, created, updated)"
                f" VALUES (?, ?, ?, 0, ?, ?) RETURNING {DEPT_COLS}",
                (name, priority, parent_id, now, now),
            )
            assert row is not None
            return _dept(row)

        return self._write(work)

    def departments_updated_since(self, since: int) -> list[Department]:
        rows = self._read(
            lambda tx: tx.all(
                f"SELECT {DEPT_COLS} FROM departments WHERE updated >= ? ORDER BY dept_id",
                (since,),
            )
        )
        return [_dept(r) for r in rows]

    # -- messages -------------------------------------------------------------------------

    def insert_message(self, message: NewMessage) -> InsertResult:
        return self.insert_messages([message])[0]

    def insert_messages(self, batch: Sequence[NewMessage]) -> list[InsertResult]:
        batch = list(batch)
        if not batch:
            return []
        now = self._clock()
        refused: dict[int, InsertResult] = {}
        by_conv: dict[ConvKey, list[int]] = {}
        for i, msg in enumerate(batch):
            try:
                msg_type = MsgType(msg.msg_type)
            except ValueError:
                refused[i] = InsertResult(0, 0, f"unknown msg_type {msg.msg_type}")
                continue
            st = msg_type.session_type
            if st == SessionType.SINGLE and msg.from_user_id == msg.to_session_id:
                refused[i] = InsertResult(0, 0, "message to oneself")
                continue
            by_conv.setdefault(conv_key(st, msg.from_user_id, msg.to_session_id), []).append(i)

        if not by_conv:  # all refused: no transaction to commit
            return [refused[i] for i in range(len(batch))]

        def work(tx: Tx) -> list[InsertResult]:
            # Fresh per attempt: a backend may run this again after a deadlock rollback.
            out: dict[int, InsertResult] = dict(refused)
            for key in sorted(by_conv):  # ascending: the locking rule
                self._insert_conversation(tx, key, by_conv[key], batch, out, now)
            return [out[i] for i in range(len(batch))]

        return self._write(work)

    def _insert_conversation(
        self,
        tx: Tx,
        key: ConvKey,
        indexes: list[int],
        batch: list[NewMessage],
        out: dict[int, InsertResult],
        now: int,
    ) -> None:
        kind, low, high = key
        if kind == SessionType.SINGLE:
            found = tx.all("SELECT user_id FROM users WHERE user_id IN (?, ?)", (low, high))
            if len(found) != 2:
                for i in indexes:
                    out[i] = InsertResult(0, 0, "no such user")
                return
            participants = [low, high]
            accepted = indexes
            # Creates the counter at the first message, else locks and advances it: the
            # row lock is held to commit, so concurrent inserts queue here.
            row = tx.one(
                "INSERT INTO conversations (conv_type, low_id, high_id, last_msg_id)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (conv_type, low_id, high_id) DO UPDATE"
                " SET last_msg_id = conversations.last_msg_id + excluded.last_msg_id"
                " RETURNING conv_id, last_msg_id",
                (kind, low, high, len(accepted)),
            )
            assert row is not None
            conv_id, last = row
            first = last - len(accepted) + 1
        else:
            locked = tx.one(
                "SELECT conv_id, last_msg_id FROM conversations"
                " WHERE conv_type = ? AND low_id = ? AND high_id = 0" + self.FOR_UPDATE,
                (kind, low),
            )
            if locked is None:
                for i in indexes:
                    out[i] = InsertResult(0, 0, "no such group")
                return
            conv_id, last = locked
            participants = self._members(tx, low)
            members = set(participants)
            accepted = []
            for i in indexes:
                if batch[i].from_user_id in members:
                    accepted.append(i)
                else:
                    out[i] = InsertResult(0, 0, "sender is not a member of the group")
            if not accepted:
                return
            first = last + 1
            tx.run(
                "UPDATE conversations SET last_msg_id = ? WHERE conv_id = ?",
                (last + len(accepted), conv_id),
            )

        rows = []
        unread: Counter[int] = Counter()
        for n, i in enumerate(accepted):
            msg = batch[i]
            create_time = msg.create_time or now
            out[i] = InsertResult(first + n, create_time)
            rows.append(
                (conv_id, first + n, msg.from_user_id, msg.msg_type, msg.msg_data, create_time)
            )
            for user in participants:
                if user != msg.from_user_id:
                    unread[user] += 1
        tx.many(
            "INSERT INTO messages (conv_id, msg_id, from_user_id, msg_type, msg_data, create_time)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )

        def session_of(user: int) -> int:
            if kind == SessionType.GROUP:
                return low
            return high if user == low else low

        tx.many(
            "INSERT INTO unread (user_id, session_type, session_id, conv_id, unread_cnt,"
            " last_read_msg_id) VALUES (?, ?, ?, ?, ?, 0)"
            " ON CONFLICT (user_id, session_type, session_id) DO UPDATE"
            " SET unread_cnt = unread.unread_cnt + excluded.unread_cnt",
            [(u, kind, session_of(u), conv_id, unread[u]) for u in sorted(unread)],
        )
        self._touch_sessions(tx, kind, conv_id, [(u, session_of(u)) for u in participants], now)

    def _touch_sessions(
        self, tx: Tx, kind: int, conv_id: int, pairs: Iterable[tuple[int, int]], now: int
    ) -> None:
        """Create or revive the (user, session) entries of recent sessions, updated now."""
        tx.many(
            "INSERT INTO sessions (user_id, session_type, session_id, conv_id, status, created,"
            " updated) VALUES (?, ?, ?, ?, 0, ?, ?)"
            " ON CONFLICT (user_id, session_type, session_id) DO UPDATE"
            " SET status = 0, updated = excluded.updated",
            [(user, kind, sid, conv_id, now, now) for user, sid in sorted(pairs)],
        )

    def _reader_conv(
        self, tx: Tx, user_id: int, session_type: SessionType, session_id: int
    ) -> tuple[int, int] | None:
        """(conv_id, last_msg_id) of a session ``user_id`` may read, None if none."""
        kind, low, high = conv_key(SessionType(session_type), user_id, session_id)
        if kind == SessionType.GROUP:
            row = tx.one(
                "SELECT c.conv_id, c.last_msg_id FROM conversations c"
                " JOIN group_members gm ON gm.group_id = c.low_id AND gm.user_id = ?"
                " WHERE c.conv_type = ? AND c.low_id = ? AND c.high_id = 0",
                (user_id, kind, low),
            )
        else:
            row = tx.one(
                "SELECT conv_id, last_msg_id FROM conversations"
                " WHERE conv_type = ? AND low_id = ? AND high_id = ?",
                (kind, low, high),
            )
        return None if row is None else (int(row[0]), int(row[1]))

    def get_msg_list(
        self,
        user_id: int,
        session_type: SessionType,
        session_id: int,
        msg_id_begin: int,
        msg_cnt: int,
    ) -> list[Message]:
        limit = min(msg_cnt, MAX_MSG_LIST)
        if limit <= 0:
            return []

        def work(tx: Tx) -> list[Message]:
            conv = self._reader_conv(tx, user_id, session_type, session_id)
            if conv is None:
                return []
            begin = conv[1] if msg_id_begin == 0 else msg_id_begin
            rows = tx.all(
                f"SELECT {MSG_COLS} FROM messages WHERE conv_id = ? AND msg_id <= ?"
                " ORDER BY msg_id DESC LIMIT ?",
                (conv[0], begin, limit),
            )
            return [_message(r) for r in rows]

        return self._read(work)

    def get_msgs_by_ids(
        self, user_id: int, session_type: SessionType, session_id: int, msg_ids: Sequence[int]
    ) -> list[Message]:
        wanted = sorted(set(msg_ids))[:MAX_MSG_LIST]
        if not wanted:
            return []

        def work(tx: Tx) -> list[Message]:
            conv = self._reader_conv(tx, user_id, session_type, session_id)
            if conv is None:
                return []
            rows = tx.all(
                f"SELECT {MSG_COLS} FROM messages WHERE conv_id = ?"
                f" AND msg_id IN ({placeholders(len(wanted))}) ORDER BY msg_id",
                (conv[0], *wanted),
            )
            return [_message(r) for r in rows]

        return self._read(work)

    def latest_msg_id(self, user_id: int, session_type: SessionType, session_id: int) -> int:
        conv = self._read(lambda tx: self._reader_conv(tx, user_id, session_type, session_id))
        return 0 if conv is None else int(conv[1])

    def unread_counts(self, user_id: int) -> list[UnreadInfo]:
        rows = self._read(
            lambda tx: tx.all(
                "SELECT u.session_id, u.session_type, u.unread_cnt, c.last_msg_id,"
                " m.msg_data, m.msg_type, m.from_user_id"
                " FROM unread u JOIN conversations c ON c.conv_id = u.conv_id"
                " LEFT JOIN messages m ON m.conv_id = c.conv_id AND m.msg_id = c.last_msg_id"
                " WHERE u.user_id = ? AND u.unread_cnt > 0"
                " ORDER BY u.session_type, u.session_id",
                (user_id,),
            )
        )
        result = []
        for sid, st, cnt, last, data, mtype, sender in rows:
            st = SessionType(st)
            result.append(
                UnreadInfo(
                    sid,
                    st,
                    cnt,
                    last,
                    b"" if data is None else bytes(data),
                    _default_type(st) if mtype is None else mtype,
                    0 if sender is None else sender,
                )
            )
        return result

    def read_ack(
        self, user_id: int, session_type: SessionType, session_id: int, msg_id: int
    ) -> None:
        st = int(session_type)

        def work(tx: Tx) -> None:
            # Lock the counter row first so an insert committing meanwhile either counts
            # before this recount or adds its +1 after it, never in between.
            row = tx.one(
                "SELECT conv_id, unread_cnt, last_read_msg_id FROM unread"
                " WHERE user_id = ? AND session_type = ? AND session_id = ?" + self.FOR_UPDATE,
                (user_id, st, session_id),
            )
            if row is None:
                return
            conv_id, unread_cnt, last_read = row
            latest = tx.one("SELECT last_msg_id FROM conversations WHERE conv_id = ?", (conv_id,))
            # A client may ack an id beyond the newest; clamping keeps later acks working.
            upto = min(msg_id, latest[0] if latest else 0)
            if upto <= last_read:
                return
            later = tx.one(
                "SELECT count(*) FROM messages"
                " WHERE conv_id = ? AND msg_id > ? AND from_user_id <> ?",
                (conv_id, upto, user_id),
            )
            # min(): messages from before the user joined a group count as later ones here
            # but were never added to the count.
            remaining = min(unread_cnt, int(later[0]) if later else 0)
            tx.run(
                "UPDATE unread SET unread_cnt = ?, last_read_msg_id = ?"
                " WHERE user_id = ? AND session_type = ? AND session_id = ?",
                (remaining, upto, user_id, st, session_id),
            )

        self._write(work)

    def recent_sessions(
        self,
        user_id: int,
        since: int,
        *,
        limit: int = 100,
        include_removed: bool = False,
    ) -> list[ContactSession]:
        limit = min(limit, MAX_RECENT_SESSIONS)
        if limit <= 0:
            return []
        status_filter = "" if include_removed else " AND s.status = 0"
        rows = self._read(
            lambda tx: tx.all(
                "SELECT s.session_id, s.session_type, s.status, s.updated, c.last_msg_id,"
                " m.msg_data, m.msg_type, m.from_user_id"
                " FROM sessions s JOIN conversations c ON c.conv_id = s.conv_id"
                " LEFT JOIN messages m ON m.conv_id = c.conv_id AND m.msg_id = c.last_msg_id"
                " WHERE s.user_id = ? AND s.updated >= ?" + status_filter + " ORDER BY"
                " s.updated DESC, s.session_type, s.session_id LIMIT ?",
                (user_id, since, limit),
            )
        )
        result = []
        for sid, st, status, updated, last, data, mtype, sender in rows:
            st = SessionType(st)
            result.append(
                ContactSession(
                    sid,
                    st,
                    SessionStatus(status),
                    updated,
                    last,
                    b"" if data is None else bytes(data),
                    _default_type(st) if mtype is None else mtype,
                    0 if sender is None else sender,
                )
            )
        return result

    def remove_session(self, user_id: int, session_type: SessionType, session_id: int) -> bool:
        now = self._clock()
        changed = self._write(
            lambda tx: tx.run(
                "UPDATE sessions SET status = ?, updated = ?"
                " WHERE user_id = ? AND session_type = ? AND session_id = ?",
                (int(SessionStatus.DELETED), now, user_id, int(session_type), session_id),
            )
        )
        return changed > 0

    # -- groups ---------------------------------------------------------------------------

    @staticmethod
    def _members(tx: Tx, group_id: int) -> list[int]:
        rows = tx.all(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id", (group_id,)
        )
        return [r[0] for r in rows]

    @staticmethod
    def _existing_users(tx: Tx, user_ids: Iterable[int]) -> set[int]:
        found: set[int] = set()
        for chunk in chunks(user_ids):
            rows = tx.all(
                f"SELECT user_id FROM users WHERE user_id IN ({placeholders(len(chunk))})", chunk
            )
            found.update(r[0] for r in rows)
        return found

    def create_group(
        self,
        creator_id: int,
        name: str,
        *,
        group_type: GroupType = GroupType.TMP,
        avatar: str = "",
        member_ids: Sequence[int] = (),
    ) -> GroupInfo:
        gtype = GroupType(group_type)
        now = self._clock()

        def work(tx: Tx) -> GroupInfo:
            members = sorted(self._existing_users(tx, [creator_id, *member_ids]))
            if creator_id not in members:
                raise NotFoundError(f"no user {creator_id}")
            row = tx.one(
                "INSERT INTO chat_groups (name, avatar, creator_id, group_type, version,"
                " created, updated) VALUES (?, ?, ?, ?, 1, ?, ?) RETURNING group_id",
                (name, avatar, creator_id, int(gtype), now, now),
            )
            assert row is not None
            group_id = row[0]
            conv = tx.one(
                "INSERT INTO conversations (conv_type, low_id, high_id, last_msg_id)"
                " VALUES (?, ?, 0, 0) RETURNING conv_id",
                (int(SessionType.GROUP), group_id),
            )
            assert conv is not None
            tx.many(
                "INSERT INTO group_members (group_id, user_id, shield, created, updated)"
                " VALUES (?, ?, 0, ?, ?)",
                [(group_id, u, now, now) for u in members],
            )
            self._touch_sessions(
                tx, int(SessionType.GROUP), conv[0], [(u, group_id) for u in members], now
            )
            return GroupInfo(
                group_id, 1, name, avatar, creator_id, gtype, 0, tuple(members), now, now
            )

        return self._write(work)

    def _lock_group(self, tx: Tx, group_id: int) -> int:
        """Lock the group's conversation row (the locking rule); its conv_id."""
        row = tx.one(
            "SELECT conv_id FROM conversations WHERE conv_type = ? AND low_id = ? AND high_id = 0"
            + self.FOR_UPDATE,
            (int(SessionType.GROUP), group_id),
        )
        if row is None:
            raise NotFoundError(f"no group {group_id}")
        return int(row[0])

    def add_group_members(self, group_id: int, user_ids: Sequence[int]) -> list[int]:
        now = self._clock()

        def work(tx: Tx) -> list[int]:
            conv_id = self._lock_group(tx, group_id)
            current = set(self._members(tx, group_id))
            new = sorted(self._existing_users(tx, set(user_ids) - current))
            if new:
                tx.many(
                    "INSERT INTO group_members (group_id, user_id, shield, created, updated)"
                    " VALUES (?, ?, 0, ?, ?)",
                    [(group_id, u, now, now) for u in new],
                )
                self._touch_sessions(
                    tx, int(SessionType.GROUP), conv_id, [(u, group_id) for u in new], now
                )
                self._bump_group(tx, group_id, now)
            return sorted(current.union(new))

        return self._write(work)

    def remove_group_members(self, group_id: int, user_ids: Sequence[int]) -> list[int]:
        now = self._clock()
        gst = int(SessionType.GROUP)

        def work(tx: Tx) -> list[int]:
            self._lock_group(tx, group_id)
            current = set(self._members(tx, group_id))
            gone = sorted(current.intersection(user_ids))
            if gone:
                for chunk in chunks(gone):
                    ids = placeholders(len(chunk))
                    tx.run(
                        f"DELETE FROM group_members WHERE group_id = ? AND user_id IN ({ids})",
                        (group_id, *chunk),
                    )
                    tx.run(
                        "DELETE FROM unread WHERE session_type = ? AND session_id = ?"
                        f" AND user_id IN ({ids})",
                        (gst, group_id, *chunk),
                    )
                    # Removed, not deleted: the user's other devices learn of it by sync.
                    tx.run(
                        "UPDATE sessions SET status = ?, updated = ?"
                        f" WHERE session_type = ? AND session_id = ? AND user_id IN ({ids})",
                        (int(SessionStatus.DELETED), now, gst, group_id, *chunk),
                    )
                self._bump_group(tx, group_id, now)
            return sorted(current.difference(gone))

        return self._write(work)

    @staticmethod
    def _bump_group(tx: Tx, group_id: int, now: int) -> None:
        tx.run(
            "UPDATE chat_groups SET version = version + 1, updated = ? WHERE group_id = ?",
            (now, group_id),
        )

    def group_members(self, group_id: int) -> list[int]:
        return self._read(lambda tx: self._members(tx, group_id))

    def groups_of_user(
        self, user_id: int, group_type: GroupType | None = None
    ) -> list[GroupVersion]:
        sql = (
            "SELECT g.group_id, g.version FROM group_members gm"
            " JOIN chat_groups g ON g.group_id = gm.group_id WHERE gm.user_id = ?"
        )
        params: tuple[int, ...] = (user_id,)
        if group_type is not None:
            sql += " AND g.group_type = ?"
            params += (int(group_type),)
        rows = self._read(lambda tx: tx.all(sql + " ORDER BY g.group_id", params))
        return [GroupVersion(gid, version) for gid, version in rows]

    def group_infos(self, group_ids: Sequence[int], user_id: int) -> list[GroupInfo]:
        def work(tx: Tx) -> list[GroupInfo]:
            infos: list[GroupInfo] = []
            for chunk in chunks(group_ids):
                ids = placeholders(len(chunk))
                groups = tx.all(
                    f"SELECT {GROUP_COLS} FROM chat_groups WHERE group_id IN ({ids})"
                    " ORDER BY group_id",
                    chunk,
                )
                members: dict[int, list[int]] = {}
                shield: dict[int, int] = {}
                for gid, uid, flag in tx.all(
                    "SELECT group_id, user_id, shield FROM group_members"
                    f" WHERE group_id IN ({ids}) ORDER BY group_id, user_id",
                    chunk,
                ):
                    members.setdefault(gid, []).append(uid)
                    if uid == user_id:
                        shield[gid] = flag
                for gid, version, name, avatar, creator, gtype, created, updated in groups:
                    infos.append(
                        GroupInfo(
                            gid,
                            version,
                            name,
                            avatar,
                            creator,
                            GroupType(gtype),
                            shield.get(gid, 0),
                            tuple(members.get(gid, ())),
                            created,
                            updated,
                        )
                    )
            return infos

        return self._read(work)

    def set_group_shield(self, group_id: int, user_id: int, shield_status: int) -> bool:
        now = self._clock()
        changed = self._write(
            lambda tx: tx.run(
                "UPDATE group_members SET shield = ?, updated = ?"
                " WHERE group_id = ? AND user_id = ?",
                (shield_status, now, group_id, user_id),
            )
        )
        return changed > 0

    def group_shield_statuses(self, group_id: int, user_ids: Sequence[int]) -> dict[int, int]:
        def work(tx: Tx) -> dict[int, int]:
            result: dict[int, int] = {}
            for chunk in chunks(user_ids):
                rows = tx.all(
                    "SELECT user_id, shield FROM group_members WHERE group_id = ?"
                    f" AND user_id IN ({placeholders(len(chunk))})",
                    (group_id, *chunk),
                )
                result.update((uid, flag) for uid, flag in rows)
            return result

        return self._read(work)
