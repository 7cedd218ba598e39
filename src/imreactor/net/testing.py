"""Test doubles for code built on the reactor: a fake clock and in-memory connections.

:class:`FakeClock` is a loop clock that moves only when told::

    clock = FakeClock()
    loop = EventLoop(clock=clock)
    loop.call_later(30.0, on_idle)
    clock.advance(30.0)
    loop.run_once(0)          # runs on_idle; 0: never block on a fake deadline

Drive a loop on a fake clock with ``run_once(0)``: the loop derives its poll
timeout from the fake deadlines, so a blocking ``run()`` would wait for them in
real time.

:func:`transport_pair` connects two protocols through :class:`MemoryTransport`
objects instead of sockets, for unit tests of framing, flow control and
timeouts that need no kernel. :class:`MemoryTransport` implements the
:class:`~imreactor.net.transport.Transport` contract, as
:class:`~imreactor.net.connection.Connection` does, and keeps its call order:

- ``connection_made`` once per side, from :func:`transport_pair` itself;
- ``data_received`` from a loop callback, in order, at most ``chunk_size``
  bytes at a time (any chunk size gives a different split of the same stream);
- ``pause_writing``/``resume_writing`` in pairs when the bytes written but not
  yet delivered cross ``flow.high_water`` and then ``flow.low_water``; above
  ``flow.max_buffer`` the writer is aborted with :class:`PeerTooSlow`;
- ``connection_lost`` exactly once, from a loop callback: ``None`` after EOF or
  a graceful close, :class:`ConnectionResetError` when the peer aborted.

``close()`` delivers what was written, then EOF; the closing side drops input
and becomes CLOSED when the peer closes in turn or after
``flow.close_timeout_s``. ``abort()`` drops undelivered output and resets the
peer. An exception escaping ``connection_made``, ``data_received``,
``pause_writing`` or ``resume_writing`` is logged and aborts that side only.
Nothing is delivered until the loop runs (``run_once`` or ``run``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .connection import DEFAULT_FLOW, FlowControl, PeerTooSlow
from .transport import Buffer, CloseCallback, ConnState, Protocol

if TYPE_CHECKING:
    from .loop import EventLoop
    from .timers import Timer

log = logging.getLogger(__name__)

__all__ = ["FakeClock", "MemoryTransport", "transport_pair"]


_pair_ids = itertools.count(1)


class FakeClock:
    """A monotonic clock for ``EventLoop(clock=...)`` that only :meth:`advance` moves."""

    __slots__ = ("_now",)

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = start_s

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The current fake time, in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward. Timers that became due run on the loop's next iteration."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self._now += seconds


class MemoryTransport:
    """One end of an in-memory connection (see the module docstring). Loop thread only."""

    def __init__(
        self,
        loop: EventLoop,
        protocol: Protocol,
        *,
        flow: FlowControl = DEFAULT_FLOW,
        chunk_size: int | None = None,
        address: Any = None,
    ) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self._loop = loop
        self.protocol = protocol
        self.flow = flow
        self.chunk_size = chunk_size
        self.address = address
        self.state = ConnState.IDLE
        #: True once the transport reached CONNECTED (stays True after it closes).
        self.established = False
        self.peer: MemoryTransport | None = None
        self._inbox = bytearray()  # written by the peer, not delivered to our protocol yet
        self._peer_closed = False  # the peer sent EOF: deliver it after the inbox
        self._peer_reset: BaseException | None = None  # the peer aborted
        self._scheduled = False
        self._reading = True
        self._paused = False
        self._timer: Timer | None = None
        self._close_callbacks: list[CloseCallback] | None = None

    # -- the Transport contract -------------------------------------------------------------

    @property
    def loop(self) -> EventLoop:
        return self._loop

    @property
    def fileno(self) -> int:
        """Always -1: there is no fd."""
        return -1

    @property
    def socket(self) -> None:
        """Always None: there is no socket."""
        return None

    @property
    def local_address(self) -> Any:
        return self.address if self.state is not ConnState.CLOSED else None

    @property
    def remote_address(self) -> Any:
        if self.state is ConnState.CLOSED or self.peer is None:
            return None
        return self.peer.address

    @property
    def write_buffer_size(self) -> int:
        """Bytes written and not yet delivered to the peer's protocol."""
        peer = self.peer
        if self.state is ConnState.CLOSED or peer is None:
            return 0
        return len(peer._inbox)

    @property
    def writing_paused(self) -> bool:
        return self._paused

    @property
    def reading(self) -> bool:
        return self._reading and self.state is ConnState.CONNECTED

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.address} {self.state.value}>"

    def add_close_callback(self, callback: CloseCallback) -> None:
        """Call ``callback(transport, exc)`` once, right after ``connection_lost``."""
        if self.state is ConnState.CLOSED:
            self._loop.call_soon(callback, self, None)
            return
        if self._close_callbacks is None:
            self._close_callbacks = []
        self._close_callbacks.append(callback)

    def write(self, data: Buffer) -> None:
        """Queue ``data`` for the peer. Dropped unless CONNECTED (as after ``close()``)."""
        peer = self.peer
        if self.state is not ConnState.CONNECTED or peer is None or not data:
            return
        if peer.state is ConnState.CLOSED:
            return  # the bytes would go to a closed socket: the kernel drops them
        peer._inbox += data
        peer._schedule()
        size = len(peer._inbox)
        flow = self.flow
        if size > flow.high_water:
            if size > flow.max_buffer:
                log.warning("%r: %d bytes undelivered; aborting", self, size)
                self._close_now(PeerTooSlow(f"{size} bytes of output queued"), reset=True)
            elif not self._paused:
                self._paused = True
                self._flow_callback(self.protocol.pause_writing, "pause_writing")

    def writelines(self, chunks: Iterable[Buffer]) -> None:
        self.write(b"".join(chunks))

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._schedule()

    def close(self) -> None:
        """Graceful close: the peer gets what was written, then EOF. Idempotent."""
        if self.state is not ConnState.CONNECTED:
            if self.state is ConnState.IDLE:
                self.state = ConnState.CLOSED
            return
        self.state = ConnState.CLOSING
        self._inbox.clear()  # input is dropped from now on
        peer = self.peer
        assert peer is not None
        peer._peer_closed = True
        peer._schedule()
        self._timer = self._loop.call_later(self.flow.close_timeout_s, self._close_deadline)
        self._schedule()  # the peer may have closed already

    def abort(self, exc: BaseException | None = None) -> None:
        """Close now: undelivered output is dropped and the peer is reset. Idempotent."""
        if self.state is ConnState.CONNECTED or self.state is ConnState.CLOSING:
            self._close_now(exc, reset=True)
        elif self.state is ConnState.IDLE:
            self.state = ConnState.CLOSED

    # -- delivery ---------------------------------------------------------------------------

    def _start(self) -> None:
        self.state = ConnState.CONNECTED
        self.established = True
        try:
            self.protocol.connection_made(self)
        except Exception as exc:
            self._protocol_failed("connection_made", exc)

    def _schedule(self) -> None:
        if not self._scheduled and self.state is not ConnState.CLOSED:
            self._scheduled = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        inbox = self._inbox
        while self.state is ConnState.CONNECTED and self._reading and inbox:
            size = self.chunk_size or len(inbox)
            chunk = bytes(inbox[:size])
            del inbox[:size]
            try:
                self.protocol.data_received(chunk)
            except Exception as exc:
                self._protocol_failed("data_received", exc)
                return
            self._peer_read()
        if self.state is ConnState.CLOSED:
            return
        if self.state is ConnState.CLOSING and inbox:
            inbox.clear()  # read and dropped while closing, as a Connection does
            self._peer_read()
        if self._peer_reset is not None:
            self._close_now(self._peer_reset, reset=False)
        elif self._peer_closed and not inbox:
            self._close_now(None, reset=False)

    def _peer_read(self) -> None:
        # Our protocol consumed input: the writer at the other end may resume.
        writer = self.peer
        if (
            writer is not None
            and writer._paused
            and writer.state is not ConnState.CLOSED  # no callbacks after connection_lost
            and len(self._inbox) <= writer.flow.low_water
        ):
            writer._paused = False
            writer._flow_callback(writer.protocol.resume_writing, "resume_writing")

    def _flow_callback(self, callback: Callable[[], object], what: str) -> None:
        # Reached from the other side's code (its write, its read): a failure is
        # this side's, as with a Connection, and aborts this side only.
        try:
            callback()
        except Exception as exc:
            self._protocol_failed(what, exc)

    def _protocol_failed(self, what: str, exc: BaseException) -> None:
        """A protocol callback raised: log it and abort this side (once; the callback
        may have closed it before raising), as ``Connection.handle_error`` does."""
        log.error("%r: %s failed; aborting", self, what, exc_info=exc)
        if self.state is not ConnState.CLOSED:
            self._close_now(exc, reset=True)

    def _close_deadline(self) -> None:
        self._timer = None
        if self.state is ConnState.CLOSING:
            log.info("%r: graceful close timed out; aborting", self)
            self._close_now(None, reset=False)

    def _close_now(self, exc: BaseException | None, *, reset: bool) -> None:
        """The one close path: CLOSED now, ``connection_lost(exc)`` from the loop."""
        self.state = ConnState.CLOSED
        self._inbox.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        peer = self.peer
        if peer is not None and peer.state is not ConnState.CLOSED:
            if reset:
                peer._inbox.clear()  # a reset discards what the peer has not read
                peer._peer_reset = ConnectionResetError("connection reset by peer")
            else:
                peer._peer_closed = True
            peer._schedule()
        self._loop.call_soon(self._notify_lost, exc)

    def _notify_lost(self, exc: BaseException | None) -> None:
        try:
            self.protocol.connection_lost(exc)
        finally:
            callbacks = self._close_callbacks
            self._close_callbacks = None
            for callback in callbacks or ():
                try:
                    callback(self, exc)
                except Exception:
                    log.exception("close callback %r failed", callback)


def transport_pair(
    loop: EventLoop,
    protocol_a: Protocol,
    protocol_b: Protocol,
    *,
    flow: FlowControl = DEFAULT_FLOW,
    chunk_size: int | None = None,
) -> tuple[MemoryTransport, MemoryTransport]:
    """Connect two protocols in memory; ``connection_made`` runs for ``a`` then ``b``.

    ``flow`` applies to both ends; ``chunk_size`` caps each ``data_received``
    on both ends (None: everything pending at once).
    """
    pair = next(_pair_ids)
    a = MemoryTransport(loop, protocol_a, flow=flow, chunk_size=chunk_size, address=("a", pair))
    b = MemoryTransport(loop, protocol_b, flow=flow, chunk_size=chunk_size, address=("b", pair))
    a.peer = b
    b.peer = a
    a._start()
    b._start()
    return a, b
