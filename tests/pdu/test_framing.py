"""Incremental PDU framing (imreactor.pdu.framing.FrameProtocol).

Covered, on a stand-in connection (only ``state`` and ``abort`` are used by the framer):

- any split of a stream of valid PDUs (hypothesis; and every one- and two-cut split of a
  small stream) yields exactly its frames, in order, with their ids and bytes;
- many frames in one read; one frame over many 1-byte reads; a truncated stream keeps its
  partial PDU buffered and delivers nothing more;
- lengths below 16 or above the limit (both bounds exact), garbage and valid PDUs mixed in
  any split: the framer agrees with a one-pass reference parser, no exception leaves
  ``data_received``, the connection is aborted with a :class:`FrameError` and a logged
  reason, and nothing of the bad PDU's body is buffered (fewer than 16 bytes ever wait
  once the bad header is complete);
- a handler that closes the connection stops delivery of the rest of the read;
- linear cost: a PDU of the maximum size in 4 KiB reads buffers exactly what was fed
  (never more than the frame), and a 16 MiB PDU in 4 KiB reads completes far below the
  time a copy-everything-per-read framer would need; consumed frames are never kept;
- through the in-memory transport pair of imreactor.net.testing, in any chunk size;
- over real loopback sockets on one event loop: a peer sending a bad header loses its
  own connection, while another connection of the same server keeps exchanging PDUs.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imreactor.net import Connection, EventLoop, Protocol, Server
from imreactor.net.connection import CLOSED, CONNECTED
from imreactor.net.testing import FakeClock, transport_pair
from imreactor.net.transport import ConnState
from imreactor.pdu.framing import Frame, FrameError, FrameProtocol
from imreactor.pdu.header import DEFAULT_MAX_PDU_BYTES, HEADER_LEN, encode_pdu

FrameTuple = tuple[int, int, int, bytes]


class StubConnection:
    """What FrameProtocol needs of a Connection: its state, and abort()."""

    def __init__(self) -> None:
        self.state: ConnState = CONNECTED
        self.abort_reason: BaseException | None = None
        self.aborts = 0

    def abort(self, exc: BaseException | None = None) -> None:
        self.aborts += 1
        self.abort_reason = exc
        self.state = CLOSED

    def close(self) -> None:
        self.state = CLOSED

    def __repr__(self) -> str:
        return f"<StubConnection {self.state.value}>"


class Collector(FrameProtocol):
    """Records every frame; optionally closes the connection after ``close_after`` frames."""

    def __init__(self, max_pdu_bytes: int | None = None, close_after: int | None = None) -> None:
        super().__init__(max_pdu_bytes)
        self.frames: list[FrameTuple] = []
        self.close_after = close_after

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Frame) -> None:
        self.frames.append((service_id, command_id, seq, bytes(frame)))
        if self.close_after is not None and len(self.frames) >= self.close_after:
            self.conn.close()


def attach(proto: FrameProtocol) -> StubConnection:
    stub = StubConnection()
    proto.connection_made(stub)  # type: ignore[arg-type]  # a stand-in for Connection
    return stub


def feed(proto: FrameProtocol, stub: StubConnection, chunks: list[bytes]) -> None:
    """Deliver chunks as a Connection would: never empty, never after the connection ended."""
    for chunk in chunks:
        if stub.state is not CONNECTED:
            return
        if chunk:
            proto.data_received(chunk)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def reference_parse(stream: bytes, limit: int) -> tuple[list[FrameTuple], bool, int]:
    """One pass over the whole stream: (frames, rejected, bytes left over)."""
    frames: list[FrameTuple] = []
    offset = 0
    while len(stream) - offset >= HEADER_LEN:
        length, _, _, service_id, command_id, seq, _ = struct.unpack_from(
            ">IHHHHHH", stream, offset
        )
        if length < HEADER_LEN or length > limit:
            return frames, True, 0
        if offset + length > len(stream):
            break
        frames.append((service_id, command_id, seq, stream[offset : offset + length]))
        offset += length
    return frames, False, len(stream) - offset


u16 = st.integers(min_value=0, max_value=0xFFFF)
pdu_specs = st.tuples(u16, u16, u16, st.binary(max_size=80))


def build(specs: list[tuple[int, int, int, bytes]]) -> tuple[bytes, list[FrameTuple]]:
    pdus = [encode_pdu(s, c, q, body) for s, c, q, body in specs]
    frames = [(s, c, q, pdu) for (s, c, q, _), pdu in zip(specs, pdus, strict=True)]
    return b"".join(pdus), frames


# -- valid streams ---------------------------------------------------------------------------


@given(specs=st.lists(pdu_specs, max_size=25), data=st.data())
def test_any_split_yields_the_frames_in_order(
    specs: list[tuple[int, int, int, bytes]], data: st.DataObject
) -> None:
    stream, expected = build(specs)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=40))
    proto = Collector()
    stub = attach(proto)
    feed(proto, stub, split(stream, cuts))
    assert proto.frames == expected
    assert proto.buffered == 0
    assert stub.aborts == 0


def test_every_one_and_two_cut_split_of_a_small_stream() -> None:
    specs = [(7, 0x0701, 0, b""), (3, 0x0301, 9, b"hello"), (1, 0x0103, 0xFFFF, b"\x00" * 3)]
    stream, expected = build(specs)
    assert len(stream) == 56
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            proto = Collector()
            stub = attach(proto)
            feed(proto, stub, [stream[:i], stream[i:j], stream[j:]])
            assert proto.frames == expected, (i, j)
            assert proto.buffered == 0


def test_many_frames_in_one_read() -> None:
    specs = [(3, 0x0301, i % 0x10000, bytes([i % 256]) * (i % 50)) for i in range(2000)]
    stream, expected = build(specs)
    proto = Collector()
    attach(proto)
    proto.data_received(stream)
    assert proto.frames == expected
    assert proto.buffered == 0


def test_a_read_that_is_one_whole_pdu_is_handed_over_without_a_copy() -> None:
    seen: list[Frame] = []

    class Keep(FrameProtocol):
        def frame_received(self, service_id: int, command_id: int, seq: int, frame: Frame) -> None:
            seen.append(frame)

    proto = Keep()
    attach(proto)
    pdu = encode_pdu(3, 0x0301, 7, b"hello")
    proto.data_received(pdu)
    assert seen == [pdu] and seen[0] is pdu
    # After a partial PDU, the next read completes it from the buffer instead.
    proto.data_received(pdu[:5])
    proto.data_received(pdu[5:])
    assert seen[1:] == [pdu] and proto.buffered == 0


def test_one_frame_over_one_byte_reads() -> None:
    pdu = encode_pdu(3, 0x0301, 42, bytes(range(256)) * 4)
    proto = Collector()
    stub = attach(proto)
    for i, byte in enumerate(pdu[:-1]):
        proto.data_received(bytes([byte]))
        assert proto.buffered == i + 1
        assert proto.frames == []
    proto.data_received(pdu[-1:])
    assert proto.frames == [(3, 0x0301, 42, pdu)]
    assert proto.buffered == 0
    assert stub.aborts == 0


def test_frames_whose_header_straddles_reads() -> None:
    a, b = encode_pdu(1, 2, 3, b"a" * 10), encode_pdu(4, 5, 6, b"b" * 10)
    proto = Collector()
    attach(proto)
    proto.data_received(a + b[:7])  # b's header incomplete
    assert proto.frames == [(1, 2, 3, a)]
    assert proto.buffered == 7
    proto.data_received(b[7:20])  # b's header complete, body not
    assert proto.buffered == 20
    proto.data_received(b[20:])
    assert proto.frames == [(1, 2, 3, a), (4, 5, 6, b)]
    assert proto.buffered == 0


@given(specs=st.lists(pdu_specs, min_size=1, max_size=10), data=st.data())
def test_truncated_stream_delivers_the_complete_frames_only(
    specs: list[tuple[int, int, int, bytes]], data: st.DataObject
) -> None:
    stream, expected = build(specs)
    last = len(expected[-1][3])
    cut = data.draw(st.integers(min_value=len(stream) - last + 1, max_value=len(stream) - 1))
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=cut), max_size=10))
    proto = Collector()
    stub = attach(proto)
    feed(proto, stub, split(stream[:cut], cuts))
    assert proto.frames == expected[:-1]
    assert proto.buffered == cut - (len(stream) - last)
    assert stub.aborts == 0


# -- bad lengths and garbage -----------------------------------------------------------------

LIMIT = 256


def bad_lengths(limit: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(min_value=0, max_value=HEADER_LEN - 1),
        st.integers(min_value=limit + 1, max_value=0xFFFFFFFF),
    )


def raw_header(length: int, service_id: int = 3, command_id: int = 0x0301) -> bytes:
    return struct.pack(">IHHHHHH", length, 1, 0, service_id, command_id, 0, 0)


@pytest.mark.parametrize("length", [0, 1, 15, LIMIT + 1, 0xFFFFFFFF])
def test_bad_length_aborts_with_a_logged_reason(
    length: int, caplog: pytest.LogCaptureFixture
) -> None:
    good = encode_pdu(3, 0x0301, 1, b"ok")
    proto = Collector(max_pdu_bytes=LIMIT)
    stub = attach(proto)
    with caplog.at_level(logging.WARNING, logger="imreactor.pdu.framing"):
        proto.data_received(good + raw_header(length) + b"\xab" * 100)
    assert proto.frames == [(3, 0x0301, 1, good)]
    assert stub.aborts == 1
    assert isinstance(stub.abort_reason, FrameError)
    assert f"PDU length {length} outside 16..{LIMIT}" in str(stub.abort_reason)
    assert proto.buffered == 0
    assert any(
        f"PDU length {length} outside 16..{LIMIT}" in r.getMessage() and "closing" in r.getMessage()
        for r in caplog.records
    )


def test_length_bounds_are_exact() -> None:
    for length, ok in (
        (HEADER_LEN, True),
        (HEADER_LEN - 1, False),
        (LIMIT, True),
        (LIMIT + 1, False),
    ):
        proto = Collector(max_pdu_bytes=LIMIT)
        stub = attach(proto)
        proto.data_received(raw_header(length) + b"\x00" * (max(length, HEADER_LEN) - HEADER_LEN))
        assert (len(proto.frames) == 1) is ok, length
        assert (stub.aborts == 0) is ok, length


def test_default_limit_is_the_class_attribute() -> None:
    proto = Collector()
    stub = attach(proto)
    proto.data_received(raw_header(DEFAULT_MAX_PDU_BYTES + 1))
    assert stub.aborts == 1

    class Small(Collector):
        max_pdu_bytes = 64

    small = Small()
    stub = attach(small)
    small.data_received(raw_header(65))
    assert stub.aborts == 1


@given(length=bad_lengths(LIMIT), body=st.binary(min_size=1, max_size=600), data=st.data())
def test_oversize_or_undersize_body_is_never_buffered(
    length: int, body: bytes, data: st.DataObject
) -> None:
    stream = raw_header(length) + body
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20))
    proto = Collector(max_pdu_bytes=LIMIT)
    stub = attach(proto)
    for chunk in split(stream, cuts):
        if stub.state is not CONNECTED:
            break
        if chunk:
            proto.data_received(chunk)
        # Until the header is complete at most 15 bytes wait; after it, nothing.
        assert proto.buffered < HEADER_LEN
    assert stub.aborts == 1
    assert proto.buffered == 0
    assert proto.frames == []


def test_oversize_header_one_byte_at_a_time() -> None:
    header = raw_header(LIMIT + 1)
    proto = Collector(max_pdu_bytes=LIMIT)
    stub = attach(proto)
    for i in range(HEADER_LEN - 1):
        proto.data_received(header[i : i + 1])
        assert proto.buffered == i + 1
    assert stub.aborts == 0
    proto.data_received(header[-1:] + b"\x00" * 4096)
    assert stub.aborts == 1
    assert proto.buffered == 0


segments = st.one_of(
    pdu_specs.map(lambda s: encode_pdu(*s)),
    bad_lengths(LIMIT).map(raw_header),
    st.binary(min_size=1, max_size=40),
    st.integers(min_value=HEADER_LEN, max_value=LIMIT).map(raw_header),  # body may be missing
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(segments, max_size=12), data=st.data())
def test_garbage_in_any_split_matches_the_reference_and_never_raises(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20))
    frames, rejected, left = reference_parse(stream, LIMIT)
    proto = Collector(max_pdu_bytes=LIMIT)
    stub = attach(proto)
    feed(proto, stub, split(stream, cuts))  # an exception here fails the test
    assert proto.frames == frames
    assert stub.aborts == int(rejected)
    assert isinstance(stub.abort_reason, FrameError) is rejected
    assert proto.buffered == left


@given(
    good=st.lists(pdu_specs, min_size=1, max_size=8),
    garbage=st.binary(min_size=HEADER_LEN, max_size=200).filter(
        lambda b: not HEADER_LEN <= struct.unpack_from(">I", b)[0] <= LIMIT
    ),
    data=st.data(),
)
def test_a_bad_connection_does_not_disturb_another(
    good: list[tuple[int, int, int, bytes]], garbage: bytes, data: st.DataObject
) -> None:
    stream, expected = build(good)
    good_chunks = split(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bad_chunks = split(garbage, data.draw(st.lists(st.integers(0, len(garbage)), max_size=10)))
    ok, bad = Collector(max_pdu_bytes=LIMIT), Collector(max_pdu_bytes=LIMIT)
    ok_stub, bad_stub = attach(ok), attach(bad)
    for i in range(max(len(good_chunks), len(bad_chunks))):
        if i < len(bad_chunks):
            feed(bad, bad_stub, [bad_chunks[i]])
        if i < len(good_chunks):
            feed(ok, ok_stub, [good_chunks[i]])
    assert bad_stub.aborts == 1
    assert ok_stub.aborts == 0
    assert ok.frames == expected


def test_handler_closing_the_connection_stops_delivery() -> None:
    stream, expected = build([(3, 0x0301, i, b"x" * i) for i in range(1, 6)])
    proto = Collector(close_after=2)
    stub = attach(proto)
    proto.data_received(stream)
    assert proto.frames == expected[:2]
    assert stub.state is CLOSED
    assert proto.buffered == 0


# -- linear cost -----------------------------------------------------------------------------

CHUNK = 4096


def test_max_size_pdu_in_4k_reads_buffers_exactly_what_was_fed() -> None:
    pdu = encode_pdu(3, 0x0301, 1, b"\x5a" * (DEFAULT_MAX_PDU_BYTES - HEADER_LEN))
    assert len(pdu) == DEFAULT_MAX_PDU_BYTES
    proto = Collector()
    stub = attach(proto)
    fed = 0
    for chunk in chunked(pdu, CHUNK):
        proto.data_received(chunk)
        fed += len(chunk)
        if fed < len(pdu):
            assert proto.buffered == fed  # no copy kept twice, never beyond the frame
    assert stub.aborts == 0
    assert len(proto.frames) == 1
    assert proto.frames[0][3] == pdu
    assert proto.buffered == 0


def test_16_mib_pdu_in_4k_reads_is_linear() -> None:
    # 4096 reads: a framer that copied its whole buffer on every read would move ~32 GiB
    # (many seconds); appending moves 16 MiB once (milliseconds).
    size = 16 * 1024 * 1024
    pdu = encode_pdu(3, 0x0301, 1, b"\xa5" * (size - HEADER_LEN))
    chunks = list(chunked(pdu, CHUNK))
    proto = Collector(max_pdu_bytes=size)
    attach(proto)
    start = time.perf_counter()
    for chunk in chunks:
        proto.data_received(chunk)
    elapsed = time.perf_counter() - start
    assert len(proto.frames) == 1
    assert proto.frames[0][3] == pdu
    assert elapsed < 2.0, f"{elapsed:.2f} s for 16 MiB in 4 KiB reads"


def test_small_frames_in_4k_reads_never_accumulate() -> None:
    stream, expected = build([(3, 0x0301, i % 0x10000, b"m" * (i % 97)) for i in range(20000)])
    proto = Collector()
    attach(proto)
    for chunk in chunked(stream, CHUNK):
        proto.data_received(chunk)
        # Only the trailing partial PDU waits: bounded by the largest frame.
        assert proto.buffered < HEADER_LEN + 97
    assert proto.frames == expected
    assert proto.buffered == 0


# -- through a transport ---------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 2, 15, 16, 17, 100, None])
def test_frames_through_a_memory_transport_in_any_chunk_size(chunk_size: int | None) -> None:
    stream, expected = build([(3, 0x0301, i, b"p" * (i * 7 % 60)) for i in range(40)])
    loop = EventLoop(clock=FakeClock())
    try:
        receiver = Collector()
        sender, _ = transport_pair(loop, Protocol(), receiver, chunk_size=chunk_size)
        sender.write(stream[:1000])
        loop.run_once(0)
        sender.write(stream[1000:])
        loop.run_once(0)
        assert receiver.frames == expected
        assert receiver.buffered == 0
    finally:
        loop.close()


# -- real sockets ----------------------------------------------------------------------------


def run_until(loop: EventLoop, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        loop.run_once(0.05)


class Echo(FrameProtocol):
    """Server side: sends every frame back."""

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Frame) -> None:
        self.conn.write(frame)


class Client(Collector):
    def __init__(self) -> None:
        super().__init__()
        self.lost: list[BaseException | None] = []

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


def test_bad_peer_is_closed_and_the_other_keeps_working_over_sockets(
    loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    server: Server = loop.listen("127.0.0.1", 0, Echo)
    good, bad = Client(), Client()
    conns: list[Connection] = [
        loop.connect("127.0.0.1", server.port, good),
        loop.connect("127.0.0.1", server.port, bad),
    ]
    try:
        run_until(loop, lambda: all(c.state is CONNECTED for c in conns))
        first = encode_pdu(3, 0x0301, 1, b"before")
        for client in (good, bad):
            client.conn.write(first)
        run_until(loop, lambda: len(good.frames) == 1 and len(bad.frames) == 1)

        with caplog.at_level(logging.WARNING, logger="imreactor.pdu.framing"):
            bad.conn.write(raw_header(DEFAULT_MAX_PDU_BYTES + 1) + b"\x00" * 1000)
            good.conn.write(encode_pdu(3, 0x0301, 2, b"during"))
            run_until(loop, lambda: bool(bad.lost) and len(good.frames) == 2)
        assert any("outside 16.." in r.getMessage() for r in caplog.records)

        good.conn.write(encode_pdu(3, 0x0301, 3, b"after"))
        run_until(loop, lambda: len(good.frames) == 3)
        assert [f[2] for f in good.frames] == [1, 2, 3]
        assert good.conn.state is CONNECTED
        assert bad.frames == [(3, 0x0301, 1, first)]
    finally:
        for conn in conns:
            conn.abort()
        server.close()
        loop.run_once(0)
