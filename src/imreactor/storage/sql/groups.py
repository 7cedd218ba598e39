"""Groups: creation, membership, the version clients cache by, the per-member shield flag.

Every change of membership locks the group's conversation row first (the locking rule
in :mod:`imreactor.storage.sql`) and bumps the group's ``version``, which is how a
client learns that its cached member list is stale.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import NotFoundError
from ..records import GroupInfo, GroupType, GroupVersion, SessionStatus, SessionType
from .plumbing import SqlBase, Tx, chunks, placeholders

GROUP_COLS = "group_id, version, name, avatar, creator_id, group_type, created, updated"


class GroupQueries(SqlBase):
    """The group part of :class:`~imreactor.storage.base.Storage`."""

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

    def list_groups(self) -> list[GroupInfo]:
        rows = self._read(lambda tx: tx.all("SELECT group_id FROM chat_groups ORDER BY group_id"))
        return self.group_infos([r[0] for r in rows], 0)

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
