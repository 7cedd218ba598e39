"""The 16-byte PDU header (imreactor.pdu.header).

Covered: the heartbeat PDU byte for byte (WIRE.md §1), parse/encode round trips over the
whole range of every field, the fixed version/flag/reserved values we write, parsing at an
offset, the time budget a server-link request carries in the reserved field, and golden
bytes (header + protobuf body, written out by hand) for IMLoginReq and IMMsgData.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imreactor.pdu import registry
from imreactor.pdu.header import (
    HEADER,
    HEADER_LEN,
    MAX_BUDGET_MS,
    PDU_VERSION,
    Header,
    budget_field,
    budget_ms,
    encode_pdu,
    parse_header,
)
from imreactor.pdu.imconn import HEARTBEAT_PDU
from imreactor.pdu.proto import im_base_define_pb2 as base
from imreactor.pdu.proto import im_login_pb2, im_message_pb2, im_other_pb2

u16 = st.integers(min_value=0, max_value=0xFFFF)


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_header_is_16_bytes_big_endian() -> None:
    assert HEADER_LEN == 16
    assert HEADER.size == HEADER_LEN
    assert HEADER.format == ">IHHHHHH"


def test_heartbeat_encodes_exactly_as_wire_md() -> None:
    expected = unhex("00000010 0001 0000 0007 0701 0000 0000")
    service_id, command_id = registry.ids_of(im_other_pb2.IMHeartBeat)
    body = im_other_pb2.IMHeartBeat().SerializeToString()
    assert body == b""
    assert encode_pdu(service_id, command_id, 0, body) == expected
    assert encode_pdu(service_id, command_id, 0) == expected
    assert expected == HEARTBEAT_PDU


def test_encode_writes_version_1_flag_0_reserved_0() -> None:
    pdu = encode_pdu(0x0003, 0x0301, 0xBEEF, b"xyz")
    assert PDU_VERSION == 1
    assert pdu == unhex("00000013 0001 0000 0003 0301 beef 0000") + b"xyz"
    assert parse_header(pdu) == Header(19, 1, 0, 3, 0x0301, 0xBEEF, 0)


@given(
    service_id=u16,
    command_id=u16,
    seq=u16,
    body=st.binary(max_size=300),
)
def test_encode_then_parse_round_trip(
    service_id: int, command_id: int, seq: int, body: bytes
) -> None:
    pdu = encode_pdu(service_id, command_id, seq, body)
    header = parse_header(pdu)
    assert header == Header(HEADER_LEN + len(body), PDU_VERSION, 0, service_id, command_id, seq, 0)
    assert header.length == len(pdu)
    assert pdu[HEADER_LEN:] == body


@given(
    fields=st.tuples(st.integers(min_value=0, max_value=0xFFFFFFFF), u16, u16, u16, u16, u16, u16),
    prefix=st.binary(max_size=40),
)
def test_parse_then_pack_round_trip_at_any_offset(
    fields: tuple[int, int, int, int, int, int, int], prefix: bytes
) -> None:
    # Peers put other values in version and reserved (0, 6, 13; 0x30): parsing keeps them all.
    raw = struct.pack(">IHHHHHH", *fields)
    for data in (raw, bytearray(prefix + raw + b"tail"), memoryview(prefix + raw)):
        offset = 0 if data is raw else len(prefix)
        header = parse_header(data, offset)
        assert tuple(header) == fields
        assert HEADER.pack(*header) == raw


def test_parse_needs_16_bytes() -> None:
    with pytest.raises(struct.error):
        parse_header(b"\x00" * 15)
    with pytest.raises(struct.error):
        parse_header(b"\x00" * 20, offset=5)


# Golden PDUs. The bodies are protobuf written out by hand: tag byte (field << 3 | wire type),
# then a varint or a length and the bytes.
LOGIN_REQ_HEX = (
    "00000042 0001 0000 0001 0103 0000 0000"  # length 66, SID_LOGIN, CID_LOGIN_REQ_USERLOGIN
    "0a 05 616c696365"  # 1 user_name "alice"
    "12 20 3566346463633362356161373635643631643833323764656238383263663939"  # 2 password
    "18 01"  # 3 online_status USER_STATUS_ONLINE
    "20 12"  # 4 client_type CLIENT_TYPE_ANDROID
    "2a 03 312e30"  # 5 client_version "1.0"
)
MSG_DATA_HEX = (
    "00000021 0001 0000 0003 0301 0007 0000"  # length 33, SID_MSG, CID_MSG_DATA, seq 7
    "08 01"  # 1 from_user_id 1
    "10 02"  # 2 to_session_id 2
    "18 ac02"  # 3 msg_id 300
    "20 c0843d"  # 4 create_time 1000000
    "28 01"  # 5 msg_type MSG_TYPE_SINGLE_TEXT
    "32 02 6869"  # 6 msg_data "hi"
)


def test_golden_login_request() -> None:
    message = im_login_pb2.IMLoginReq(
        user_name="alice",
        password="5f4dcc3b5aa765d61d8327deb882cf99",
        online_status=base.USER_STATUS_ONLINE,
        client_type=base.CLIENT_TYPE_ANDROID,
        client_version="1.0",
    )
    service_id, command_id = registry.ids_of(message)
    pdu = encode_pdu(service_id, command_id, 0, message.SerializeToString())
    assert pdu == unhex(LOGIN_REQ_HEX)
    header = parse_header(pdu)
    assert (header.length, header.service_id, header.command_id) == (66, 0x0001, 0x0103)
    assert im_login_pb2.IMLoginReq.FromString(pdu[HEADER_LEN:]) == message


def test_golden_message_data() -> None:
    message = im_message_pb2.IMMsgData(
        from_user_id=1,
        to_session_id=2,
        msg_id=300,
        create_time=1_000_000,
        msg_type=base.MSG_TYPE_SINGLE_TEXT,
        msg_data=b"hi",
    )
    service_id, command_id = registry.ids_of(message)
    pdu = encode_pdu(service_id, command_id, 7, message.SerializeToString())
    assert pdu == unhex(MSG_DATA_HEX)
    header = parse_header(pdu)
    assert (header.length, header.service_id, header.command_id, header.seq) == (
        33,
        0x0003,
        0x0301,
        7,
    )
    assert im_message_pb2.IMMsgData.FromString(pdu[HEADER_LEN:]) == message


def test_routing_view_of_the_header_matches_the_full_one() -> None:
    from imreactor.pdu.header import HEADER, HEADER_ROUTING

    raw = HEADER.pack(80, 13, 7, 3, 0x0301, 4242, 0x30)
    assert HEADER_ROUTING.size == HEADER.size == 16
    assert HEADER_ROUTING.unpack(raw) == (80, 3, 0x0301, 4242)


def test_budget_field_fits_the_reserved_u16_or_is_no_limit() -> None:
    assert budget_field(None) == 0
    assert budget_field(10.0) == 10_000
    assert budget_field(0.0005) == 0  # under a millisecond: 0 would mean "no limit" anyway
    assert budget_field(65.535) == MAX_BUDGET_MS
    assert budget_field(65.536) == 0  # does not fit: no limit rather than a shorter one
    assert budget_field(-1.0) == 0
    pdu = encode_pdu(1, 2, 3, b"x", reserved=budget_field(2.5))
    assert parse_header(pdu).reserved == 2500 == budget_ms(pdu)
