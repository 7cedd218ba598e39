"""Messages: id allocation, batches, history, unread counts, read acks, recent sessions."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from imreactor.storage import (
    MAX_MSG_LIST,
    InsertResult,
    MsgType,
    NewMessage,
    SessionStatus,
    SessionType,
    Storage,
    StorageError,
)

from .helpers import FakeClock, add_users, raw_query

SINGLE = SessionType.SINGLE
GROUP = SessionType.GROUP
TEXT = MsgType.SINGLE_TEXT
GTEXT = MsgType.GROUP_TEXT


def text(sender: int, to: int, data: bytes = b"x", create_time: int = 0) -> NewMessage:
    return NewMessage(sender, to, TEXT, data, create_time)


def gtext(sender: int, group: int, data: bytes = b"x") -> NewMessage:
    return NewMessage(sender, group, GTEXT, data)


def test_ids_are_per_conversation_contiguous_from_one(store: Storage) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    ids = [store.insert_message(m).msg_id for m in (text(a, b), text(b, a), text(a, b))]
    assert ids == [1, 2, 3]  # one conversation, whichever side writes
    assert store.insert_message(text(a, c)).msg_id == 1  # another pair starts over
    assert store.insert_message(text(c, b)).msg_id == 1
    assert store.latest_msg_id(a, SINGLE, b) == 3
    assert store.latest_msg_id(b, SINGLE, a) == 3
    assert store.latest_msg_id(b, SINGLE, c) == 1


def test_batch_ids_times_and_order(store: Storage, clock: FakeClock) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    store.insert_message(text(a, c))
    results = store.insert_messages(
        [text(a, b), text(a, c), text(b, a, create_time=123), text(c, a, b"\x00\xff")]
    )
    assert results == [
        InsertResult(1, clock.now),
        InsertResult(2, clock.now),
        InsertResult(2, 123),
        InsertResult(3, clock.now),
    ]
    assert store.insert_messages([]) == []
    [m] = store.get_msgs_by_ids(a, SINGLE, b, [2])
    assert (m.from_user_id, m.create_time, m.msg_type) == (b, 123, TEXT)


def test_batch_refuses_bad_messages_and_stores_the_rest(store: Storage) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    group = store.create_group(a, "g", member_ids=[b]).group_id
    results = store.insert_messages(
        [
            text(a, a),  # to oneself
            text(a, 999_999),  # no such user
            NewMessage(a, b, 0x7F, b"?"),  # unknown type
            gtext(c, group),  # not a member
            gtext(a, 999_999),  # no such group
            text(a, b),
            gtext(b, group),
        ]
    )
    assert [r.ok for r in results] == [False] * 5 + [True, True]
    assert all(r.msg_id == 0 and r.error for r in results[:5])
    assert [r.msg_id for r in results[5:]] == [1, 1]
    assert store.latest_msg_id(a, GROUP, group) == 1
    assert store.recent_sessions(999_999, 0) == []


def _install_failing_trigger(url: str) -> None:
    """Make the database itself reject a message whose data is b'boom'."""
    if url.startswith("sqlite:"):
        raw_query(
            url,
            "CREATE TRIGGER boom BEFORE INSERT ON messages WHEN NEW.msg_data = X'626f6f6d'"
            " BEGIN SELECT RAISE(ABORT, 'boom'); END",
        )
        return
    raw_query(
        url,
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.msg_data = '\\x626f6f6d'::bytea THEN RAISE EXCEPTION 'boom'; END IF;"
        " RETURN NEW; END $$",
    )
    raw_query(
        url,
        "CREATE TRIGGER boom BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION boom()",
    )


def test_a_failing_batch_stores_nothing(store: Storage, storage_url: str) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    group = store.create_group(a, "g", member_ids=[b, c]).group_id
    store.insert_message(text(a, b))
    before = (store.unread_counts(b), store.recent_sessions(c, 0))
    _install_failing_trigger(storage_url)
    # The failing message comes last, after other conversations' rows were written.
    batch = [text(a, b), gtext(a, group), text(b, c), text(c, a, b"boom")]
    with pytest.raises(StorageError) as info:
        store.insert_messages(batch)
    assert isinstance(info.value.__cause__, (sqlite3.Error, psycopg.Error))
    assert (store.unread_counts(b), store.recent_sessions(c, 0)) == before
    assert store.latest_msg_id(a, SINGLE, b) == 1
    assert store.latest_msg_id(a, GROUP, group) == 0
    assert store.get_msg_list(b, SINGLE, c, 0, 10) == []
    # Counters were rolled back with the rest: the ids continue without a gap.
    assert [r.msg_id for r in store.insert_messages(batch[:3])] == [2, 1, 1]


def test_history_newest_first_from_begin(store: Storage) -> None:
    a, b = add_users(store, "a", "b")
    for i in range(1, 11):
        store.insert_message(text(a if i % 2 else b, b if i % 2 else a, b"m%d" % i))

    def ids(begin: int, count: int) -> list[int]:
        return [m.msg_id for m in store.get_msg_list(a, SINGLE, b, begin, count)]

    assert ids(0, 3) == [10, 9, 8]  # 0 = from the newest
    assert ids(5, 3) == [5, 4, 3]  # else ids <= begin
    assert ids(2, 10) == [2, 1]
    assert ids(100, 2) == [10, 9]
    assert ids(0, 0) == []
    assert ids(0, 100) == list(range(10, 0, -1))
    [m] = store.get_msg_list(b, SINGLE, a, 7, 1)  # the peer sees the same conversation
    assert (m.msg_id, m.from_user_id, m.msg_data) == (7, a, b"m7")
    assert store.get_msg_list(a, SINGLE, 999_999, 0, 10) == []


def test_history_is_capped(store: Storage) -> None:
    a, b = add_users(store, "a", "b")
    store.insert_messages([text(a, b)] * (MAX_MSG_LIST + 5))
    assert len(store.get_msg_list(a, SINGLE, b, 0, 10_000)) == MAX_MSG_LIST


def test_get_by_ids(store: Storage) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    store.insert_messages([text(a, b, b"%d" % i) for i in range(5)])
    got = store.get_msgs_by_ids(b, SINGLE, a, [4, 2, 99, 2])
    assert [(m.msg_id, m.msg_data) for m in got] == [(2, b"1"), (4, b"3")]
    assert store.get_msgs_by_ids(c, SINGLE, a, [1]) == []  # another conversation
    assert store.get_msgs_by_ids(a, SINGLE, b, []) == []


def test_binary_data_round_trips(store: Storage) -> None:
    a, b = add_users(store, "a", "b")
    data = bytes(range(256)) * 4
    store.insert_message(text(a, b, data))
    [m] = store.get_msg_list(b, SINGLE, a, 0, 1)
    assert m.msg_data == data and isinstance(m.msg_data, bytes)


def test_unread_counts_and_read_ack(store: Storage) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    store.insert_messages([text(a, b, b"1"), text(a, b, b"2"), text(b, a, b"3"), text(a, b, b"4")])
    store.insert_message(text(c, b, b"from c"))
    [from_a, from_c] = store.unread_counts(b)
    assert (from_a.session_id, from_a.session_type, from_a.unread_cnt) == (a, SINGLE, 3)
    assert (from_a.latest_msg_id, from_a.latest_msg_data, from_a.latest_msg_from_user_id) == (
        4,
        b"4",
        a,
    )
    assert (from_c.session_id, from_c.unread_cnt, from_c.latest_msg_data) == (c, 1, b"from c")
    [for_a] = store.unread_counts(a)  # b's one message; a's own do not count
    assert (for_a.session_id, for_a.unread_cnt) == (b, 1)

    store.read_ack(b, SINGLE, a, 2)  # read 1 and 2: left is 4 (3 is b's own)
    assert _unread(store, b) == {a: 1, c: 1}
    store.read_ack(b, SINGLE, a, 1)  # older than the last ack: no change
    assert _unread(store, b) == {a: 1, c: 1}
    store.read_ack(b, SINGLE, a, 4)
    assert _unread(store, b) == {c: 1}
    store.insert_message(text(a, b))
    assert _unread(store, b) == {a: 1, c: 1}
    store.read_ack(b, SINGLE, a, 1_000)  # beyond the newest: clamped
    store.insert_message(text(a, b))
    assert _unread(store, b) == {a: 1, c: 1}
    store.read_ack(b, SINGLE, a, 7)
    assert _unread(store, b) == {c: 1}
    store.read_ack(a, SINGLE, 999_999, 5)  # unknown session: nothing happens


def _unread(store: Storage, user: int) -> dict[int, int]:
    return {u.session_id: u.unread_cnt for u in store.unread_counts(user)}


def test_group_messages_count_unread_for_every_member_but_the_sender(store: Storage) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    group = store.create_group(a, "g", member_ids=[b, c]).group_id
    store.insert_messages([gtext(a, group), gtext(b, group), gtext(a, group)])
    counts = {u: _unread_group(store, u, group) for u in (a, b, c)}
    assert counts == {a: 1, b: 2, c: 3}
    [info] = store.unread_counts(c)
    assert (info.session_type, info.latest_msg_id, info.latest_msg_type) == (GROUP, 3, GTEXT)
    store.read_ack(c, GROUP, group, 3)
    assert store.unread_counts(c) == []


def _unread_group(store: Storage, user: int, group: int) -> int:
    for info in store.unread_counts(user):
        if info.session_type == GROUP and info.session_id == group:
            return info.unread_cnt
    return 0


def test_recent_sessions(store: Storage, clock: FakeClock) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    t1 = clock.advance()
    store.insert_message(text(a, b, b"ab"))
    t2 = clock.advance()
    store.insert_message(text(c, a, b"ca"))
    sessions = store.recent_sessions(a, 0)
    assert [(s.session_id, s.updated_time) for s in sessions] == [(c, t2), (b, t1)]
    first = sessions[0]
    assert (first.session_type, first.status, first.latest_msg_id) == (SINGLE, SessionStatus.OK, 1)
    assert (first.latest_msg_data, first.latest_msg_from_user_id) == (b"ca", c)
    assert [s.session_id for s in store.recent_sessions(a, t2)] == [c]
    assert [s.session_id for s in store.recent_sessions(b, 0)] == [a]
    assert len(store.recent_sessions(a, 0, limit=1)) == 1

    t3 = clock.advance()
    assert store.remove_session(a, SINGLE, c)
    assert not store.remove_session(a, SINGLE, 999_999)
    assert [s.session_id for s in store.recent_sessions(a, 0)] == [b]
    [removed] = store.recent_sessions(a, t3, include_removed=True)
    assert (removed.session_id, removed.status) == (c, SessionStatus.DELETED)
    assert [s.session_id for s in store.recent_sessions(c, 0)] == [a]  # c's side stays

    clock.advance()
    store.insert_message(text(c, a))  # a new message brings it back
    assert [s.session_id for s in store.recent_sessions(a, 0)] == [c, b]
