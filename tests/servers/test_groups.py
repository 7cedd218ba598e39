"""Groups on one msg_server, end to end (SQLite and PostgreSQL).

Temporary groups created by clients, member changes with notifications and
their rules, group messages only from members, delivered to every online
member once, ids contiguous per group, unread counts and history per group.
"""

from __future__ import annotations

import queue

import pytest

from imreactor.client import Client, ClientError
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_group_pb2 as group_pb
from imreactor.pdu.proto import im_message_pb2 as msg_pb

from .conftest import RunningSuite


def create_group(owner: Client, name: str, members: list[int]) -> int:
    rsp = owner.request(
        group_pb.IMGroupCreateReq(
            user_id=0,
            group_type=base.GROUP_TYPE_NORMAL,  # a client may ask; it gets a temporary group
            group_name=name,
            group_avatar="",
            member_id_list=members,
        ),
        group_pb.IMGroupCreateRsp,
    )
    assert rsp.result_code == 0
    return int(rsp.group_id)


def change(
    c: Client, group_id: int, kind: int, members: list[int]
) -> group_pb.IMGroupChangeMemberRsp:
    return c.request(
        group_pb.IMGroupChangeMemberReq(
            user_id=0,
            change_type=base.GroupModifyType.ValueType(kind),
            group_id=group_id,
            member_id_list=members,
        ),
        group_pb.IMGroupChangeMemberRsp,
    )


def nothing_more(receivers: list[Client], sender: Client) -> None:
    """Prove that no further IMMsgData is on its way to ``receivers``: a 1:1 marker sent
    after everything else must be the next message each of them gets (delivery on one
    connection keeps its order), and nothing else may be queued."""
    for c in receivers:
        by = sender if c is not sender else next(r for r in receivers if r is not sender)
        ack = by.send_text(c.user_id, "marker")
        got = c.wait_for(msg_pb.IMMsgData, 5)
        assert (got.from_user_id, got.msg_id, got.msg_data) == (by.user_id, ack.msg_id, b"marker")
        extra = [m for m, _ in list(c.pushes.queue) if isinstance(m, msg_pb.IMMsgData)]
        assert extra == []


def drain(c: Client) -> None:
    while True:
        try:
            c.pushes.get_nowait()
        except queue.Empty:
            return


@pytest.fixture
def people(suite: RunningSuite) -> dict[str, Client]:
    return {name: suite.login(name) for name in ("alice", "bob", "carol", "dave")}


def test_group_message_reaches_every_online_member_once(people: dict[str, Client]) -> None:
    alice, bob, carol, dave = (people[n] for n in ("alice", "bob", "carol", "dave"))
    gid = create_group(alice, "team", [bob.user_id, carol.user_id])
    note = bob.wait_for(group_pb.IMGroupChangeMemberNotify, 5)
    assert note.group_id == gid and alice.user_id in note.cur_user_id_list
    for c in people.values():
        drain(c)
    acks = [alice.send_message(gid, b"g%d" % i, base.MSG_TYPE_GROUP_TEXT) for i in range(3)]
    assert [a.msg_id for a in acks] == [1, 2, 3]
    assert acks[0].session_type == base.SESSION_TYPE_GROUP
    for member in (bob, carol):
        got = [member.wait_for(msg_pb.IMMsgData, 5) for _ in range(3)]
        assert [(m.msg_id, m.msg_data, m.to_session_id) for m in got] == [
            (1, b"g0", gid),
            (2, b"g1", gid),
            (3, b"g2", gid),
        ]
    # Nothing twice, nothing to the non-member, nothing back to the sender.
    nothing_more([bob, carol, dave, alice], alice)


def test_non_member_cannot_send_to_a_group(people: dict[str, Client]) -> None:
    alice, bob, dave = people["alice"], people["bob"], people["dave"]
    gid = create_group(alice, "private", [bob.user_id])
    with pytest.raises(ClientError):
        dave.request(
            msg_pb.IMMsgData(
                from_user_id=0,
                to_session_id=gid,
                msg_id=0,
                create_time=0,
                msg_type=base.MSG_TYPE_GROUP_TEXT,
                msg_data=b"let me in",
            ),
            msg_pb.IMMsgDataAck,
            timeout_s=1.0,
        )
    assert alice.send_message(gid, b"first", base.MSG_TYPE_GROUP_TEXT).msg_id == 1


def test_member_changes_follow_the_rules_and_are_notified(people: dict[str, Client]) -> None:
    alice, bob, carol, dave = (people[n] for n in ("alice", "bob", "carol", "dave"))
    gid = create_group(alice, "rules", [bob.user_id])
    # A member may add someone; the new member hears of it.
    rsp = change(bob, gid, base.GROUP_MODIFY_TYPE_ADD, [carol.user_id])
    assert rsp.result_code == 0
    assert sorted(rsp.cur_user_id_list) == sorted([alice.user_id, bob.user_id, carol.user_id])
    note = carol.wait_for(group_pb.IMGroupChangeMemberNotify, 5)
    assert note.chg_user_id_list == [carol.user_id]
    # A non-member may not change the group; a member who is not the creator may not
    # remove others.
    assert change(dave, gid, base.GROUP_MODIFY_TYPE_ADD, [dave.user_id]).result_code != 0
    assert change(bob, gid, base.GROUP_MODIFY_TYPE_DEL, [carol.user_id]).result_code != 0
    # The creator may; the removed member stops getting the group's messages.
    assert change(alice, gid, base.GROUP_MODIFY_TYPE_DEL, [carol.user_id]).result_code == 0
    drain(carol)
    drain(bob)
    alice.send_message(gid, b"after", base.MSG_TYPE_GROUP_TEXT)
    assert bob.wait_for(msg_pb.IMMsgData, 5).msg_data == b"after"
    nothing_more([carol], alice)


def test_group_unread_and_history(suite: RunningSuite, people: dict[str, Client]) -> None:
    alice, bob = people["alice"], people["bob"]
    gid = create_group(alice, "log", [bob.user_id])
    for i in range(4):
        alice.send_message(gid, b"h%d" % i, base.MSG_TYPE_GROUP_TEXT)
    unread = bob.unread()
    (info,) = [u for u in unread.unreadinfo_list if u.session_id == gid]
    assert (info.session_type, info.unread_cnt, info.latest_msg_id) == (
        base.SESSION_TYPE_GROUP,
        4,
        4,
    )
    history = bob.history(gid, begin=0, count=10, session_type=base.SESSION_TYPE_GROUP)
    assert [m.msg_data for m in history.msg_list] == [b"h3", b"h2", b"h1", b"h0"]
    groups = bob.request(group_pb.IMNormalGroupListReq(user_id=0), group_pb.IMNormalGroupListRsp)
    assert gid not in [g.group_id for g in groups.group_version_list]  # temporary, not normal
    info_rsp = bob.request(
        group_pb.IMGroupInfoListReq(
            user_id=0, group_version_list=[base.GroupVersionInfo(group_id=gid, version=0)]
        ),
        group_pb.IMGroupInfoListRsp,
    )
    (g,) = info_rsp.group_info_list
    assert g.group_type == base.GROUP_TYPE_TMP and g.group_creator_id == alice.user_id
