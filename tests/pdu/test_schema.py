"""The generated TeamTalk schema: wire bytes, required fields, unknown fields, and WIRE.md's facts.

The golden byte strings are written out from the protobuf encoding rules (tag = field number << 3
| wire type; varints little-endian base 128; proto2 repeated scalars unpacked, one tag per
element), not produced by the library under test.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import EncodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from imreactor.pdu import registry
from imreactor.pdu.proto import (
    im_base_define_pb2 as base,
)
from imreactor.pdu.proto import (
    im_buddy_pb2,
    im_file_pb2,
    im_group_pb2,
    im_login_pb2,
    im_message_pb2,
    im_other_pb2,
    im_server_pb2,
    im_switch_service_pb2,
)

ROOT = Path(__file__).resolve().parents[2]

MODULES: dict[str, ModuleType] = {
    "IM.BaseDefine": base,
    "IM.Login": im_login_pb2,
    "IM.Buddy": im_buddy_pb2,
    "IM.Message": im_message_pb2,
    "IM.Group": im_group_pb2,
    "IM.SwitchService": im_switch_service_pb2,
    "IM.Other": im_other_pb2,
    "IM.Server": im_server_pb2,
    "IM.File": im_file_pb2,
}


def initialization_errors(message: Message) -> list[str]:
    """Return the paths of unset required fields (a run-time method the type stubs lack)."""
    untyped: Any = message
    return list(untyped.FindInitializationErrors())


def unknown_fields(message: Message) -> list[tuple[int, int, Any]]:
    """Return ``(field number, wire type, data)`` of each unknown field, in wire order."""
    unknown = UnknownFieldSet(message)
    fields = (unknown[i] for i in range(len(unknown)))
    return [(f.field_number, f.wire_type, f.data) for f in fields]


# --------------------------------------------------------------------------------------------
# Golden bytes: a few messages of every package.

GOLDEN: list[tuple[str, Message, tuple[int, int], str]] = [
    (
        "IMLoginReq",
        im_login_pb2.IMLoginReq(
            user_name="alice",
            password="pw",
            online_status=base.USER_STATUS_ONLINE,
            client_type=base.CLIENT_TYPE_ANDROID,
            client_version="1.0",
        ),
        (1, 0x0103),
        "0a05616c696365 12027077 1801 2012 2a03312e30",
    ),
    (
        # A required enum explicitly set to 0 is still sent (proto2 has presence).
        "IMMsgServRsp",
        im_login_pb2.IMMsgServRsp(
            result_code=base.REFUSE_REASON_NONE, prior_ip="10.0.0.1", port=8000
        ),
        (1, 0x0102),
        "0800 120831302e302e302e31 20c03e",
    ),
    (
        "IMKickUser",
        im_login_pb2.IMKickUser(user_id=1, kick_reason=base.KICK_REASON_DUPLICATE_USER),
        (1, 0x0107),
        "0801 1001",
    ),
    (
        # Repeated uint32 is unpacked: one tag per element. attach_data is field 20: tag a2 01.
        "IMUsersInfoReq",
        im_buddy_pb2.IMUsersInfoReq(user_id=7, user_id_list=[1, 300], attach_data=b"\x01"),
        (2, 0x0204),
        "0807 1001 10ac02 a2010101",
    ),
    (
        "IMUserStatNotify",
        im_buddy_pb2.IMUserStatNotify(
            user_stat=base.UserStat(user_id=5, status=base.USER_STATUS_OFFLINE)
        ),
        (2, 0x0203),
        "0a04 0805 1002",
    ),
    (
        "IMAvatarChangedNotify",
        im_buddy_pb2.IMAvatarChangedNotify(changed_user_id=3, avatar_url="u"),
        (2, 0x0212),
        "0803 120175",
    ),
    (
        # An optional bytes field set to b"" is present and sent with length 0.
        "IMMsgData",
        im_message_pb2.IMMsgData(
            from_user_id=1,
            to_session_id=2,
            msg_id=3,
            create_time=1700000000,
            msg_type=base.MSG_TYPE_SINGLE_TEXT,
            msg_data=b"hi",
            attach_data=b"",
        ),
        (3, 0x0301),
        "0801 1002 1803 2080e2cfaa06 2801 32026869 a20100",
    ),
    (
        "IMMsgDataAck",
        im_message_pb2.IMMsgDataAck(
            user_id=2, session_id=1, msg_id=3, session_type=base.SESSION_TYPE_SINGLE
        ),
        (3, 0x0302),
        "0802 1001 1803 2001",
    ),
    (
        "IMClientTimeRsp",
        im_message_pb2.IMClientTimeRsp(server_time=1700000000),
        (3, 0x0306),
        "0880e2cfaa06",
    ),
    (
        "IMGroupCreateReq",
        im_group_pb2.IMGroupCreateReq(
            user_id=1,
            group_type=base.GROUP_TYPE_TMP,
            group_name="g",
            group_avatar="",
            member_id_list=[1, 2],
        ),
        (4, 0x0405),
        "0801 1002 1a0167 2200 2801 2802",
    ),
    (
        "IMGroupChangeMemberNotify",
        im_group_pb2.IMGroupChangeMemberNotify(
            user_id=1,
            change_type=base.GROUP_MODIFY_TYPE_DEL,
            group_id=9,
            cur_user_id_list=[1],
            chg_user_id_list=[2],
        ),
        (4, 0x040B),
        "0801 1002 1809 2001 2802",
    ),
    (
        "IMFileLoginReq",
        im_file_pb2.IMFileLoginReq(user_id=1, task_id="t", file_role=base.CLIENT_OFFLINE_UPLOAD),
        (5, 0x0501),
        "0801 120174 1803",
    ),
    (
        "IMFilePullDataRsp",
        im_file_pb2.IMFilePullDataRsp(
            result_code=0, task_id="t", user_id=1, offset=0, file_data=b"\x00\xff"
        ),
        (5, 0x0505),
        "0800 120174 1801 2000 2a0200ff",
    ),
    (
        "IMP2PCmdMsg",
        im_switch_service_pb2.IMP2PCmdMsg(from_user_id=1, to_user_id=2, cmd_msg_data="{}"),
        (6, 0x0601),
        "0801 1002 1a027b7d",
    ),
    ("IMHeartBeat", im_other_pb2.IMHeartBeat(), (7, 0x0701), ""),
    (
        "IMMsgServInfo",
        im_server_pb2.IMMsgServInfo(
            ip1="1.2.3.4",
            ip2="5.6.7.8",
            port=8000,
            max_conn_cnt=10000,
            cur_conn_cnt=0,
            host_name="h",
        ),
        (7, 0x0709),
        "0a07312e322e332e34 1207352e362e372e38 18c03e 20904e 2800 320168",
    ),
    (
        "IMUserCntUpdate",
        im_server_pb2.IMUserCntUpdate(user_action=1, user_id=42),
        (7, 0x070B),
        "0801 102a",
    ),
    (
        "IMValidateReq",
        im_server_pb2.IMValidateReq(
            user_name="alice", password="pw", attach_data=b"\x00\x00\x00\x01"
        ),
        (7, 0x0703),
        "0a05616c696365 12027077 a2010400000001",
    ),
    (
        "IMFileServerIPRsp",
        im_server_pb2.IMFileServerIPRsp(ip_addr_list=[base.IpAddr(ip="1.2.3.4", port=8600)]),
        (7, 0x0734),
        "0a0c 0a07312e322e332e34 109843",
    ),
]


@pytest.mark.parametrize(
    ("message", "ids", "wire_hex"),
    [pytest.param(m, ids, h, id=name) for name, m, ids, h in GOLDEN],
)
def test_golden_bytes(message: Message, ids: tuple[int, int], wire_hex: str) -> None:
    wire = bytes.fromhex(wire_hex.replace(" ", ""))
    assert message.IsInitialized()
    assert message.SerializeToString() == wire
    parsed = type(message).FromString(wire)
    assert parsed == message
    assert parsed.IsInitialized()
    assert registry.ids_of(message) == ids


def test_golden_bytes_cover_every_package() -> None:
    packages = {m.DESCRIPTOR.file.package for _, m, _, _ in GOLDEN}
    assert packages == set(MODULES) - {"IM.BaseDefine"}


def test_heartbeat_pdu_matches_wire_md() -> None:
    service_id, command_id = registry.ids_of(im_other_pb2.IMHeartBeat)
    body = im_other_pb2.IMHeartBeat().SerializeToString()
    pdu = struct.pack(">IHHHHHH", 16 + len(body), 1, 0, service_id, command_id, 0, 0) + body
    assert pdu == bytes.fromhex("00000010 0001 0000 0007 0701 0000 0000".replace(" ", ""))


# --------------------------------------------------------------------------------------------
# Required fields: parsing accepts a message with missing required fields; IsInitialized() is
# the check a server makes before acting on a request.


def test_missing_required_fields_are_reported() -> None:
    request = im_login_pb2.IMLoginReq(user_name="alice")
    assert not request.IsInitialized()
    assert initialization_errors(request) == ["password", "online_status", "client_type"]
    with pytest.raises(EncodeError):
        request.SerializeToString()
    partial = request.SerializePartialToString()
    assert partial == bytes.fromhex("0a05616c696365")
    parsed = im_login_pb2.IMLoginReq.FromString(partial)
    assert parsed.user_name == "alice"
    assert not parsed.IsInitialized()


def test_missing_required_field_of_a_nested_message() -> None:
    response = im_login_pb2.IMLoginRes(
        server_time=1, result_code=base.REFUSE_REASON_NONE, user_info=base.UserInfo(user_id=1)
    )
    assert not response.IsInitialized()
    assert "user_info.user_gender" in initialization_errors(response)


def test_empty_body_leaves_every_required_field_unset() -> None:
    ack = im_message_pb2.IMMsgDataAck.FromString(b"")
    assert not ack.IsInitialized()
    assert im_other_pb2.IMHeartBeat.FromString(b"").IsInitialized()


def test_group_type_defaults_to_tmp_but_is_still_required() -> None:
    request = im_group_pb2.IMGroupCreateReq(user_id=1, group_name="g", group_avatar="")
    assert request.group_type == base.GROUP_TYPE_TMP
    assert not request.HasField("group_type")
    assert initialization_errors(request) == ["group_type"]


# --------------------------------------------------------------------------------------------
# Unknown fields survive a relay through SerializePartialToString.


def test_unknown_fields_round_trip() -> None:
    # IMMsgDataAck followed by field 99 (varint 5) and field 100 (bytes "xy").
    known = bytes.fromhex("0802100118032001")
    unknown = bytes.fromhex("980605 a2060278 79".replace(" ", ""))
    relayed = im_message_pb2.IMMsgDataAck.FromString(known + unknown)
    assert relayed.IsInitialized()
    fields = unknown_fields(relayed)
    assert fields == [(99, 0, 5), (100, 2, b"xy")]
    assert relayed.SerializePartialToString() == known + unknown


def test_unknown_fields_of_a_partial_message_round_trip() -> None:
    wire = bytes.fromhex("0801 c0060a".replace(" ", ""))  # user_id=1, field 104 = 10
    partial = im_message_pb2.IMMsgDataAck.FromString(wire)
    assert not partial.IsInitialized()
    assert partial.SerializePartialToString() == wire


def test_unknown_enum_value_is_kept_as_an_unknown_field() -> None:
    # proto2 enums are closed: client_type 0x20 is no ClientType, so the field stays unset
    # (the request is not initialized) and the value is kept, after the known fields.
    wire = bytes.fromhex("0a0161 12027077 1801 2020".replace(" ", ""))
    request = im_login_pb2.IMLoginReq.FromString(wire)
    assert not request.HasField("client_type")
    assert initialization_errors(request) == ["client_type"]
    assert unknown_fields(request) == [(4, 0, 0x20)]
    assert request.SerializePartialToString() == wire


# --------------------------------------------------------------------------------------------
# Structure of the generated modules.


@pytest.mark.parametrize("package", list(MODULES))
def test_files_are_proto2_in_their_package(package: str) -> None:
    module = MODULES[package]
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    assert proto.package == package
    assert proto.syntax in ("", "proto2")
    assert not proto.HasField("edition")


@pytest.mark.parametrize("package", list(MODULES))
def test_classes_live_in_the_package(package: str) -> None:
    module = MODULES[package]
    assert module.__name__.startswith("imreactor.pdu.proto.")
    for name in module.DESCRIPTOR.message_types_by_name:
        assert getattr(module, name).__module__ == module.__name__


@pytest.mark.parametrize("package", list(MODULES))
def test_exactly_the_pdu_messages_declare_a_command(package: str) -> None:
    module = MODULES[package]
    for descriptor in module.DESCRIPTOR.message_types_by_name.values():
        declares = descriptor.GetOptions().HasExtension(base.command_id)
        assert declares == (package != "IM.BaseDefine"), descriptor.full_name


def test_generated_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# WIRE.md's facts, parsed from its section 2, against the generated descriptors.

WIRE_MD = Path(os.environ.get("IMREACTOR_WIRE_MD", ROOT.parent / "shared" / "protocol" / "WIRE.md"))
_LABELS = {"req": "required", "opt": "optional", "rep": "repeated"}
_SCALARS = {
    "uint32": FieldDescriptor.TYPE_UINT32,
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
}
_PACKAGE_RE = re.compile(r"^## (IM\.\w+) \(package `(IM\.\w+)`\)$")
_ENUM_RE = re.compile(r"^- enum \*\*(\w+)\*\*: (\w+=\w+(?:, \w+=\w+)*)$")
_MESSAGE_RE = re.compile(r"^- message \*\*(\w+)\*\*(?: — cmd (0x[0-9a-fA-F]{4}))?: (.*)$")
_FIELD_RE = re.compile(r"^(\d+) (req|opt|rep) (\w+) (\w+)(?: default (\w+))?$")


@dataclass(frozen=True)
class WireField:
    number: int
    label: str
    type: str
    name: str
    default: str | None


@dataclass
class WireMessage:
    package: str
    name: str
    command_id: int | None
    fields: list[WireField]


@dataclass
class WireFacts:
    enums: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    messages: dict[str, WireMessage] = field(default_factory=dict)  # by full name


def parse_wire_md(text: str) -> WireFacts:
    """Parse section 2; any bullet line of a package section that does not parse is an error."""
    facts = WireFacts()
    package: str | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            match = _PACKAGE_RE.match(line)
            package = match.group(2) if match else None
            if match:
                assert match.group(1) == match.group(2), line
            continue
        if package is None or not line.startswith("- "):
            continue
        if enum := _ENUM_RE.match(line):
            assert package == "IM.BaseDefine", line
            values = [item.split("=") for item in enum.group(2).split(", ")]
            facts.enums[enum.group(1)] = [(n, int(v, 0)) for n, v in values]
        elif message := _MESSAGE_RE.match(line):
            name, command, body = message.groups()
            fields = []
            if body != "(no fields)":
                for text_field in body.split("; "):
                    parsed = _FIELD_RE.match(text_field)
                    assert parsed, f"cannot parse field {text_field!r} of {name}"
                    number, label, type_, field_name, default = parsed.groups()
                    fields.append(WireField(int(number), label, type_, field_name, default))
            command_id = int(command, 16) if command else None
            facts.messages[f"{package}.{name}"] = WireMessage(package, name, command_id, fields)
        else:
            raise AssertionError(f"cannot parse WIRE.md line {line!r}")
    return facts


@pytest.fixture(scope="module")
def wire() -> WireFacts:
    if not WIRE_MD.is_file():
        pytest.skip(f"{WIRE_MD} not found (set IMREACTOR_WIRE_MD)")
    facts = parse_wire_md(WIRE_MD.read_text(encoding="utf-8"))
    assert len(facts.enums) >= 20 and len(facts.messages) >= 100, "WIRE.md parsed too little"
    return facts


def _all_descriptors() -> dict[str, Descriptor]:
    return {
        d.full_name: d
        for module in MODULES.values()
        for d in module.DESCRIPTOR.message_types_by_name.values()
    }


def test_every_package_has_exactly_wire_md_messages(wire: WireFacts) -> None:
    assert {m.package for m in wire.messages.values()} == set(MODULES)
    assert set(_all_descriptors()) - set(wire.messages) == set(OWN_MESSAGES)
    assert set(wire.messages) <= set(_all_descriptors())


def test_own_messages_use_own_command_ids() -> None:
    descriptors = _all_descriptors()
    for full_name, command_id in OWN_MESSAGES.items():
        cls = registry.message_class_for_command(command_id)
        assert cls is not None and cls.DESCRIPTOR.full_name == full_name
        assert OWN_COMMAND_IDS[0] <= command_id <= OWN_COMMAND_IDS[1], full_name
        assert descriptors[full_name].GetOptions().Extensions[base.command_id] == command_id


def test_enums_match_wire_md(wire: WireFacts) -> None:
    generated = {
        e.name: [(v.name, v.number) for v in e.values]
        for e in base.DESCRIPTOR.enum_types_by_name.values()
    }
    for name, values in ENUM_EXTENSIONS.items():
        assert generated[name][-len(values) :] == values, name
        del generated[name][-len(values) :]
    assert generated == wire.enums
    for package, module in MODULES.items():
        if package != "IM.BaseDefine":
            assert not module.DESCRIPTOR.enum_types_by_name, package


def _label(f: FieldDescriptor) -> str:
    if f.is_repeated:
        return "repeated"
    return "required" if f.is_required else "optional"


def _check_field_type(f: FieldDescriptor, wire_type: str, wire: WireFacts) -> None:
    if wire_type in _SCALARS:
        assert f.type == _SCALARS[wire_type]
    elif wire_type in wire.enums:
        assert f.type == FieldDescriptor.TYPE_ENUM
        assert f.enum_type is not None
        assert f.enum_type.full_name == f"IM.BaseDefine.{wire_type}"
    else:
        assert f.type == FieldDescriptor.TYPE_MESSAGE
        assert f.message_type is not None
        assert f.message_type.full_name == f"IM.BaseDefine.{wire_type}"


#: Fields of ours beyond TeamTalk's schema (docs/protocol.md): optional, numbered after
#: TeamTalk's, so TeamTalk's servers and clients skip them as unknown fields.
EXTENSIONS = {"IM.Server.IMMsgServInfo": {7: "tls_port", 8: "ws_port", 9: "wss_port"}}
#: Enum values of ours beyond TeamTalk's (docs/protocol.md): the web and script client
#: types, in bits TeamTalk's own types leave clear.
ENUM_EXTENSIONS = {
    "ClientType": [("CLIENT_TYPE_WEB", 0x21), ("CLIENT_TYPE_SCRIPT", 0x41)],
    "OtherCmdID": [("CID_OTHER_MSG_SERV_STATS", 0x0780)],
}
#: Messages of ours (docs/protocol.md), by command id: server-to-server commands in our own
#: range of ids, OWN_COMMAND_IDS, where TeamTalk assigns none.
OWN_MESSAGES = {"IM.Server.IMMsgServStats": 0x0780}
OWN_COMMAND_IDS = (0x0780, 0x07FF)


def test_every_field_matches_wire_md(wire: WireFacts) -> None:
    descriptors = _all_descriptors()
    checked = 0
    for full_name, message in wire.messages.items():
        descriptor = descriptors[full_name]
        ours = EXTENSIONS.get(full_name, {})
        theirs = [f.number for f in message.fields]
        assert sorted(f.number for f in descriptor.fields if f.number not in ours) == theirs
        for number, name in ours.items():
            extra = descriptor.fields_by_number[number]
            assert extra.name == name and not extra.is_required, full_name
            assert number > max(theirs), full_name
        for expected in message.fields:
            where = f"{full_name}.{expected.name}"
            f = descriptor.fields_by_number[expected.number]
            assert f.name == expected.name, where
            assert _label(f) == _LABELS[expected.label], where
            _check_field_type(f, expected.type, wire)
            if expected.default is None:
                assert not f.has_default_value, where
            else:
                assert f.has_default_value and f.enum_type is not None, where
                assert f.enum_type.values_by_number[f.default_value].name == expected.default
            checked += 1
    assert checked > 300


def test_command_ids_match_wire_md(wire: WireFacts) -> None:
    descriptors = _all_descriptors()
    for full_name, message in wire.messages.items():
        descriptor = descriptors[full_name]
        if message.command_id is None:
            assert not descriptor.GetOptions().HasExtension(base.command_id), full_name
            continue
        cls = registry.message_class_for_command(message.command_id)
        assert cls is not None and cls.DESCRIPTOR.full_name == full_name
        service_id, command_id = registry.ids_of(cls)
        assert command_id == message.command_id
        assert registry.message_class(service_id, command_id) is cls
