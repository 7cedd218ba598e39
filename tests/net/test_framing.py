"""PDU framing (FrameProtocol) on the reactor: any split of a stream of PDUs yields the same
frames (exhaustively and with random splits in memory, and over real sockets on every
backend); a length below 16 or above max_pdu_bytes aborts only that connection, as soon as
the header is in; frames after the handler's close are not delivered."""

from __future__ import annotations

import itertools
import random
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imreactor.net import ConnState, EventLoop, Protocol
from imreactor.net.testing import transport_pair
from imreactor.pdu.framing import FrameError, FrameProtocol
from imreactor.pdu.header import HEADER, HEADER_LEN, encode_pdu

from .helpers import Collect, RunUntil, client, run_for

pytestmark = pytest.mark.timeout(60)

FrameTuple = tuple[int, int, int, bytes]


class Frames(FrameProtocol):
    """Records every frame; closes its connection on a frame with command id 0xdead."""

    def __init__(self, max_pdu_bytes: int | None = None) -> None:
        super().__init__(max_pdu_bytes)
        self.frames: list[FrameTuple] = []
        self.lost: list[BaseException | None] = []

    def frame_received(
        self, service_id: int, command_id: int, seq: int, frame: bytes | bytearray
    ) -> None:
        self.frames.append((service_id, command_id, seq, bytes(frame)))
        if command_id == 0xDEAD:
            self.conn.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def make_stream(seed: int, count: int = 12) -> tuple[bytes, list[FrameTuple]]:
    rng = random.Random(seed)
    frames: list[FrameTuple] = []
    for seq in range(count):
        body = rng.randbytes(rng.choice([0, 0, 1, 7, 15, 16, 17, 100, 1000]))
        frame = encode_pdu(rng.randrange(1, 8), rng.randrange(1, 0x0800), seq, body)
        frames.append((HEADER.unpack_from(frame)[3], HEADER.unpack_from(frame)[4], seq, frame))
    return b"".join(f[3] for f in frames), frames


STREAM, FRAMES = make_stream(7)


@pytest.fixture(scope="module")
def memory_loop() -> Iterator[EventLoop]:
    """A loop for in-memory transports that these tests never run."""
    loop = EventLoop()
    yield loop
    loop.close()


def _receiver(loop: EventLoop, max_pdu_bytes: int | None = None) -> Frames:
    frames = Frames(max_pdu_bytes)
    transport_pair(loop, frames, Protocol())
    return frames


def test_every_split_into_two_yields_the_same_frames(memory_loop: EventLoop) -> None:
    for cut in range(len(STREAM) + 1):
        proto = _receiver(memory_loop)
        proto.data_received(STREAM[:cut])
        proto.data_received(STREAM[cut:])
        assert proto.frames == FRAMES, f"split at {cut}"
        assert proto.buffered == 0


def test_every_chunk_size_yields_the_same_frames(memory_loop: EventLoop) -> None:
    for size in range(1, 300):
        proto = _receiver(memory_loop)
        for start in range(0, len(STREAM), size):
            proto.data_received(STREAM[start : start + size])
        assert proto.frames == FRAMES, f"chunks of {size}"


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_split_yields_the_same_frames(memory_loop: EventLoop, cuts: list[int]) -> None:
    proto = _receiver(memory_loop)
    bounds = [0, *sorted(cuts), len(STREAM)]
    for start, end in itertools.pairwise(bounds):
        proto.data_received(STREAM[start:end])
    assert proto.frames == FRAMES


def test_a_partial_pdu_waits_in_the_buffer(memory_loop: EventLoop) -> None:
    proto = _receiver(memory_loop)
    first = FRAMES[0][3]
    proto.data_received(first + STREAM[len(first) : len(first) + 5])
    assert proto.frames == FRAMES[:1]
    assert proto.buffered == 5


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 17, 1000, None])
def test_frames_through_a_transport_pair(chunk_size: int | None, backend: str) -> None:
    loop = EventLoop(backend)
    try:
        receiver = Frames()
        sender, _ = transport_pair(loop, Protocol(), receiver, chunk_size=chunk_size)
        sender.write(STREAM)
        for _ in range(5):
            loop.run_once(0)
        assert receiver.frames == FRAMES
    finally:
        loop.close()


@pytest.mark.parametrize(
    "length", [0, 1, HEADER_LEN - 1, 4096 + 1, 0xFFFFFFFF], ids=lambda n: f"length-{n}"
)
def test_an_impossible_length_aborts_at_the_header(memory_loop: EventLoop, length: int) -> None:
    proto = _receiver(memory_loop, max_pdu_bytes=4096)
    header = HEADER.pack(length, 1, 0, 1, 2, 3, 0)
    good = encode_pdu(1, 2, 1, b"ok")
    conn = proto.conn
    proto.data_received(good + header[:10])
    states = [conn.state]
    proto.data_received(header[10:])  # no body follows: rejected on the header alone
    states.append(conn.state)
    assert states == [ConnState.CONNECTED, ConnState.CLOSED], "aborted once the header is in"
    assert proto.frames == [(1, 2, 1, good)]
    assert proto.buffered == 0


def test_frames_after_the_handlers_close_are_not_delivered(memory_loop: EventLoop) -> None:
    proto = _receiver(memory_loop)
    closing = encode_pdu(1, 0xDEAD, 2)
    after = encode_pdu(1, 5, 3, b"after")
    proto.data_received(FRAMES[0][3] + closing + after + after[:4])
    assert [f[2] for f in proto.frames] == [0, 2]
    assert proto.buffered == 0


# -- over real sockets, on every backend --------------------------------------------------


def _dribble(loop: EventLoop, sock: socket.socket, data: bytes, seed: int) -> None:
    """Send ``data`` in random small pieces, letting the loop run between them."""
    rng = random.Random(seed)
    offset = 0
    while offset < len(data):
        size = rng.choice([1, 2, 5, 15, 16, 17, 64, 333])
        sock.sendall(data[offset : offset + size])
        offset += size
        loop.run_once(0.001)


def test_frames_over_a_socket_in_any_split(loop: EventLoop, run_until: RunUntil) -> None:
    stream, frames = make_stream(11, count=60)
    receivers = Collect(Frames)
    server = loop.listen("127.0.0.1", 0, receivers)
    with client(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        run_until(lambda: len(receivers) == 1)
        _dribble(loop, sock, stream, seed=3)
        run_until(lambda: len(receivers.made[0].frames) == len(frames))
    assert receivers.made[0].frames == frames


def test_a_bad_length_aborts_only_that_connection(loop: EventLoop, run_until: RunUntil) -> None:
    receivers = Collect(lambda: Frames(max_pdu_bytes=64 * 1024))
    server = loop.listen("127.0.0.1", 0, receivers)
    with client(server.port) as bad, client(server.port) as good:
        run_until(lambda: len(receivers) == 2)
        bad_proto, good_proto = receivers.made
        good.sendall(FRAMES[0][3])
        bad.sendall(HEADER.pack(10 * 1024 * 1024, 1, 0, 1, 2, 3, 0))  # 10 MiB announced
        run_until(lambda: bad_proto.lost and good_proto.frames)
        assert len(bad_proto.lost) == 1 and isinstance(bad_proto.lost[0], FrameError)
        try:
            assert bad.recv(10) == b""
        except ConnectionResetError:
            pass
        good.sendall(FRAMES[1][3])
        run_until(lambda: len(good_proto.frames) == 2)
        assert good_proto.frames == FRAMES[:2]
        assert good_proto.lost == []


def test_no_frame_after_close_over_a_socket(loop: EventLoop, run_until: RunUntil) -> None:
    receivers = Collect(Frames)
    server = loop.listen("127.0.0.1", 0, receivers)
    with client(server.port) as sock:
        sock.sendall(FRAMES[0][3] + encode_pdu(1, 0xDEAD, 1) + FRAMES[2][3] + FRAMES[3][3])
        run_until(lambda: len(receivers) == 1 and len(receivers.made[0].frames) >= 2)
        sock.sendall(FRAMES[4][3])
        assert sock.recv(10) == b""  # our FIN from the handler's close
    run_until(lambda: receivers.made[0].lost)
    run_for(loop, 0.05)
    assert [f[2] for f in receivers.made[0].frames] == [0, 1]


def test_frame_protocol_requires_frame_received() -> None:
    with pytest.raises(NotImplementedError):
        FrameProtocol().frame_received(1, 2, 3, b"")
