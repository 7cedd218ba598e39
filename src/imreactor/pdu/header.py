"""The TeamTalk PDU header: 16 bytes, big-endian, before every protobuf body.

| offset | type | field                              |
|--------|------|------------------------------------|
| 0      | u32  | length, header included            |
| 4      | u16  | version (peers never check; we write 1) |
| 6      | u16  | flag (unused, 0)                   |
| 8      | u16  | service_id                         |
| 10     | u16  | command_id                         |
| 12     | u16  | seq_num                            |
| 14     | u16  | reserved; on our server links, a request's time budget |

TeamTalk never reads the reserved field (one client writes 0x30 there). Between
our own servers a request carries in it the milliseconds its sender will wait
for the answer (0: no limit), so the receiver can drop work nobody waits for;
see :func:`budget_ms`. Client connections never read it.
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
#: The largest time budget the reserved field can carry, in milliseconds.
MAX_BUDGET_MS = 0xFFFF

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


def encode_pdu(
    service_id: int, command_id: int, seq: int, body: bytes = b"", reserved: int = 0
) -> bytes:
    """One whole PDU: header (version 1, flag 0, ``reserved``) followed by ``body``."""
    return (
        _pack(HEADER_LEN + len(body), PDU_VERSION, 0, service_id, command_id, seq, reserved) + body
    )


def budget_field(timeout_s: float | None) -> int:
    """The reserved-field value for a request answered within ``timeout_s``.

    0 (no limit) when there is no timeout or it does not fit the field's 65.535 s:
    a shorter budget than the sender's patience would drop work it still wants.
    """
    if timeout_s is None:
        return 0
    ms = int(timeout_s * 1000)
    return ms if 0 < ms <= MAX_BUDGET_MS else 0


def budget_ms(frame: bytes | bytearray | memoryview) -> int:
    """The time budget a server-link request carries (reserved field), 0 for none."""
    return (frame[14] << 8) | frame[15]
