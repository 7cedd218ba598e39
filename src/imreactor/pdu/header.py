"""The TeamTalk PDU header: 16 bytes, big-endian, before every protobuf body.

| offset | type | field                              |
|--------|------|------------------------------------|
| 0      | u32  | length, header included            |
| 4      | u16  | version (peers never check; we write 1) |
| 6      | u16  | flag (unused, 0)                   |
| 8      | u16  | service_id                         |
| 10     | u16  | command_id                         |
| 12     | u16  | seq_num                            |
| 14     | u16  | reserved (ignored, 0)              |
"""

from __future__ import annotations

import struct
from typing import NamedTuple

HEADER = struct.Struct(">IHHHHHH")
#: The same 16 bytes, skipping version, flag and reserved: what framing reads of every PDU.
HEADER_ROUTING = struct.Struct(">I4xHHH2x")
HEADER_LEN = 16
PDU_VERSION = 1
#: Default limit on one PDU, header included. Large enough for a group's member
#: list or a page of history; small enough that a bogus length cannot make a
#: connection buffer much before it is closed.
DEFAULT_MAX_PDU_BYTES = 4 * 1024 * 1024
MAX_SEQ = 0xFFFF

_pack = HEADER.pack


class Header(NamedTuple):
    length: int
    version: int
    flag: int
    service_id: int
    command_id: int
    seq: int
    reserved: int


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """Decode the header at ``offset`` (no validation: see the framing layer)."""
    return Header(*HEADER.unpack_from(data, offset))


def encode_pdu(service_id: int, command_id: int, seq: int, body: bytes = b"") -> bytes:
    """One whole PDU: header (version 1, flag 0, reserved 0) followed by ``body``."""
    return _pack(HEADER_LEN + len(body), PDU_VERSION, 0, service_id, command_id, seq, 0) + body
