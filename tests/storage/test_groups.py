"""Groups: creation, members and versions, shield flags, membership checks."""

from __future__ import annotations

import pytest

from imreactor.storage import (
    GroupType,
    GroupVersion,
    MsgType,
    NewMessage,
    NotFoundError,
    SessionStatus,
    SessionType,
    Storage,
)

from .helpers import FakeClock, add_users

GROUP = SessionType.GROUP


def test_create_group(store: Storage, clock: FakeClock) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    info = store.create_group(
        b, "team", group_type=GroupType.NORMAL, avatar="g.png", member_ids=[c, a, 999_999, c]
    )
    assert info.version == 1
    assert info.members == (a, b, c)  # creator included, unknown user dropped, sorted
    assert (info.name, info.avatar, info.creator_id, info.group_type) == (
        "team",
        "g.png",
        b,
        GroupType.NORMAL,
    )
    assert store.group_infos([info.group_id], a) == [info]
    assert store.group_members(info.group_id) == [a, b, c]
    # Every member learns of the group from its recent sessions.
    [session] = store.recent_sessions(c, 0)
    assert (session.session_id, session.session_type, session.latest_msg_id) == (
        info.group_id,
        GROUP,
        0,
    )
    assert session.latest_msg_type == MsgType.GROUP_TEXT
    with pytest.raises(NotFoundError):
        store.create_group(999_999, "ghost")


def test_groups_of_user_by_type(store: Storage) -> None:
    a, b = add_users(store, "a", "b")
    normal = store.create_group(a, "n", group_type=GroupType.NORMAL, member_ids=[b]).group_id
    tmp = store.create_group(a, "t", group_type=GroupType.TMP).group_id
    assert store.groups_of_user(a) == [GroupVersion(normal, 1), GroupVersion(tmp, 1)]
    assert store.groups_of_user(a, GroupType.NORMAL) == [GroupVersion(normal, 1)]
    assert store.groups_of_user(b) == [GroupVersion(normal, 1)]
    assert store.groups_of_user(999_999) == []


def test_member_changes_bump_the_version(store: Storage) -> None:
    a, b, c, d = add_users(store, "a", "b", "c", "d")
    gid = store.create_group(a, "g").group_id
    assert store.add_group_members(gid, [b, c, 999_999]) == [a, b, c]
    assert store.groups_of_user(a) == [GroupVersion(gid, 2)]
    assert store.add_group_members(gid, [b]) == [a, b, c]  # nothing new: same version
    assert store.groups_of_user(a) == [GroupVersion(gid, 2)]
    assert store.remove_group_members(gid, [c, d]) == [a, b]
    assert store.remove_group_members(gid, [d]) == [a, b]
    [info] = store.group_infos([gid], a)
    assert (info.version, info.members) == (3, (a, b))
    assert store.groups_of_user(c) == []
    with pytest.raises(NotFoundError):
        store.add_group_members(999_999, [a])
    with pytest.raises(NotFoundError):
        store.remove_group_members(999_999, [a])
    assert store.group_members(999_999) == []
    assert store.group_infos([999_999], a) == []


def test_removed_member_loses_unread_and_session(store: Storage) -> None:
    a, b = add_users(store, "a", "b")
    gid = store.create_group(a, "g", member_ids=[b]).group_id
    store.insert_message(NewMessage(a, gid, MsgType.GROUP_TEXT, b"hi"))
    assert [u.unread_cnt for u in store.unread_counts(b)] == [1]
    store.remove_group_members(gid, [b])
    assert store.unread_counts(b) == []
    assert store.recent_sessions(b, 0) == []
    [gone] = store.recent_sessions(b, 0, include_removed=True)
    assert gone.status == SessionStatus.DELETED
    # No longer a member: cannot post or read.
    [refused] = store.insert_messages([NewMessage(b, gid, MsgType.GROUP_TEXT, b"?")])
    assert not refused.ok
    assert store.get_msg_list(b, GROUP, gid, 0, 10) == []
    assert store.get_msgs_by_ids(b, GROUP, gid, [1]) == []
    assert store.latest_msg_id(b, GROUP, gid) == 0
    assert store.latest_msg_id(a, GROUP, gid) == 1


def test_new_member_reads_history_and_gets_a_session(store: Storage) -> None:
    a, b = add_users(store, "a", "b")
    gid = store.create_group(a, "g").group_id
    store.insert_message(NewMessage(a, gid, MsgType.GROUP_AUDIO, b"old"))
    store.add_group_members(gid, [b])
    [m] = store.get_msg_list(b, GROUP, gid, 0, 10)
    assert (m.msg_data, m.msg_type) == (b"old", MsgType.GROUP_AUDIO)
    [s] = store.recent_sessions(b, 0)
    assert (s.session_id, s.latest_msg_id, s.latest_msg_data) == (gid, 1, b"old")
    assert store.insert_message(NewMessage(b, gid, MsgType.GROUP_TEXT, b"new")).msg_id == 2


def test_shield_flags(store: Storage) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    gid = store.create_group(a, "g", member_ids=[b]).group_id
    assert store.set_group_shield(gid, b, 1)
    assert not store.set_group_shield(gid, c, 1)  # not a member
    assert store.group_shield_statuses(gid, [a, b, c]) == {a: 0, b: 1}
    assert store.group_infos([gid], b)[0].shield_status == 1
    assert store.group_infos([gid], a)[0].shield_status == 0
    assert store.group_infos([gid], a)[0].version == 1  # a user's flag is not a group change
    assert store.set_group_shield(gid, b, 0)
    assert store.group_shield_statuses(gid, [b]) == {b: 0}


def test_list_groups_is_every_group_with_its_members(store: Storage) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    assert store.list_groups() == []
    store.create_group(a, "one", member_ids=[b])
    store.create_group(c, "two", group_type=GroupType.NORMAL)
    one, two = store.list_groups()
    assert (one.name, one.members, one.creator_id) == ("one", (a, b), a)
    assert (two.name, two.members, two.group_type) == ("two", (c,), GroupType.NORMAL)


def test_deleted_users_leave_their_groups_and_sessions_not_the_history(store: Storage) -> None:
    a, b, c = add_users(store, "a", "b", "c")
    gid = store.create_group(a, "g", member_ids=[b, c]).group_id
    store.insert_message(NewMessage(b, gid, MsgType.GROUP_TEXT, b"from b"))
    store.insert_message(NewMessage(b, a, MsgType.SINGLE_TEXT, b"to a"))
    version = store.group_infos([gid], a)[0].version
    assert store.delete_users([b, 999]) == [b]
    assert store.delete_users([b]) == []  # already gone
    assert [u.user_id for u in store.get_users([a, b, c])] == [a, c]
    assert store.user_by_name("b") is None
    [info] = store.group_infos([gid], a)
    assert info.members == (a, c) and info.version == version + 1
    assert store.groups_of_user(b) == []
    assert store.unread_counts(b) == [] and store.recent_sessions(b, 0) == []
    # The others keep what b said.
    assert [m.msg_data for m in store.get_msg_list(c, GROUP, gid, 0, 10)] == [b"from b"]
    assert [m.msg_data for m in store.get_msg_list(a, SessionType.SINGLE, b, 0, 10)] == [b"to a"]
    # A new account of the same name is a new user.
    (again,) = add_users(store, "b")
    assert again > c


def test_users_of_origin(store: Storage) -> None:
    (a,) = add_users(store, "a")
    load = [store.add_user(f"load{i}", "0" * 32, origin="load").user_id for i in range(3)]
    assert [u.user_id for u in store.users_of_origin("load")] == load
    assert [u.user_id for u in store.users_of_origin("")] == [a]
    assert store.users_of_origin("other") == []
