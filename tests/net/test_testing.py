"""The shipped test doubles: FakeClock, and in-memory transport pairs that keep the
Connection contract (order, chunking, water marks, max_buffer, close and abort, exactly one
connection_lost) and combine with the fake clock for timeout tests."""

from __future__ import annotations

import logging
from typing import cast

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
from imreactor.net.testing import FakeClock, MemoryTransport, transport_pair

from .helpers import Recorder

pytestmark = pytest.mark.timeout(30)


def state(transport: MemoryTransport) -> ConnState:
    return transport.state


def pump(loop: EventLoop, times: int = 5) -> None:
    for _ in range(times):
        loop.run_once(0)


def test_fake_clock() -> None:
    clock = FakeClock()
    assert clock() == 0.0 == clock.now
    clock.advance(1.5)
    clock.advance(0)
    assert clock() == 1.5
    with pytest.raises(ValueError):
        clock.advance(-0.1)
    assert FakeClock(100.0)() == 100.0


def test_a_pair_delivers_in_order_from_the_loop(fake_loop: EventLoop) -> None:
    a, b = Recorder(), Recorder()
    ta, tb = transport_pair(fake_loop, a, b)
    assert a.conn is cast("Connection", ta) and b.conn is cast("Connection", tb)
    assert a.states == [("made", ConnState.CONNECTED)]
    assert ta.remote_address == tb.local_address and ta.local_address == tb.remote_address
    ta.write(b"hello ")
    ta.writelines([b"wor", b"ld"])
    tb.write(bytearray(b"back"))
    assert b.received == b"", "nothing before the loop runs"
    pump(fake_loop)
    assert b.received == b"hello world"
    assert a.received == b"back"
    assert ta.write_buffer_size == 0


@pytest.mark.parametrize("chunk_size", [1, 2, 7])
def test_chunk_size_splits_the_stream(fake_loop: EventLoop, chunk_size: int) -> None:
    b = Recorder()
    ta, _ = transport_pair(fake_loop, Recorder(), b, chunk_size=chunk_size)
    data = bytes(range(50))
    ta.write(data)
    pump(fake_loop)
    assert b.received == data
    assert b.data_calls == -(-len(data) // chunk_size)
    with pytest.raises(ValueError):
        MemoryTransport(fake_loop, Recorder(), chunk_size=0)


def test_water_marks_and_paused_reading(fake_loop: EventLoop) -> None:
    flow = FlowControl(high_water=100, low_water=10, max_buffer=1000)
    writer, reader = Recorder(), Recorder()
    tw, tr = transport_pair(fake_loop, writer, reader, flow=flow, chunk_size=30)
    tr.pause_reading()
    assert not tr.reading
    tw.write(b"x" * 60)
    tw.write(b"x" * 60)
    assert writer.events == ["made", "pause"] and tw.writing_paused
    assert tw.write_buffer_size == 120
    pump(fake_loop)
    assert reader.received == b"", "paused reading holds the input back"
    tr.resume_reading()
    pump(fake_loop)
    assert len(reader.received) == 120
    assert writer.events == ["made", "pause", "resume"]
    assert not tw.writing_paused


def test_max_buffer_aborts_the_writer(
    fake_loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    flow = FlowControl(high_water=100, low_water=10, max_buffer=500)
    writer, reader = Recorder(), Recorder()
    tw, tr = transport_pair(fake_loop, writer, reader, flow=flow)
    tr.pause_reading()
    with caplog.at_level(logging.WARNING, logger="imreactor.net"):
        for _ in range(10):
            tw.write(b"y" * 100)
    assert tw.state is ConnState.CLOSED
    pump(fake_loop)
    assert len(writer.lost) == 1 and isinstance(writer.lost[0], PeerTooSlow)
    assert len(reader.lost) == 1 and isinstance(reader.lost[0], ConnectionResetError)
    assert reader.received == b"", "a reset discards what was not read"


def test_close_delivers_then_eof_and_both_sides_lose_once(fake_loop: EventLoop) -> None:
    a, b = Recorder(), Recorder()
    ta, tb = transport_pair(fake_loop, a, b)
    closes: list[BaseException | None] = []
    ta.add_close_callback(lambda t, exc: closes.append(exc))
    ta.write(b"last words")
    ta.close()
    ta.close()
    assert state(ta) is ConnState.CLOSING
    ta.write(b"dropped")
    tb.write(b"dropped too: A no longer reads")
    pump(fake_loop)
    assert b.received == b"last words"
    assert a.received == b""
    assert a.lost == [None] and b.lost == [None]
    assert closes == [None]
    assert ta.state is ConnState.CLOSED and tb.state is ConnState.CLOSED
    assert ta.local_address is None and ta.write_buffer_size == 0
    late: list[BaseException | None] = []
    ta.add_close_callback(lambda t, exc: late.append(exc))
    pump(fake_loop)
    assert late == [None]


def test_abort_drops_undelivered_output_and_resets_the_peer(fake_loop: EventLoop) -> None:
    a, b = Recorder(), Recorder()
    ta, _ = transport_pair(fake_loop, a, b)
    ta.write(b"never delivered")
    ta.abort(ValueError("kick"))
    ta.abort()
    ta.close()
    pump(fake_loop)
    assert b.received == b""
    assert len(a.lost) == 1 and isinstance(a.lost[0], ValueError)
    assert len(b.lost) == 1 and isinstance(b.lost[0], ConnectionResetError)


@pytest.mark.parametrize("aborts_first", [False, True])
def test_an_exception_in_data_received_aborts_that_side(
    fake_loop: EventLoop, caplog: pytest.LogCaptureFixture, aborts_first: bool
) -> None:
    class Bad(Recorder):
        def data_received(self, data: bytes) -> None:
            if aborts_first:
                self.connection().abort()
            raise RuntimeError("bug")

    bad, good = Bad(), Recorder()
    _, tgood = transport_pair(fake_loop, bad, good)
    with caplog.at_level(logging.ERROR, logger="imreactor.net"):
        tgood.write(b"boom")
        pump(fake_loop)
    # Lost once: with the error, or with the abort that came before it.
    assert len(bad.lost) == 1
    assert bad.lost[0] is None if aborts_first else isinstance(bad.lost[0], RuntimeError)
    assert len(good.lost) == 1 and isinstance(good.lost[0], ConnectionResetError)
    assert any(r.exc_info for r in caplog.records)
    assert "data_received failed" in caplog.text


def test_a_failing_pause_or_resume_writing_aborts_the_writer_only(
    fake_loop: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    class FailsOn(Recorder):
        def __init__(self, callback: str) -> None:
            super().__init__()
            self.callback = callback

        def pause_writing(self) -> None:
            super().pause_writing()
            if self.callback == "pause":
                raise RuntimeError("pause bug")

        def resume_writing(self) -> None:
            super().resume_writing()
            if self.callback == "resume":
                raise RuntimeError("resume bug")

    flow = FlowControl(high_water=100, low_water=10, max_buffer=1000)
    for callback in ("pause", "resume"):
        writer, reader = FailsOn(callback), Recorder()
        tw, tr = transport_pair(fake_loop, writer, reader, flow=flow)
        tr.pause_reading()
        with caplog.at_level(logging.ERROR, logger="imreactor.net"):
            tw.write(b"x" * 150)  # crosses high water: never raises into the caller
            tr.resume_reading()  # the reader's reading resumes the writer
            pump(fake_loop)
        assert len(writer.lost) == 1 and isinstance(writer.lost[0], RuntimeError), callback
        assert f"{callback}_writing failed" in caplog.text
        assert reader.data_calls <= 1, "the reader was not blamed"
        assert len(reader.lost) == 1 and isinstance(reader.lost[0], ConnectionResetError)


def test_no_flow_callback_after_connection_lost_and_a_side_is_lost_once(
    fake_loop: EventLoop, clock: FakeClock
) -> None:
    class Writer(Recorder):
        def resume_writing(self) -> None:
            super().resume_writing()
            self.connection().write(b"more")

    class AbortsThenFails(Recorder):
        def pause_writing(self) -> None:
            super().pause_writing()
            self.connection().abort()
            raise RuntimeError("after abort")

    flow = FlowControl(high_water=100, low_water=10, max_buffer=1000, close_timeout_s=5.0)
    # A paused writer closes and times out while the reader does not read; when the
    # reader reads at last, the closed writer is not resumed.
    writer, reader = Writer(), Recorder()
    tw, tr = transport_pair(fake_loop, writer, reader, flow=flow)
    tr.pause_reading()
    tw.write(b"x" * 200)
    tw.close()
    pump(fake_loop)
    clock.advance(6.0)
    pump(fake_loop)
    assert writer.lost == [None]
    tr.resume_reading()
    pump(fake_loop)
    assert writer.lost == [None] and "resume" not in writer.events
    # A pause_writing that aborts its own side and then raises: lost once, with the abort.
    aborter, other = AbortsThenFails(), Recorder()
    ta, _ = transport_pair(fake_loop, aborter, other, flow=flow)
    ta.write(b"y" * 200)
    pump(fake_loop)
    assert aborter.lost == [None]


def test_close_times_out_when_the_peer_never_reads(fake_loop: EventLoop, clock: FakeClock) -> None:
    a, b = Recorder(), Recorder()
    ta, tb = transport_pair(fake_loop, a, b, flow=FlowControl(close_timeout_s=5.0))
    tb.pause_reading()  # B never reads, so never sees the EOF
    ta.write(b"pending")
    ta.close()
    pump(fake_loop)
    assert state(ta) is ConnState.CLOSING and a.lost == []
    clock.advance(5.0)
    pump(fake_loop)
    assert ta.state is ConnState.CLOSED and a.lost == [None]
    tb.resume_reading()
    pump(fake_loop)
    assert b.received == b"pending" and b.lost == [None]


class IdleKicker(Recorder):
    """Closes a connection that stays silent for IDLE_S (what the fake clock is for)."""

    IDLE_S = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.timer: Timer | None = None

    def connection_made(self, conn: Transport) -> None:
        super().connection_made(conn)
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.connection().loop.call_later(self.IDLE_S, self.connection().close)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm()


def test_an_idle_timeout_with_the_fake_clock(fake_loop: EventLoop, clock: FakeClock) -> None:
    server, peer = IdleKicker(), Recorder()
    _, tpeer = transport_pair(fake_loop, server, peer)
    for _ in range(5):
        clock.advance(20.0)
        tpeer.write(b"ping")
        pump(fake_loop)
    assert server.lost == [], "kept alive by traffic"
    clock.advance(29.0)
    pump(fake_loop)
    assert server.lost == []
    clock.advance(1.0)
    pump(fake_loop)
    assert server.lost == [None] and peer.lost == [None]
