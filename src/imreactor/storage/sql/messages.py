"""Messages: the batched insert with its per-conversation id counter, and the history reads.

An insert locks (or creates) the conversation row first, takes the next ids from its
``last_msg_id`` counter, writes the messages, adds one unread per other participant and
touches everyone's recent-session row, all in one transaction: ids are dense and ordered
per conversation, and a reader never sees a message without its unread count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..base import MAX_MSG_LIST
from ..records import InsertResult, Message, MsgType, NewMessage, SessionType
from .plumbing import ConvKey, Row, SqlBase, Tx, conv_key, placeholders

MSG_COLS = "msg_id, from_user_id, create_time, msg_type, msg_data"


def _message(row: Row) -> Message:
    return Message(row[0], row[1], row[2], row[3], bytes(row[4]))


class MessageQueries(SqlBase):
    """The message part of :class:`~imreactor.storage.base.Storage`."""

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
