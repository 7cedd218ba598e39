"""The transport contract: what a protocol may rely on, whatever carries its bytes.

A *transport* is one end of a byte stream on one loop: TCP
(:class:`~imreactor.net.connection.Connection`), the in-memory double
(:class:`~imreactor.net.testing.MemoryTransport`), and every later transport (TLS,
WebSocket) implement :class:`Transport`; protocols are written against it, never
against one implementation. The conformance suite (``tests/net/test_transport.py``)
runs the same cases on each.

States (:class:`ConnState`)::

    IDLE ──► CONNECTING ──► CONNECTED ──► CLOSING ──► CLOSED
               │  (connect fails)  │  (abort / error)    ▲
               └───────────────────┴─────────────────────┘

(TLS adds HANDSHAKING between CONNECTING and CONNECTED: see :mod:`imreactor.net.tls`;
WebSocket uses it for the HTTP upgrade: :mod:`imreactor.net.websocket`, whose
``data_received`` chunks are whole messages.)

Protocol call order (what every transport guarantees its :class:`Protocol`):

- ``connection_made(transport)`` once, when CONNECTED; for an outgoing connection
  that never connects, ``connection_failed(exc)`` once instead, and nothing else;
- ``data_received(data)`` any number of times while CONNECTED and reading;
- ``pause_writing()`` / ``resume_writing()`` in strict pairs, when the queued
  output crosses the high and then the low water mark;
- ``keepalive_received()`` while CONNECTED, on transports with a liveness signal
  below the data (WebSocket pongs);
- ``connection_lost(exc)`` exactly once after ``connection_made``, from a loop
  callback (never from inside ``write`` or ``close``), with ``None`` for an
  orderly close and the exception otherwise;
- an exception from any of these is logged and aborts this transport only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from typing import Protocol as _Structural

if TYPE_CHECKING:
    from .loop import EventLoop

Buffer = bytes | bytearray | memoryview


class ConnState(enum.Enum):
    """The socket states of the original ``CBaseSocket``, made explicit."""

    IDLE = "idle"
    LISTENING = "listening"
    CONNECTING = "connecting"
    #: TLS only: TCP is connected, the handshake is running (:mod:`imreactor.net.tls`).
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    CLOSING = "closing"
    CLOSED = "closed"


class Transport(_Structural):
    """One end of a byte stream, as its protocol sees it. Loop thread only."""

    @property
    def loop(self) -> EventLoop:
        """The loop every callback of this transport runs on."""
        ...

    @property
    def state(self) -> ConnState:
        """Where the transport is in its life (see the module docstring)."""
        ...

    @property
    def established(self) -> bool:
        """True once it reached CONNECTED (and still True after it closed)."""
        ...

    @property
    def local_address(self) -> Any:
        """This end's address (``getsockname()`` form), or None once closed."""
        ...

    @property
    def remote_address(self) -> Any:
        """The peer's address (``getpeername()`` form), or None once closed."""
        ...

    @property
    def write_buffer_size(self) -> int:
        """Bytes written and not yet handed to the peer (collected and queued)."""
        ...

    @property
    def writing_paused(self) -> bool:
        """True between ``pause_writing()`` and ``resume_writing()``."""
        ...

    @property
    def reading(self) -> bool:
        """False while reading is paused (:meth:`pause_reading`)."""
        ...

    def write(self, data: Buffer) -> None:
        """Queue ``data``; it is sent in order. Ignored unless CONNECTED. Never blocks;
        output over the flow control's ``max_buffer`` aborts with ``PeerTooSlow``."""
        ...

    def writelines(self, chunks: Iterable[Buffer]) -> None:
        """:meth:`write` each chunk, in order."""
        ...

    def pause_reading(self) -> None:
        """No more ``data_received`` until :meth:`resume_reading` (the peer is pushed back)."""
        ...

    def resume_reading(self) -> None:
        """Deliver data again, starting with anything that arrived meanwhile."""
        ...

    def close(self) -> None:
        """Graceful close: queued output is sent, then the stream ends (idempotent)."""
        ...

    def abort(self, exc: BaseException | None = None) -> None:
        """Close now, dropping queued output; ``connection_lost(exc)`` follows."""
        ...

    def add_close_callback(self, callback: CloseCallback) -> None:
        """``callback(transport, exc)`` once it is CLOSED (at once if it already is)."""
        ...


CloseCallback = Callable[[Transport, "BaseException | None"], Any]


class Protocol:
    """Base class for protocols: every callback is optional (no-op here).

    See the module docstring for the call order. Exceptions raised by a callback
    are logged and abort that transport only.
    """

    __slots__ = ()  # subclasses may stay slotted: one protocol object per connection

    def connection_made(self, conn: Transport) -> None:
        """The transport is CONNECTED; keep ``conn`` to write to it."""

    def data_received(self, data: bytes) -> None:
        """Bytes arrived (any split of the stream: framing is the protocol's job)."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """The transport is CLOSED. ``exc`` is None after an orderly close or EOF."""

    def connection_failed(self, exc: BaseException) -> None:
        """An outgoing connection could not be established (refused, timed out, ...)."""

    def pause_writing(self) -> None:
        """Queued output went above the high water mark: stop producing."""

    def resume_writing(self) -> None:
        """Queued output drained to the low water mark: produce again."""

    def keepalive_received(self) -> None:
        """The peer showed it is alive without sending data (a WebSocket pong or ping).

        Only transports with a liveness signal of their own call it; a protocol that
        times out silent peers counts it as something received."""
