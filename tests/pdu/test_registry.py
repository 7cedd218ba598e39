"""The (service id, command id) -> message class registry."""

from __future__ import annotations

from typing import Any

import pytest

from imreactor.pdu import registry
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_buddy_pb2, im_login_pb2, im_other_pb2, im_server_pb2
from imreactor.pdu.registry import (
    BuddyListCmdID,
    FileCmdID,
    GroupCmdID,
    LoginCmdID,
    MessageCmdID,
    OtherCmdID,
    ServiceID,
    SwitchServiceCmdID,
)

COMMAND_ENUMS: list[tuple[int, Any]] = [
    (ServiceID.SID_LOGIN, LoginCmdID),
    (ServiceID.SID_BUDDY_LIST, BuddyListCmdID),
    (ServiceID.SID_MSG, MessageCmdID),
    (ServiceID.SID_GROUP, GroupCmdID),
    (ServiceID.SID_FILE, FileCmdID),
    (ServiceID.SID_SWITCH_SERVICE, SwitchServiceCmdID),
    (ServiceID.SID_OTHER, OtherCmdID),
]

# Commands of the enums that have no message class. The schema has one for every command.
COMMANDS_WITHOUT_MESSAGE: frozenset[tuple[int, int]] = frozenset()


def test_every_command_of_every_enum_has_a_message_class() -> None:
    listed = {
        (service_id, command_id)
        for service_id, enum in COMMAND_ENUMS
        for command_id in enum.values()
    }
    assert len(listed) == 96  # TeamTalk's 95 and our CID_OTHER_MSG_SERV_STATS
    assert set(registry.COMMANDS) == listed - COMMANDS_WITHOUT_MESSAGE
    assert registry.command_ids() == {command_id for _, command_id in listed}


def test_the_command_enums_are_all_known() -> None:
    names = {e.name for e in base.DESCRIPTOR.enum_types_by_name.values()}
    assert {n for n in names if n.endswith("CmdID")} == {
        e.DESCRIPTOR.name for _, e in COMMAND_ENUMS
    }


def test_high_byte_of_a_command_is_its_service() -> None:
    for service_id, command_id in registry.COMMANDS:
        assert command_id >> 8 == service_id


def test_internal_service_has_no_commands() -> None:
    services = {service_id for service_id, _ in registry.COMMANDS}
    assert services == set(ServiceID.values()) - {ServiceID.SID_INTERNAL}


def test_registry_is_a_bijection() -> None:
    classes = list(registry.COMMANDS.values())
    assert len(set(classes)) == len(classes)
    for ids, cls in registry.COMMANDS.items():
        assert registry.ids_of(cls) == ids
        assert registry.ids_of(cls()) == ids
        assert registry.message_class(*ids) is cls
        assert registry.message_class_for_command(ids[1]) is cls


def test_lookups() -> None:
    assert registry.message_class(1, 0x0103) is im_login_pb2.IMLoginReq
    assert registry.message_class(7, 0x0701) is im_other_pb2.IMHeartBeat
    assert registry.message_class(ServiceID.SID_OTHER, OtherCmdID.CID_OTHER_MSG_SERV_INFO) is (
        im_server_pb2.IMMsgServInfo
    )


def test_unknown_pairs_give_none() -> None:
    assert registry.message_class(7, 0x070C) is None  # unassigned
    assert registry.message_class(8, 0x0801) is None
    assert registry.message_class(0, 0) is None
    # A known command under another service: no match for the pair, a match for the command.
    assert registry.message_class(1, 0x0701) is None
    assert registry.message_class_for_command(0x0701) is im_other_pb2.IMHeartBeat
    assert registry.message_class_for_command(0xFFFF) is None


def test_corrected_command_ids() -> None:
    assert registry.ids_of(im_buddy_pb2.IMAvatarChangedNotify) == (2, 0x0212)
    file_messages = [
        im_server_pb2.IMFileTransferReq,
        im_server_pb2.IMFileTransferRsp,
        im_server_pb2.IMFileServerIPReq,
        im_server_pb2.IMFileServerIPRsp,
    ]
    assert [registry.ids_of(m) for m in file_messages] == [
        (7, 0x0731),
        (7, 0x0732),
        (7, 0x0733),
        (7, 0x0734),
    ]


def test_ids_of_a_building_block_raises() -> None:
    with pytest.raises(KeyError, match=r"IM\.BaseDefine\.UserInfo"):
        registry.ids_of(base.UserInfo)
    with pytest.raises(KeyError):
        registry.ids_of(base.IpAddr(ip="1.2.3.4", port=1))


def test_commands_table_is_read_only() -> None:
    table: Any = registry.COMMANDS
    with pytest.raises(TypeError):
        table[(9, 0x0901)] = im_other_pb2.IMHeartBeat


def test_names_and_services() -> None:
    assert registry.command_name(0x0701) == "CID_OTHER_HEARTBEAT"
    assert registry.command_name(0x0212) == "CID_BUDDY_LIST_AVATAR_CHANGED_NOTIFY"
    assert registry.command_name(0x070C) == "0x070c"
    assert registry.service_of(0x0305) == ServiceID.SID_MSG
    assert registry.service_of(0x070C) is None
    assert ServiceID.Name(ServiceID.SID_SWITCH_SERVICE) == "SID_SWITCH_SERVICE"


def test_reexported_ids_are_plain_ints() -> None:
    values = [
        ServiceID.SID_LOGIN,
        LoginCmdID.CID_LOGIN_REQ_USERLOGIN,
        OtherCmdID.CID_OTHER_HEARTBEAT,
    ]
    assert all(type(v) is int for v in values)
    assert values == [1, 0x0103, 0x0701]
