"""Users and departments: accounts, login checks, profile fields, the incremental lists.

``updated`` is the column the incremental lists (``users_updated_since``,
``departments_updated_since``) read, so it moves only when a field a client shows
changes: a new password or the disabled flag leave it alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConflictError
from ..records import Department, DepartmentStatus, LoginRecord, User
from .plumbing import Row, SqlBase, Tx, chunks, placeholders

USER_COLS = (
    "user_id, name, nick, real_name, gender, avatar_url, department_id, email, phone, domain, "
    "status, sign_info, created, updated"
)
DEPT_COLS = "dept_id, name, priority, parent_id, status, created, updated"


def _user(row: Row) -> User:
    return User(*row)


def _dept(row: Row) -> Department:
    dept_id, name, priority, parent_id, status, created, updated = row
    return Department(
        dept_id, name, priority, parent_id, DepartmentStatus(status), created, updated
    )


class UserQueries(SqlBase):
    """The users and departments part of :class:`~imreactor.storage.base.Storage`."""

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
        origin: str = "",
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
                " department_id, email, phone, domain, status, sign_info, created, updated,"
                f" origin) VALUES ({placeholders(15)}) RETURNING {USER_COLS}",
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
                    origin,
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

    def users_of_origin(self, origin: str) -> list[User]:
        rows = self._read(
            lambda tx: tx.all(
                f"SELECT {USER_COLS} FROM users WHERE origin = ? ORDER BY user_id", (origin,)
            )
        )
        return [_user(r) for r in rows]

    def delete_users(self, user_ids: Sequence[int]) -> list[int]:
        now = self._clock()

        def work(tx: Tx) -> list[int]:
            gone = sorted(self._existing_users(tx, user_ids))
            groups: set[int] = set()
            for chunk in chunks(gone):
                rows = tx.all(
                    "SELECT DISTINCT group_id FROM group_members"
                    f" WHERE user_id IN ({placeholders(len(chunk))})",
                    chunk,
                )
                groups.update(r[0] for r in rows)
            # The locking rule: every group conversation changed, in ascending order.
            for group_id in sorted(groups):
                self._lock_group(tx, group_id)
                self._bump_group(tx, group_id, now)  # members' caches are stale now
            for chunk in chunks(gone):
                ids = placeholders(len(chunk))
                for table in ("group_members", "unread", "sessions", "users"):
                    tx.run(f"DELETE FROM {table} WHERE user_id IN ({ids})", chunk)
            # What the others keep: messages from the deleted (their history), and
            # their recent session with them, as with any user they cannot reach.
            return gone

        return self._write(work)

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
