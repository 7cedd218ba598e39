"""Output and flow control on every backend: an 8 MiB write to a slow reader arrives intact
with the unsent part queued, paired pause_writing/resume_writing at the water marks, a
producer that writes until paused inside a callback paused there, the
max_buffer cap aborting a peer that does not read (PeerTooSlow) while another connection
keeps working, graceful close flushing queued output before the FIN, and abort dropping it."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable

import pytest

from imreactor.net import (
    Connection,
    ConnState,
    EventLoop,
    FlowControl,
    PeerTooSlow,
    Timer,
    Transport,
)
from imreactor.net.poller import WRITABLE

from .helpers import (
    Collect,
    Echo,
    Recorder,
    RunUntil,
    SlowReader,
    client,
    roundtrip,
    small_buffers_client,
)

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
PAYLOAD = random.Random(2024).randbytes(8 * MiB)


class Sender(Recorder):
    """Sends ``data`` as soon as it is connected (in ``chunk``-sized writes), then closes.

    Honours pause_writing/resume_writing and records the queued size at each.
    """

    def __init__(self, data: bytes, chunk: int, close: bool = True) -> None:
        super().__init__()
        self.data = data
        self.chunk = chunk
        self.close_when_done = close
        self.offset = 0
        self.marks: list[tuple[str, int]] = []
        self.queued_after_first_write = -1

    def connection_made(self, conn: Transport) -> None:
        super().connection_made(conn)
        assert isinstance(conn, Connection)  # a TCP socket option
        conn.set_send_buffer_size(32 * 1024)
        self.produce()

    def produce(self) -> None:
        conn = self.connection()
        while self.offset < len(self.data) and not conn.writing_paused:
            end = self.offset + self.chunk
            conn.write(self.data[self.offset : end])
            self.offset = min(end, len(self.data))
            if self.queued_after_first_write < 0:
                self.queued_after_first_write = conn.write_buffer_size
        if self.offset == len(self.data) and self.close_when_done:
            conn.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.marks.append(("pause", self.connection().write_buffer_size))

    def resume_writing(self) -> None:
        super().resume_writing()
        self.marks.append(("resume", self.connection().write_buffer_size))
        self.produce()


def _through_a_slow_reader(
    loop: EventLoop,
    run_until: RunUntil,
    make_sender: Callable[[], Sender],
    flow: FlowControl | None = None,
) -> tuple[SlowReader, Sender]:
    """Serve one connection with ``make_sender()`` to a small-buffered reader until EOF."""
    senders = Collect(make_sender)
    server = loop.listen("127.0.0.1", 0, senders, flow=flow or FlowControl())
    with small_buffers_client(server.port) as sock:
        reader = SlowReader(sock)
        reader.start()
        run_until(lambda: reader.done.is_set(), timeout_s=30, what="the reader got EOF")
    return reader, senders.made[0]


def test_a_large_write_reaches_a_slow_reader_intact(loop: EventLoop, run_until: RunUntil) -> None:
    reader, sender = _through_a_slow_reader(loop, run_until, lambda: Sender(PAYLOAD, len(PAYLOAD)))
    assert reader.error is None
    assert sender.queued_after_first_write > 0, "the kernel took all 8 MiB at once?"
    assert len(reader.data) == len(PAYLOAD)
    assert hashlib.sha256(reader.data).digest() == hashlib.sha256(PAYLOAD).digest()
    run_until(lambda: sender.lost)
    assert sender.lost == [None]


def test_water_marks_pause_and_resume_in_pairs(loop: EventLoop, run_until: RunUntil) -> None:
    flow = FlowControl(high_water=256 * 1024, low_water=64 * 1024)
    data = PAYLOAD[: 4 * MiB]
    reader, sender = _through_a_slow_reader(loop, run_until, lambda: Sender(data, 48 * 1024), flow)
    assert reader.data == data
    marks = sender.marks
    kinds = [kind for kind, _ in marks]
    assert kinds, "4 MiB through a 256 KiB high water mark never paused"
    assert kinds == ["pause", "resume"] * (len(kinds) // 2), f"not in pairs: {kinds}"
    for kind, queued in marks:
        if kind == "pause":
            assert queued > flow.high_water
        else:
            assert queued <= flow.low_water


def test_a_producer_writing_until_paused_is_paused_within_its_callback(
    loop: EventLoop, run_until: RunUntil
) -> None:
    # Sender writes in a loop until writing_paused, inside connection_made (an
    # iteration): output collected for the end of the iteration must still reach
    # the queue at the high water mark, or 4 MiB would pile up past max_buffer.
    flow = FlowControl(high_water=64 * 1024, max_buffer=1 * MiB)
    data = PAYLOAD[: 4 * MiB]
    reader, sender = _through_a_slow_reader(loop, run_until, lambda: Sender(data, 16 * 1024), flow)
    assert sender.lost == [] or sender.lost == [None], f"aborted: {sender.lost}"
    assert reader.data == data
    assert 0 < sender.queued_after_first_write <= flow.high_water, "first write collected"
    assert sender.marks and sender.marks[0][0] == "pause"
    assert sender.marks[0][1] <= flow.high_water + 16 * 1024, "paused at the mark, not later"


class Flooder(Recorder):
    """On b"flood", writes 64 KiB every millisecond, ignoring pause_writing."""

    def __init__(self) -> None:
        super().__init__()
        self.timer: Timer | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        conn = self.connection()
        if data == b"flood":
            self.timer = conn.loop.call_every(0.001, conn.write, b"z" * 65536)
        else:
            conn.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.timer is not None:
            self.timer.cancel()


def test_max_buffer_aborts_a_peer_that_does_not_read(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    flow = FlowControl(high_water=64 * 1024, max_buffer=1 * MiB)
    protocols = Collect(Flooder)
    server = loop.listen("127.0.0.1", 0, protocols, flow=flow)
    with small_buffers_client(server.port) as stuck, client(server.port) as healthy:
        run_until(lambda: len(protocols) == 2)
        with caplog.at_level(logging.WARNING, logger="imreactor.net"):
            stuck.sendall(b"flood")
            flooder = protocols.made[0]
            run_until(lambda: flooder.lost, what="the flooded connection was aborted")
        assert len(flooder.lost) == 1
        assert isinstance(flooder.lost[0], PeerTooSlow)
        assert any("max_buffer" in r.getMessage() for r in caplog.records)
        assert flooder.events.count("pause") == 1, "paused once, then aborted (never resumed)"
        # The other connection is served as before.
        assert roundtrip(loop, healthy, b"still served") == b"still served"
        assert protocols.made[1].lost == []


def test_graceful_close_flushes_queued_output_before_the_fin(
    loop: EventLoop, run_until: RunUntil
) -> None:
    data = PAYLOAD[: 2 * MiB]
    states: list[tuple[ConnState, int]] = []

    class WriteThenClose(Recorder):
        def connection_made(self, conn: Transport) -> None:
            super().connection_made(conn)
            assert isinstance(conn, Connection)  # a TCP socket option
            conn.set_send_buffer_size(32 * 1024)
            conn.write(data)
            conn.close()
            states.append((conn.state, conn.write_buffer_size))
            conn.write(b"dropped: after close")

    protocols = Collect(WriteThenClose)
    server = loop.listen("127.0.0.1", 0, protocols)
    with small_buffers_client(server.port) as sock:
        run_until(lambda: states)
        state, queued = states[0]
        assert state is ConnState.CLOSING
        assert queued > 0, "nothing was left to flush: the test proves nothing"
        reader = SlowReader(sock)
        reader.start()
        run_until(lambda: reader.done.is_set(), timeout_s=30)
    assert reader.error is None
    assert reader.data == data, "every queued byte before the FIN, nothing after"
    run_until(lambda: protocols.made[0].lost)
    assert protocols.made[0].lost == [None]


def test_abort_drops_queued_output(loop: EventLoop, run_until: RunUntil) -> None:
    data = PAYLOAD[: 2 * MiB]
    queued_at_abort: list[int] = []

    class WriteThenAbort(Recorder):
        def connection_made(self, conn: Transport) -> None:
            super().connection_made(conn)
            assert isinstance(conn, Connection)  # a TCP socket option
            conn.set_send_buffer_size(32 * 1024)
            conn.write(data)
            queued_at_abort.append(conn.write_buffer_size)
            conn.abort()

    protocols = Collect(WriteThenAbort)
    server = loop.listen("127.0.0.1", 0, protocols)
    with small_buffers_client(server.port) as sock:
        run_until(lambda: protocols.made and protocols.made[0].lost)
        got = bytearray()
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(1 << 16):
                got += chunk
    queued = queued_at_abort[0]
    assert queued > 0
    # The peer is reset, not ended: the queued rest never arrives, and at most what the
    # kernel had taken did (a reset may discard that too).
    assert len(got) <= len(data) - queued
    assert got == data[: len(got)]
    assert protocols.made[0].lost == [None]


def test_writability_is_watched_only_while_output_is_queued(
    loop: EventLoop, run_until: RunUntil
) -> None:
    server = loop.listen("127.0.0.1", 0, Echo)
    sender = Sender(PAYLOAD[:MiB], MiB, close=False)
    conn = loop.connect("127.0.0.1", server.port, sender)
    run_until(lambda: sender.made and conn.write_buffer_size > 0)
    assert conn._events & WRITABLE
    run_until(lambda: len(sender.received) == MiB, timeout_s=30, what="the echo of 1 MiB")
    assert sender.received == PAYLOAD[:MiB]
    assert conn.write_buffer_size == 0
    assert not conn._events & WRITABLE, "a drained connection must not be woken for writability"


class PauseFails(Recorder):
    """A protocol whose pause_writing raises."""

    def pause_writing(self) -> None:
        super().pause_writing()
        raise RuntimeError("pause_writing failed")


class WritesToOther(Echo):
    """Echoes, and on b"flood" writes 4 MiB to ``other`` (one write, from its own handler)."""

    other: Connection | None = None

    def data_received(self, data: bytes) -> None:
        if data == b"flood":
            assert self.other is not None
            self.other.write(b"z" * (4 * MiB))
            self.other.write(b"more")  # the queue is past high water; still this handler
        else:
            super().data_received(data)


def test_a_failing_pause_writing_aborts_its_own_connection_not_the_writers(
    loop: EventLoop, run_until: RunUntil, caplog: pytest.LogCaptureFixture
) -> None:
    # A's handler writes to B; B's queue crosses high water, and B's pause_writing
    # raises. The failure is B's: B is aborted, A (whose handler made the write)
    # keeps being served, and the error is logged.
    made: list[Recorder] = []

    def make() -> Recorder:
        proto: Recorder = WritesToOther() if not made else PauseFails()
        made.append(proto)
        return proto

    server = loop.listen("127.0.0.1", 0, make, flow=FlowControl(high_water=64 * 1024))
    with client(server.port) as a:
        run_until(lambda: len(made) == 1)
        with small_buffers_client(server.port):  # B never reads
            run_until(lambda: len(made) == 2)
            writer, paused = made
            assert isinstance(writer, WritesToOther)
            writer.other = paused.tcp()
            with caplog.at_level(logging.ERROR, logger="imreactor.net.connection"):
                a.sendall(b"flood")
                run_until(lambda: paused.lost, what="B aborted")
            assert isinstance(paused.lost[0], RuntimeError)
            assert "pause_writing failed" in caplog.text
            assert roundtrip(loop, a, b"still served") == b"still served"
            assert writer.lost == []
