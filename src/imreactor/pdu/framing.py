"""Incremental PDU framing on top of a reactor connection.

:class:`FrameProtocol` takes the byte stream in any split (a PDU across many
reads, many PDUs in one read) and calls ``frame_received`` once per complete
PDU, in order. Cost is linear in the bytes received: a read that is exactly
one PDU is handed over as it is, a complete PDU in a longer read is sliced
straight from it; only a trailing partial PDU is copied into a buffer, which
grows by appending and shrinks from the front in O(1).

A length below 16 or above ``max_pdu_bytes`` is rejected as soon as the header
is complete, before any of the body is buffered: ``frame_error`` logs the
reason and aborts that one connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..net.transport import ConnState, Protocol, Transport
from .header import DEFAULT_MAX_PDU_BYTES, HEADER_LEN, HEADER_ROUTING

log = logging.getLogger(__name__)

# Only the fields framing needs: fewer values to build and unpack for every PDU.
_unpack_from = HEADER_ROUTING.unpack_from

Frame = bytes | bytearray


class FrameError(ValueError):
    """The peer sent a PDU header that cannot be valid."""


def one_pdu_check(max_pdu_bytes: int = DEFAULT_MAX_PDU_BYTES) -> Callable[[bytes], str | None]:
    """A message check for message transports (WebSocket): each message must be exactly
    one PDU, its header's length equal to the message's, at most ``max_pdu_bytes``.

    Returns ``check(message)``: why the message is refused, or None.
    """

    def check(message: bytes) -> str | None:
        size = len(message)
        if size < HEADER_LEN:
            return f"a message of {size} bytes is shorter than a PDU header"
        length = _unpack_from(message)[0]
        if length != size:
            return f"a message of {size} bytes carries a PDU header saying {length}"
        if length > max_pdu_bytes:
            return f"PDU length {length} over {max_pdu_bytes}"
        return None

    return check


class FrameProtocol(Protocol):
    """A protocol that delivers whole PDUs. Subclass and implement :meth:`frame_received`.

    ``conn`` is set by ``connection_made`` (subclasses that override it call
    ``super().connection_made(conn)``). The PDU size limit is the class
    attribute ``max_pdu_bytes`` unless ``__init__`` is given one.

    Slotted, because there is one per connection: a subclass that declares
    ``__slots__`` too keeps an idle connection's memory small.
    """

    __slots__ = ("_buf", "_limit", "conn")

    max_pdu_bytes: int = DEFAULT_MAX_PDU_BYTES
    conn: Transport

    def __init__(self, max_pdu_bytes: int | None = None) -> None:
        self._buf: bytearray | None = None
        self._limit = self.max_pdu_bytes if max_pdu_bytes is None else max_pdu_bytes

    def connection_made(self, conn: Transport) -> None:
        self.conn = conn

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Frame) -> None:
        """One complete PDU (``frame`` includes its 16-byte header)."""
        raise NotImplementedError

    def frame_error(self, error: FrameError) -> None:
        """An impossible header arrived: log it and abort the connection."""
        log.warning("%r: %s; closing the connection", self.conn, error)
        self.conn.abort(error)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete PDU waiting for the rest."""
        return len(self._buf) if self._buf is not None else 0

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        view: bytes | bytearray
        if buf is None:
            view = data
            size = len(data)
            if size < HEADER_LEN:
                if size:
                    self._buf = bytearray(data)
                return
            length, service_id, command_id, seq = _unpack_from(data)
            if length == size and length <= self._limit:
                # The common case, a read that is exactly one PDU (a request, a
                # reply, a message), goes straight to the handler, as it is.
                self.frame_received(service_id, command_id, seq, data)
                return
        else:
            buf += data
            view = buf
            size = len(buf)
            if size < HEADER_LEN:
                return
            length, service_id, command_id, seq = _unpack_from(buf)
        # The header at offset 0 is unpacked; each turn unpacks the next one.
        offset = 0
        limit = self._limit
        deliver = self.frame_received
        conn = self.conn
        connected = ConnState.CONNECTED
        header_len = HEADER_LEN
        last_header = size - header_len
        while True:
            if length < header_len or length > limit:
                self._buf = None
                self.frame_error(FrameError(f"PDU length {length} outside {HEADER_LEN}..{limit}"))
                return
            end = offset + length
            if end > size:
                break
            deliver(service_id, command_id, seq, view[offset:end])
            offset = end
            if conn.state is not connected:
                # The handler closed the connection: what follows is not for us.
                self._buf = None
                return
            if offset > last_header:
                break
            length, service_id, command_id, seq = _unpack_from(view, offset)
        if buf is not None:
            if offset == size:
                self._buf = None  # give the memory back between PDUs
            elif offset:
                del buf[:offset]
        elif offset < size:
            self._buf = bytearray(memoryview(data)[offset:])
