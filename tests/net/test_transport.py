"""The transport conformance suite: one set of cases, run on every transport.

Each case gets two connected transports (``a`` and ``b``) with recording
protocols, made by a :data:`PairMaker`: real TCP socket pairs over loopback on
every poller backend this OS has, and the in-memory pair of
:mod:`imreactor.net.testing`. Whatever a protocol may rely on (the
:class:`~imreactor.net.transport.Transport` contract) is checked here the same way
for each; a new transport (WebSocket, say) adds its maker to :func:`pair_kinds`.
TLS runs the whole suite on every backend, over certificates of a private CA
made once per run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from imreactor.net import ConnState, EventLoop, FlowControl, PeerTooSlow, Transport
from imreactor.net.poller import available
from imreactor.net.testing import transport_pair

from . import pki
from .helpers import Recorder, drive_until, run_for


class Flow(Recorder):
    """Records pause_writing / resume_writing too."""

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")


@dataclass
class Pair:
    loop: EventLoop
    a: Transport
    b: Transport
    pa: Flow
    pb: Flow

    def until(self, predicate: Callable[[], object], what: str = "") -> None:
        drive_until(self.loop, predicate, what=what)


PairMaker = Callable[[EventLoop, FlowControl], Pair]


def _tcp(loop: EventLoop, flow: FlowControl) -> Pair:
    accepted: list[Flow] = []

    def factory() -> Flow:
        accepted.append(Flow())
        return accepted[-1]

    server = loop.listen("127.0.0.1", 0, factory, flow=flow)
    pa = Flow()
    loop.connect("127.0.0.1", server.port, pa, flow=flow)
    drive_until(loop, lambda: pa.conn is not None and accepted and accepted[0].conn, what="made")
    server.close()
    pb = accepted[0]
    assert pa.conn is not None and pb.conn is not None
    return Pair(loop, pa.conn, pb.conn, pa, pb)


def _tls(loop: EventLoop, flow: FlowControl) -> Pair:
    accepted: list[Flow] = []

    def factory() -> Flow:
        accepted.append(Flow())
        return accepted[-1]

    server = loop.listen("127.0.0.1", 0, factory, flow=flow, ssl=pki.server_ctx())
    pa = Flow()
    loop.connect("127.0.0.1", server.port, pa, flow=flow, ssl=pki.client_ctx())
    drive_until(loop, lambda: pa.conn is not None and accepted and accepted[0].conn, what="made")
    server.close()
    pb = accepted[0]
    assert pa.conn is not None and pb.conn is not None
    return Pair(loop, pa.conn, pb.conn, pa, pb)


def _memory(loop: EventLoop, flow: FlowControl) -> Pair:
    pa, pb = Flow(), Flow()
    a, b = transport_pair(loop, pa, pb, flow=flow, chunk_size=1000)
    return Pair(loop, a, b, pa, pb)


def pair_kinds() -> list[object]:
    kinds: list[object] = [pytest.param(("select", _memory), id="memory")]
    for backend in ("epoll", "kqueue", "poll", "select"):
        for name, maker in (("tcp", _tcp), ("tls", _tls)):
            if backend in available():
                kinds.append(pytest.param((backend, maker), id=f"{name}-{backend}"))
            else:
                why = f"the {backend} poller does not exist on {sys.platform}"
                kinds.append(
                    pytest.param(
                        (backend, maker), id=f"{name}-{backend}", marks=pytest.mark.skip(why)
                    )
                )
    return kinds


@pytest.fixture(params=pair_kinds())
def kind(request: pytest.FixtureRequest) -> tuple[str, PairMaker]:
    value: tuple[str, PairMaker] = request.param
    return value


@pytest.fixture
def tloop(kind: tuple[str, PairMaker]) -> Iterator[EventLoop]:
    loop = EventLoop(kind[0])
    yield loop
    loop.close()


@pytest.fixture
def make(kind: tuple[str, PairMaker], tloop: EventLoop) -> Iterator[Callable[..., Pair]]:
    made: list[Pair] = []

    def build(flow: FlowControl | None = None) -> Pair:
        pair = kind[1](tloop, flow or FlowControl())
        made.append(pair)
        return pair

    yield build
    for pair in made:
        pair.a.abort()
        pair.b.abort()
    run_for(tloop, 0.05)


def test_both_ends_are_connected_and_established(make: Callable[..., Pair]) -> None:
    p = make()
    for t in (p.a, p.b):
        assert t.state is ConnState.CONNECTED
        assert t.established
        assert t.reading
        assert not t.writing_paused
        assert t.write_buffer_size == 0
        assert t.local_address is not None and t.remote_address is not None
    assert p.pa.events == ["made"] and p.pb.events == ["made"]


def test_bytes_arrive_in_order_both_ways(make: Callable[..., Pair]) -> None:
    p = make()
    payload = bytes(range(256)) * 400  # 100 KiB, so any transport splits it
    p.a.write(payload[:1000])
    p.a.writelines([memoryview(payload)[1000:50_000], bytearray(payload[50_000:])])
    p.b.write(b"back")
    p.until(lambda: len(p.pb.received) == len(payload) and p.pa.received == b"back")
    assert bytes(p.pb.received) == payload


def test_close_sends_what_was_written_then_ends_both_sides_once(
    make: Callable[..., Pair],
) -> None:
    p = make()
    p.a.write(b"last words")
    p.a.close()
    p.a.close()  # idempotent
    p.a.write(b"ignored")  # not CONNECTED any more
    p.until(lambda: p.pb.lost, "b sees the end")
    assert p.pb.received == b"last words"
    assert p.pb.lost == [None]
    p.b.close()
    p.until(lambda: p.pa.lost, "a closes once b did")
    run_for(p.loop, 0.05)
    assert p.pa.lost == [None] and p.pb.lost == [None]
    assert p.a.state is ConnState.CLOSED and p.b.state is ConnState.CLOSED
    assert p.a.established


def test_abort_drops_output_and_the_peer_sees_an_error(make: Callable[..., Pair]) -> None:
    p = make()
    p.b.pause_reading()  # so that the written bytes are still queued somewhere
    p.a.abort()
    p.until(lambda: p.pa.lost, "a closed")
    assert p.a.state is ConnState.CLOSED
    p.b.resume_reading()
    p.until(lambda: p.pb.lost, "b closed")
    assert isinstance(p.pb.lost[0], ConnectionError)
    run_for(p.loop, 0.05)
    assert len(p.pa.lost) == 1 and len(p.pb.lost) == 1


def test_paused_reading_delivers_nothing_until_resumed(make: Callable[..., Pair]) -> None:
    p = make()
    p.b.pause_reading()
    assert not p.b.reading
    p.a.write(b"held back")
    run_for(p.loop, 0.1)
    assert p.pb.received == b""
    p.b.resume_reading()
    p.until(lambda: p.pb.received == b"held back")


def test_water_marks_pause_and_resume_the_writer_in_pairs(make: Callable[..., Pair]) -> None:
    p = make(FlowControl(high_water=64 * 1024, max_buffer=512 * 1024 * 1024))
    p.b.pause_reading()
    chunk = b"x" * 65536
    written = 0
    # Fill whatever the transport (and a kernel) holds until the writer is paused.
    while not p.a.writing_paused and written < 256 * 1024 * 1024:
        p.a.write(chunk)
        written += len(chunk)
        p.loop.run_once(0)
    assert p.a.writing_paused
    assert p.pa.events.count("pause_writing") == 1
    assert p.a.write_buffer_size > 64 * 1024
    p.b.resume_reading()
    p.until(lambda: len(p.pb.received) == written, "everything delivered")
    p.until(lambda: not p.a.writing_paused)
    assert p.pa.events[1:] == ["pause_writing", "resume_writing"]
    assert p.a.write_buffer_size == 0


def test_output_over_max_buffer_aborts_the_writer_only(make: Callable[..., Pair]) -> None:
    p = make(FlowControl(high_water=1024, max_buffer=256 * 1024))
    p.b.pause_reading()
    chunk = b"y" * 65536
    for _ in range(4096):  # at most 256 MiB: far beyond any kernel buffer
        if p.a.state is not ConnState.CONNECTED:
            break
        p.a.write(chunk)
        p.loop.run_once(0)
    p.until(lambda: p.pa.lost, "the writer aborted")
    assert isinstance(p.pa.lost[0], PeerTooSlow)


def test_close_callbacks_run_once_with_the_transport(make: Callable[..., Pair]) -> None:
    p = make()
    calls: list[tuple[Transport, BaseException | None]] = []
    p.a.add_close_callback(lambda t, exc: calls.append((t, exc)))
    p.a.close()
    p.b.close()
    p.until(lambda: calls, "the callback ran")
    run_for(p.loop, 0.05)
    assert calls == [(p.a, None)]
    late: list[Transport] = []
    p.a.add_close_callback(lambda t, exc: late.append(t))  # already closed: at once
    p.until(lambda: late)
    assert late == [p.a]


def test_a_failing_callback_aborts_that_side_only(
    make: Callable[..., Pair], caplog: pytest.LogCaptureFixture
) -> None:
    p = make()

    def broken(data: bytes) -> None:
        raise RuntimeError("protocol bug")

    p.pb.data_received = broken  # type: ignore[method-assign]
    p.a.write(b"trigger")
    p.until(lambda: p.pb.lost, "b aborted")
    assert isinstance(p.pb.lost[0], RuntimeError)
    assert "protocol bug" in caplog.text
    p.until(lambda: p.pa.lost, "a sees b gone")
    assert p.b.state is ConnState.CLOSED
