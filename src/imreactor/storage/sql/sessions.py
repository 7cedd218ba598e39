"""Unread counters and recent sessions: what a user has not read, and whom they talked to.

Both are per (user, session) rows next to a conversation; the message insert creates
and advances them (:mod:`.messages`), this module reads, acknowledges and removes them.
"""

from __future__ import annotations

from ..base import MAX_RECENT_SESSIONS
from ..records import ContactSession, MsgType, SessionStatus, SessionType, UnreadInfo
from .plumbing import Row, SqlBase, Tx

# Both lists show each session's newest message: the conversation's counter names it,
# and a LEFT JOIN keeps the session when that message is missing (a group not yet used).
LATEST_MSG_COLS = "c.last_msg_id, m.msg_data, m.msg_type, m.from_user_id"
LATEST_MSG_JOIN = (
    " JOIN conversations c ON c.conv_id = {alias}.conv_id"
    " LEFT JOIN messages m ON m.conv_id = c.conv_id AND m.msg_id = c.last_msg_id"
)


def _latest(session_type: SessionType, cols: Row) -> tuple[int, bytes, int, int]:
    """``(last_msg_id, data, msg_type, from_user_id)`` from LATEST_MSG_COLS; a missing
    message reads as empty text of the session's kind from user 0."""
    last, data, mtype, sender = cols
    if mtype is None:
        group = session_type == SessionType.GROUP
        mtype = int(MsgType.GROUP_TEXT if group else MsgType.SINGLE_TEXT)
    return (
        last,
        b"" if data is None else bytes(data),
        mtype,
        0 if sender is None else sender,
    )


class SessionQueries(SqlBase):
    """The unread and recent-session part of :class:`~imreactor.storage.base.Storage`."""

    def unread_counts(self, user_id: int) -> list[UnreadInfo]:
        rows = self._read(
            lambda tx: tx.all(
                f"SELECT u.session_id, u.session_type, u.unread_cnt, {LATEST_MSG_COLS}"
                " FROM unread u"
                + LATEST_MSG_JOIN.format(alias="u")
                + " WHERE u.user_id = ? AND u.unread_cnt > 0"
                " ORDER BY u.session_type, u.session_id",
                (user_id,),
            )
        )
        result = []
        for sid, st, cnt, *latest in rows:
            st = SessionType(st)
            result.append(UnreadInfo(sid, st, cnt, *_latest(st, tuple(latest))))
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
                f"SELECT s.session_id, s.session_type, s.status, s.updated, {LATEST_MSG_COLS}"
                " FROM sessions s"
                + LATEST_MSG_JOIN.format(alias="s")
                + " WHERE s.user_id = ? AND s.updated >= ?"
                + status_filter
                + " ORDER BY s.updated DESC, s.session_type, s.session_id LIMIT ?",
                (user_id, since, limit),
            )
        )
        result = []
        for sid, st, status, updated, *latest in rows:
            st = SessionType(st)
            result.append(
                ContactSession(sid, st, SessionStatus(status), updated, *_latest(st, tuple(latest)))
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
