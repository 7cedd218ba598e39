"""WebSocket on the reactor: websockets' sans-IO protocol, layered on a TCP or TLS transport.

Both sides: :class:`WebSocketTransport` is the server side of one accepted
connection (made by :func:`accepting`), :class:`WebSocketClientTransport` the
client side of one outgoing connection (made by :func:`connect_websocket`, or
``loop.connect(..., websocket="/path")``). Everything below the handshake is
theirs in common (:class:`WebSocketLayer`).

A WebSocket transport is, like :class:`~imreactor.net.tls.TLSTransport`, two
things at once: the protocol of the transport below it (a TCP
:class:`~imreactor.net.connection.Connection`, or a ``TLSTransport`` for WSS), which
carries the HTTP upgrade and then the frames, and a
:class:`~imreactor.net.transport.Transport` for the protocol above it, which sees
*messages*. The library (``websockets.server.ServerProtocol``, or
``websockets.client.ClientProtocol``) never touches a socket:
bytes read below are fed to it, and whatever it wants sent is written below. So
everything the transport below does holds here too: coalesced sends, water marks
(passed up as ``pause_writing``), the output cap, the reset on abort. The data path
of a message skips it: whole binary frames are cut and built here (the library's
parser was most of a message's cost), and every other frame goes to it whole
(:meth:`WebSocketLayer.data_received`).

Messages, not a stream: each :meth:`~WebSocketTransport.write` is sent as one binary
message, and each binary message received (fragments joined) is one ``data_received``
call. A protocol that writes one unit per ``write`` (msg_server writes one PDU per
write) thus gets one unit per message both ways. ``message_check`` may refuse a
message that is not one whole unit (close code 1007).

States::

    CONNECTING ──► HANDSHAKING ──► CONNECTED ──► CLOSING ──► CLOSED
     (TCP/TLS)      │ (HTTP upgrade refused or too slow)  ▲ (abort)  ▲
                    └─────────────────────────────────────┴──────────┘

- The protocol above is made (listener side) and hears ``connection_made`` only
  after a valid upgrade: plain HTTP (answered 426), a malformed request (400, or
  the stream just ends), an ``Origin`` outside ``origins`` (403), and a request not
  done within ``handshake_timeout_s`` each cost one log line and no protocol object.
- The client side sends its upgrade request as soon as the stream below is up
  (for WSS: once the TLS handshake is done), and its protocol hears
  ``connection_made`` once the server's 101 answer is verified
  (``Sec-WebSocket-Accept``), or ``connection_failed`` with why not: the TCP or
  TLS error, a refusal (``websockets.exceptions.InvalidStatus``, e.g. 403 for an
  origin the server does not allow), a malformed answer, or
  :class:`WebSocketHandshakeTimeout`. Its messages are masked, as RFC 6455 says
  every client's must be.
- Close codes: :meth:`~WebSocketTransport.close` sends 1000 after the queued
  messages (``close_with`` another), waits up to ``close_timeout_s`` for the peer's
  answer, then closes below. A text message is refused with 1003, a message over
  ``max_message_bytes`` (its size counted before it is buffered) with 1009, a message
  ``message_check`` refuses with 1007, a protocol error with 1002; each is logged
  with the peer's address and ends only that connection. A close frame from the peer
  is its orderly end of stream (``connection_lost(None)``); a stream that ends
  without one is reported as ``ConnectionResetError``.
- Keepalive: after ``ping_interval_s`` in which nothing arrived, a ping is sent; a
  pong (any frame, really) is reported to the protocol above as
  :meth:`~imreactor.net.transport.Protocol.keepalive_received`, so a browser whose
  page is asleep (its timers throttled) still counts as alive while its WebSocket
  answers pings. Closing a peer that stays silent is the protocol's timeout's job.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import CLIENT, OPEN, SEND_EOF
from websockets.protocol import Protocol as SansIOProtocol
from websockets.server import ServerProtocol
from websockets.typing import Origin
from websockets.uri import parse_uri

try:  # the library's C masking, as its own frames use; else its Python one
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build without the C extension
    from websockets.utils import apply_mask

from .connection import DEFAULT_FLOW, FlowControl, connect
from .layered import LayeredTransport
from .tls import connect_tls
from .transport import Buffer, CloseCallback, ConnState
from .transport import Protocol as BaseProtocol

if TYPE_CHECKING:
    from ssl import SSLContext

    from .loop import EventLoop
    from .timers import Timer
    from .transport import Transport

log = logging.getLogger(__name__)
# The library's own lines (each open and close at INFO) go to a logger of ours, where
# an operator can silence them apart from the transport's.
_library_log = logging.getLogger(__name__ + ".protocol")

#: How long the HTTP upgrade may take by default (as for a TLS handshake).
HANDSHAKE_TIMEOUT_S = 10.0
#: How long close() waits for the peer's close frame before closing the stream below.
CLOSE_TIMEOUT_S = 2.0

MessageCheck = Callable[[bytes], "str | None"]
"""``check(message)``: why the message is refused (closed with 1007), or None to take it."""

CONNECTING = ConnState.CONNECTING
HANDSHAKING = ConnState.HANDSHAKING
CONNECTED = ConnState.CONNECTED
CLOSING = ConnState.CLOSING
CLOSED = ConnState.CLOSED


class WebSocketHandshakeTimeout(TimeoutError):
    """The peer did not finish the HTTP upgrade in time."""


class WebSocketClosed(ConnectionError):
    """The connection was closed with a WebSocket close code other than 1000/1001."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"WebSocket closed with {code}: {reason}" if reason else f"closed {code}")
        self.code = code
        self.reason = reason


def describe(address: Any) -> str:
    """``host:port`` of a socket address, for log lines."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return repr(address)


class WebSocketLayer(LayeredTransport):
    """What both sides of a WebSocket connection share: the frames, once upgraded.

    Loop thread only. ``connection_made`` ... ``resume_writing`` are the calls of the
    transport below; the rest is the :class:`~imreactor.net.transport.Transport`
    contract for the protocol above, with messages for chunks (module docstring).
    A side sets ``_ws`` (its sans-IO protocol) and implements the handshake: what
    an event of it means (:meth:`_handshake_event`), what a failed one means
    (:meth:`_handshake_failed`), and what an end before it means (:meth:`_ended_early`).
    """

    __slots__ = (
        "_close_timeout_s",
        "_error",
        "_fragments",
        "_handshake_timeout_s",
        "_head_tail",
        "_heard",
        "_inbox",
        "_lower",
        "_masked",
        "_message_check",
        "_ping_timer",
        "_reading",
        "_rx",
        "_timer",
        "_ws",
        "ping_interval_s",
    )

    def __init__(
        self,
        loop: EventLoop,
        ws: SansIOProtocol,
        *,
        message_check: MessageCheck | None,
        ping_interval_s: float | None,
        handshake_timeout_s: float | None,
        close_timeout_s: float,
    ) -> None:
        self._loop = loop
        self._ws = ws
        self._masked = ws.side is CLIENT  # a client masks every frame (RFC 6455 5.3)
        self._message_check = message_check
        self.ping_interval_s = ping_interval_s
        self._close_timeout_s = close_timeout_s
        self._app: BaseProtocol | None = None
        self._lower: Transport | None = None
        self._state = CONNECTING
        self._established = False
        self._reading = True
        self._wpaused = False
        self._inbox: deque[bytes] | None = None  # messages parsed while reading was paused
        self._fragments: list[bytes] | None = None  # a fragmented message so far
        self._heard = False  # a frame arrived since the last ping tick
        #: Once upgraded: bytes of a frame not complete yet (None: the library reads).
        self._rx: bytearray | None = None
        #: Before the upgrade: the last bytes given to the library, to find the end of
        #: the HTTP head across reads (None: found, or not looked for any more).
        self._head_tail: bytes | None = b""
        self._handshake_timeout_s = handshake_timeout_s
        self._timer: Timer | None = None
        self._ping_timer: Timer | None = None
        self._error: BaseException | None = None
        self._reported = False
        self._close_callbacks: list[CloseCallback] | None = None

    # -- the transport contract: introspection -------------------------------------------------

    @property
    def lower(self) -> Transport | None:
        """The transport that carries the frames (TCP, or TLS for WSS)."""
        return self._lower

    @property
    def socket(self) -> socket.socket | None:
        """The TCP socket at the bottom (for socket options), or None once closed."""
        return getattr(self._lower, "socket", None)

    @property
    def local_address(self) -> Any:
        return self._lower.local_address if self._lower is not None else None

    @property
    def remote_address(self) -> Any:
        return self._lower.remote_address if self._lower is not None else None

    @property
    def write_buffer_size(self) -> int:
        return self._lower.write_buffer_size if self._lower is not None else 0

    @property
    def reading(self) -> bool:
        return self._reading and self._state is CONNECTED

    @property
    def close_code(self) -> int | None:
        """The close code received from the peer, or sent to it; None before a close."""
        ws = self._ws
        close = ws.close_rcvd or ws.close_sent
        return int(close.code) if close is not None else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.value} {describe(self.remote_address)}>"

    # -- the transport contract: writing, reading, closing -------------------------------------

    def write(self, data: Buffer) -> None:
        """Send ``data`` as one binary message. Ignored unless CONNECTED."""
        if self._state is CONNECTED and self._ws.state is OPEN:
            lower = self._lower
            assert lower is not None
            # The frame is built here rather than by the library (send_binary): the
            # data path of every message, and the same bytes, without the Frame
            # object, its checks and a BytesIO. That is sound because what the
            # library queues is always flushed at once (so nothing it wants sent can
            # be overtaken), no extension is ever negotiated (none is offered or
            # accepted), and this layer never sends fragments.
            lower.write(binary_frame(data, self._masked))

    def writelines(self, chunks: Iterable[Buffer]) -> None:
        """Each chunk is its own message, in order."""
        for chunk in chunks:
            self.write(chunk)

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            if self._lower is not None:
                self._lower.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            if self._lower is not None:
                self._lower.resume_reading()
            if self._inbox:
                # Parsed before the pause: the socket will not become readable for them.
                self._loop.call_soon(self._deliver_inbox)

    def close(self) -> None:
        """Close with 1000 (normal closure) after what is queued. Idempotent."""
        self.close_with(CloseCode.NORMAL_CLOSURE)

    def close_with(self, code: int, reason: str = "") -> None:
        """Send a close frame with ``code`` and ``reason``; the stream below closes when
        the peer answers, or after ``close_timeout_s``. Idempotent."""
        state = self._state
        if state is CLOSING or state is CLOSED:
            return
        self._state = CLOSING
        self._cancel_timers()
        if self._ws.state is OPEN:
            self._ws.send_close(code, reason)
            self._flush()
            self._timer = self._loop.call_later(self._close_timeout_s, self._close_lower)
        else:
            self._close_lower()

    def abort(self, exc: BaseException | None = None) -> None:
        """Reset the stream below now: no close frame, queued output dropped. Idempotent."""
        if self._state is CLOSED:
            return
        self._state = CLOSED
        self._cancel_timers()
        self._inbox = None
        if exc is not None and self._error is None:
            self._error = exc
        if self._lower is not None:
            self._lower.abort(exc)

    # -- the calls of the transport below ---------------------------------------------------------

    def connection_made(self, conn: Any) -> None:
        """The stream below is up (TCP connected, or TLS handshake done): the upgrade."""
        self._lower = conn
        if self._state is not CONNECTING:
            return
        self._state = HANDSHAKING
        if not self._reading:
            conn.pause_reading()
        if self._handshake_timeout_s is not None:
            self._timer = self._loop.call_later(
                self._handshake_timeout_s, self._handshake_timed_out
            )

    def connection_failed(self, exc: BaseException) -> None:
        self._state = CLOSED
        self._report(exc)

    def data_received(self, data: bytes) -> None:
        """Bytes of the upgrade or of frames arrived.

        Frames are cut here (:meth:`_receive_frames`): a final binary frame, masked as
        it must be, is a message at once; every other frame (control frames, fragments,
        text, anything malformed) is handed to the library whole, so that it is always
        at a frame boundary and its checks, answers and close codes stay its own.
        """
        rx = self._rx
        if rx is not None:
            if self._state is CONNECTED and self._ws.state is OPEN:
                if rx:
                    rx += data
                    self._receive_frames(rx)
                else:
                    self._receive_frames(data)
                return
            # Closing or failed: the library reads what is left, only for a close frame.
            self._rx = None
            if rx:
                data = bytes(rx) + data
        elif not self._established:
            data = self._upgrade_bytes(data)
            if not data:
                return
        self._feed_library(data)

    def _upgrade_bytes(self, data: bytes) -> bytes:
        """Of ``data`` read before the upgrade is done: what goes to the library now.

        Only the HTTP head goes: what follows its blank line is kept back, to be cut
        into frames here once the upgrade is accepted, or given to the library too if
        it is not (a refusal's body, or the stream after a bad request).
        """
        if self._head_tail is None:
            return data
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = seen[-3:]
            return data
        cut = end + 4 - len(self._head_tail)  # where the head ends within ``data``
        self._head_tail = None
        self._feed_library(data[:cut])
        rest = data[cut:]
        if self._established and self._state is CONNECTED:
            self._rx = bytearray()
            if rest:
                self._receive_frames(rest)
            return b""
        return rest

    def _receive_frames(self, buf: bytes | bytearray) -> None:
        """Deliver the complete frames at the start of ``buf``; keep the rest in ``_rx``."""
        ws = self._ws
        want_mask = 0 if self._masked else _MASK_BIT  # a server reads masked frames only
        limit = ws.max_message_size
        if limit is None:
            limit = 1 << 62
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            if self._state is not CONNECTED or ws.state is not OPEN:
                # A message closed the connection: the library reads the rest.
                self._rx = None
                self._feed_library(bytes(buf[pos:]))
                return
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                (length,) = _LENGTH_16(buf, pos + 2)
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                (length,) = _LENGTH_64(buf, pos + 2)
                head = 10
            if b1 & _MASK_BIT:
                head += 4
            if length > limit:
                # Refused from its header, before its body is buffered (1009).
                self._rx = None
                self._feed_library(bytes(buf[pos:]))
                return
            end = pos + head + length
            if end > size:
                break
            if b0 == _FIN_BINARY and b1 & _MASK_BIT == want_mask and self._fragments is None:
                if want_mask:
                    key = bytes(buf[pos + head - 4 : pos + head])
                    payload = apply_mask(buf[pos + head : end], key)
                else:
                    payload = bytes(buf[pos + head : end])
                self._heard = True
                self._message(payload)
            else:
                self._feed_library(bytes(buf[pos:end]))
            pos = end
        if self._rx is None:
            return
        if pos == size:
            self._rx = bytearray()
        elif buf is self._rx:
            del buf[:pos]
        else:
            self._rx = bytearray(memoryview(buf)[pos:])

    def _feed_library(self, data: bytes) -> None:
        """Bytes for websockets' protocol: the upgrade, frames other than whole binary
        messages, and everything once the connection is closing."""
        ws = self._ws
        ws.receive_data(data)
        # Messages that came before a bad frame in the same read are still delivered
        # (what the protocol writes in answer is dropped once the library has failed).
        for event in ws.events_received():
            if isinstance(event, Frame):
                if self._state is CONNECTED:
                    self._frame(event)
                # else: closing; the peer's frames are only read for its close frame,
                # which the library answers itself
            else:
                self._handshake_event(event)
        self._flush()  # pongs, the library's close frame, its end of stream
        if self._error is None:
            if ws.parser_exc is not None and self._established:
                self._protocol_error(ws.parser_exc)
            elif ws.handshake_exc is not None and not self._established:
                self._handshake_failed(ws.handshake_exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The stream below is closed (by either side)."""
        self._cancel_timers()
        self._state = CLOSED
        self._inbox = None
        ws = self._ws
        if exc is None and self._established and ws.close_rcvd is None and ws.close_sent is None:
            exc = ConnectionResetError("WebSocket stream ended without a close frame")
        self._report(self._error or exc)

    # -- the handshake: each side's ---------------------------------------------------------------

    def _handshake_event(self, event: Request | Response) -> None:
        """The upgrade request (server) or its answer (client) arrived."""
        raise NotImplementedError

    def _handshake_failed(self, exc: Exception) -> None:
        """The library found the upgrade invalid (it closes the stream itself)."""
        raise NotImplementedError

    def _ended_early(self, exc: BaseException | None) -> None:
        """The connection ended before the upgrade was done (called once)."""
        raise NotImplementedError

    def _open(self) -> None:
        """The upgrade is done: the protocol above hears ``connection_made``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state = CONNECTED
        self._established = True
        if self.ping_interval_s is not None:
            self._ping_timer = self._loop.call_every(self.ping_interval_s, self._ping_tick)
        app = self._app
        assert app is not None
        app.connection_made(self)
        if self._wpaused and self._state is CONNECTED:
            app.pause_writing()

    # -- inside ----------------------------------------------------------------------------------

    def _flush(self) -> None:
        lower = self._lower
        if lower is None:
            return
        for chunk in self._ws.data_to_send():
            if chunk is SEND_EOF or not chunk:
                # The library is done with the stream (its close handshake, a refused
                # upgrade, a failure): what is queued goes out, then the FIN.
                self._close_lower()
                return
            lower.write(chunk)

    def _close_lower(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state is not CLOSED:
            self._state = CLOSING
        if self._lower is not None:
            self._lower.close()

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._ping_timer = None

    def _frame(self, frame: Frame) -> None:
        self._heard = True
        opcode = frame.opcode
        data = frame.data if type(frame.data) is bytes else bytes(frame.data)
        if opcode is Opcode.BINARY:
            if frame.fin:
                self._message(data)
            else:
                self._fragments = [data]
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is None:
                return  # a continuation of a refused text message: the close is under way
            fragments.append(data)
            if frame.fin:
                self._fragments = None
                self._message(b"".join(fragments))
        elif opcode is Opcode.TEXT:
            self._refuse(CloseCode.UNSUPPORTED_DATA, "text messages are not accepted")
        elif opcode is Opcode.PONG or opcode is Opcode.PING:
            app = self._app
            if app is not None:
                app.keepalive_received()
        elif opcode is Opcode.CLOSE:
            close = self._ws.close_rcvd
            if close is not None and close.code not in (
                CloseCode.NORMAL_CLOSURE,
                CloseCode.GOING_AWAY,
                CloseCode.NO_STATUS_RCVD,
            ):
                self._error = WebSocketClosed(int(close.code), close.reason)
            self._state = CLOSING  # the library answered; the stream below is closing

    def _message(self, message: bytes) -> None:
        check = self._message_check
        if check is not None:
            why = check(message)
            if why is not None:
                self._refuse(CloseCode.INVALID_DATA, why)
                return
        if self._reading and not self._inbox:
            app = self._app
            assert app is not None
            app.data_received(message)
        else:
            if self._inbox is None:
                self._inbox = deque()
            self._inbox.append(message)

    def _deliver_inbox(self) -> None:
        inbox = self._inbox
        app = self._app
        while inbox and self._reading and self._state is CONNECTED and app is not None:
            app.data_received(inbox.popleft())

    def _refuse(self, code: int, reason: str) -> None:
        log.warning(
            "WebSocket from %s: %s; closing with %d", describe(self.remote_address), reason, code
        )
        self._error = WebSocketClosed(code, reason)
        self._fragments = None
        self._inbox = None
        self.close_with(code, reason)

    def _protocol_error(self, exc: Exception) -> None:
        # The library has sent its close frame (1002, or 1009 for an oversize message)
        # and the FIN; only the reason is left to tell.
        close = self._ws.close_sent
        code = int(close.code) if close is not None else CloseCode.PROTOCOL_ERROR
        log.warning(
            "WebSocket from %s: %s; closed with %d", describe(self.remote_address), exc, code
        )
        self._error = WebSocketClosed(code, str(exc))
        self._inbox = None
        self._fragments = None
        if self._state is CONNECTED:
            self._state = CLOSING

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state is HANDSHAKING:
            exc = WebSocketHandshakeTimeout("WebSocket upgrade not complete in time; closing")
            self._handshake_failed(exc)
            self.abort(exc)

    def _ping_tick(self) -> None:
        if self._heard:
            self._heard = False
        elif self._state is CONNECTED and self._ws.state is OPEN:
            self._ws.send_ping(b"")
            self._flush()

    def _report(self, exc: BaseException | None) -> None:
        if self._reported:
            return
        self._reported = True
        try:
            if self._established:
                app = self._app
                assert app is not None
                app.connection_lost(exc)
            else:
                self._ended_early(exc)
        finally:
            self._closed_callbacks(exc)


class WebSocketTransport(WebSocketLayer):
    """The server side of one WebSocket connection. Made by :func:`accepting`.

    The protocol above is made by ``factory`` once the upgrade is accepted.
    """

    __slots__ = ("_factory", "request")

    def __init__(
        self,
        loop: EventLoop,
        factory: Callable[[], BaseProtocol],
        *,
        origins: Sequence[str] | None = None,
        max_message_bytes: int = 1 << 20,
        message_check: MessageCheck | None = None,
        ping_interval_s: float | None = 30.0,
        handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        allowed: list[Origin | None] | None = None
        if origins:
            # A request without Origin is not from a browser page, and a non-browser
            # client can send any Origin it likes: only pages are held to the list.
            allowed = [Origin(o) for o in origins]
            allowed.append(None)
        super().__init__(
            loop,
            ServerProtocol(origins=allowed, max_size=max_message_bytes, logger=_library_log),
            message_check=message_check,
            ping_interval_s=ping_interval_s,
            handshake_timeout_s=handshake_timeout_s,
            close_timeout_s=close_timeout_s,
        )
        self._factory = factory
        #: The upgrade request (path, headers such as Origin), once it is accepted.
        self.request: Request | None = None

    def _handshake_event(self, event: Request | Response) -> None:
        if not isinstance(event, Request):
            return
        ws = self._ws
        assert isinstance(ws, ServerProtocol)
        response = ws.accept(event)
        if response.status_code != 101:
            reason = ws.handshake_exc or response.reason_phrase
            log.warning(
                "WebSocket upgrade from %s refused (%d): %s",
                describe(self.remote_address),
                response.status_code,
                _reasons(reason) if isinstance(reason, BaseException) else reason,
            )
            self._error = ws.handshake_exc or ConnectionRefusedError(str(reason))
            ws.send_response(response)
            self._flush()
            return
        ws.send_response(response)
        self._flush()
        self.request = event
        self._app = self._factory()
        self._open()

    def _handshake_failed(self, exc: Exception) -> None:
        # Bad input from one peer: one line, and only this connection ends.
        log.warning(
            "WebSocket port: no valid upgrade request from %s: %s",
            describe(self.remote_address),
            _reasons(exc),
        )
        self._error = exc

    def _ended_early(self, exc: BaseException | None) -> None:
        if exc is not None and self._error is None:
            log.info(
                "WebSocket connection from %s lost before the upgrade: %s",
                describe(self.remote_address),
                exc,
            )


class WebSocketClientTransport(WebSocketLayer):
    """The client side of one WebSocket connection. Made by :func:`connect_websocket`.

    ``protocol`` hears ``connection_made`` once the server's answer to the upgrade
    is verified, or ``connection_failed`` (module docstring). ``uri``: the
    ``ws://`` or ``wss://`` URL asked for (its host and path go in the request).
    """

    __slots__ = ("response",)

    def __init__(
        self,
        loop: EventLoop,
        uri: str,
        protocol: BaseProtocol,
        *,
        origin: str | None = None,
        max_message_bytes: int | None = 1 << 20,
        message_check: MessageCheck | None = None,
        ping_interval_s: float | None = None,
        handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        super().__init__(
            loop,
            ClientProtocol(
                parse_uri(uri),
                origin=Origin(origin) if origin is not None else None,
                max_size=max_message_bytes,
                logger=_library_log,
            ),
            message_check=message_check,
            ping_interval_s=ping_interval_s,
            handshake_timeout_s=handshake_timeout_s,
            close_timeout_s=close_timeout_s,
        )
        self._app = protocol
        #: The server's answer to the upgrade, once it arrived.
        self.response: Response | None = None

    def connection_made(self, conn: Any) -> None:
        """The stream below is up: send the upgrade request."""
        super().connection_made(conn)
        if self._state is HANDSHAKING:
            ws = self._ws
            assert isinstance(ws, ClientProtocol)
            ws.send_request(ws.connect())
            self._flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._established and self._error is None and exc is None:
            # An answer cut short is only known to be malformed at the end of stream.
            ws = self._ws
            ws.receive_eof()
            if ws.handshake_exc is not None:
                self._handshake_failed(ws.handshake_exc)
        super().connection_lost(exc)

    def _handshake_event(self, event: Request | Response) -> None:
        if isinstance(event, Response):
            self.response = event
            exc = self._ws.handshake_exc
            if exc is not None:
                # Refused, or an answer that does not verify: the library ends the
                # stream, and the caller hears this as the reason.
                self._handshake_failed(exc)
            elif self._state is HANDSHAKING:
                self._open()

    def _handshake_failed(self, exc: Exception) -> None:
        # The caller hears why (connection_failed), so it is not logged twice.
        log.debug("WebSocket upgrade at %s failed: %s", describe(self.remote_address), exc)
        self._error = exc

    def _ended_early(self, exc: BaseException | None) -> None:
        app = self._app
        assert app is not None
        app.connection_failed(exc or ConnectionAbortedError("closed during the WebSocket upgrade"))


_HEAD_SHORT = struct.Struct("!BB").pack
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack
_LENGTH_16 = struct.Struct("!H").unpack_from
_LENGTH_64 = struct.Struct("!Q").unpack_from
_FIN_BINARY = 0x80 | Opcode.BINARY
_MASK_BIT = 0x80


def binary_frame(data: Buffer, masked: bool) -> bytes:
    """One final, unfragmented binary frame carrying ``data`` (RFC 6455 5.2), masked with
    a fresh random key when ``masked`` (the client's frames): the bytes websockets'
    ``Frame(BINARY, data).serialize(mask=masked)`` makes."""
    length = len(data)
    mask = _MASK_BIT if masked else 0
    if length < 126:
        head = _HEAD_SHORT(_FIN_BINARY, mask | length)
    elif length < 65536:
        head = _HEAD_16(_FIN_BINARY, mask | 126, length)
    else:
        head = _HEAD_64(_FIN_BINARY, mask | 127, length)
    if masked:
        key = os.urandom(4)
        return head + key + apply_mask(data, key)
    return head + data


def _reasons(exc: BaseException) -> str:
    """``exc`` and its causes, in one line (the library chains the parser's error)."""
    text = str(exc)
    while exc.__cause__ is not None:
        exc = exc.__cause__
        text += f": {exc}"
    return text


def accepting(
    loop: EventLoop,
    factory: Callable[[], BaseProtocol],
    *,
    origins: Sequence[str] | None = None,
    max_message_bytes: int = 1 << 20,
    message_check: MessageCheck | None = None,
    ping_interval_s: float | None = 30.0,
    handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
) -> Callable[[], WebSocketTransport]:
    """A listener's protocol factory that puts a WebSocket server between each accepted
    connection and a protocol made by ``factory`` once its upgrade is accepted.

    Pass it to ``loop.listen`` as is for ``ws://``, or with ``ssl=`` for ``wss://``
    (the upgrade then runs once the TLS handshake is done). ``origins``: the
    ``Origin`` values a browser page may connect from (``"https://chat.example"``);
    None or empty admits every page.
    """
    allowed = list(origins) if origins else None

    def make() -> WebSocketTransport:
        return WebSocketTransport(
            loop,
            factory,
            origins=allowed,
            max_message_bytes=max_message_bytes,
            message_check=message_check,
            ping_interval_s=ping_interval_s,
            handshake_timeout_s=handshake_timeout_s,
        )

    return make


def ws_url(host: str, port: int, path: str = "/", *, secure: bool = False) -> str:
    """The ``ws://`` (``wss://`` with ``secure``) URL of ``path`` at ``host:port``."""
    if not path.startswith("/"):
        raise ValueError(f"a WebSocket path starts with '/', not {path!r}")
    shown = f"[{host}]" if ":" in host else host
    return f"{'wss' if secure else 'ws'}://{shown}:{port}{path}"


def connect_websocket(
    loop: EventLoop,
    host: str,
    port: int,
    protocol: BaseProtocol,
    *,
    path: str = "/",
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    origin: str | None = None,
    max_message_bytes: int | None = 1 << 20,
    message_check: MessageCheck | None = None,
    ping_interval_s: float | None = None,
    handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
    timeout_s: float | None = 10.0,
    flow: FlowControl = DEFAULT_FLOW,
    nodelay: bool = True,
    source: tuple[str, int] | None = None,
) -> WebSocketClientTransport:
    """Connect to the WebSocket at ``ws://host:port/path`` (with ``ssl``: ``wss://``, over
    :func:`~imreactor.net.tls.connect_tls`); returns the CONNECTING transport.

    ``protocol`` gets ``connection_made`` once the upgrade is done, and then one
    ``data_received`` per message; or ``connection_failed`` (module docstring).
    ``handshake_timeout_s`` bounds the upgrade alone (TLS has its own). An OSError
    from resolving or binding is raised here, as by
    :func:`~imreactor.net.connection.connect`.
    """
    ws = WebSocketClientTransport(
        loop,
        ws_url(server_hostname or host, port, path, secure=ssl is not None),
        protocol,
        origin=origin,
        max_message_bytes=max_message_bytes,
        message_check=message_check,
        ping_interval_s=ping_interval_s,
        handshake_timeout_s=handshake_timeout_s,
    )
    lower: Transport
    if ssl is not None:
        lower = connect_tls(
            loop,
            host,
            port,
            ws,
            ssl,
            server_hostname=server_hostname,
            timeout_s=timeout_s,
            flow=flow,
            nodelay=nodelay,
            source=source,
        )
    else:
        lower = connect(
            loop, host, port, ws, timeout_s=timeout_s, flow=flow, nodelay=nodelay, source=source
        )
    ws._lower = lower
    return ws
