"""TLS on the reactor: ``ssl.SSLObject`` over memory BIOs, layered on a TCP connection.

A :class:`TLSTransport` is two things at once: the protocol of a TCP
:class:`~imreactor.net.connection.Connection` below it (which carries the
ciphertext) and a :class:`~imreactor.net.transport.Transport` for the protocol
above it (which sees plaintext). OpenSSL never touches a socket: ciphertext
read by the TCP connection is written into the incoming BIO, and whatever
OpenSSL puts in the outgoing BIO is written to the TCP connection. So TLS runs
on every poller backend, and everything the TCP connection does holds for the
ciphertext: one ``send`` per loop iteration for all the records written in it,
water marks and ``pause_writing`` (passed up to the protocol above), the output
cap (``PeerTooSlow``), the close deadline, the reset on abort.

States (the handshake is one of them)::

    CONNECTING ──► HANDSHAKING ──► CONNECTED ──► CLOSING ──► CLOSED
      (TCP)           │ (fails, times out)         ▲ (abort)   ▲
                      └────────────────────────────┴───────────┘

- The protocol above hears ``connection_made`` only once the handshake is done
  (on a listener, it is created then: a peer that never finishes the handshake
  costs no protocol object). A handshake that fails, or does not finish within
  ``handshake_timeout_s``, is logged once with the peer's address; an outgoing
  connection then gets ``connection_failed(exc)``.
- Certificates and host names are verified by the ``SSLContext`` (use
  :func:`client_context`): ``server_hostname`` is checked against the
  certificate and sent as SNI.
- ``close()`` sends ``close_notify`` after the queued output, then the TCP FIN;
  a ``close_notify`` from the peer is its orderly end of stream
  (``connection_lost(None)``), while a TCP EOF without one is reported as
  ``ConnectionResetError`` (the stream may have been cut). ``abort()`` sends
  neither: a reset, as on TCP.
- Renegotiation is refused (``OP_NO_RENEGOTIATION`` on every context this
  module makes, and set on contexts passed in): it is a known source of
  denial of service and of confusion about who the peer is.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .connection import DEFAULT_FLOW, FlowControl, PeerTooSlow
from .layered import LayeredTransport
from .transport import Buffer, CloseCallback, ConnState
from .transport import Protocol as BaseProtocol

if TYPE_CHECKING:
    from .connection import Connection
    from .loop import EventLoop
    from .timers import Timer

log = logging.getLogger(__name__)

#: How long a handshake may take by default (asyncio's is 60 s; a server under a
#: handshake flood wants the slots back sooner).
HANDSHAKE_TIMEOUT_S = 10.0

# One SSL_read returns at most one record (16 KiB of plaintext); a larger buffer
# only costs allocation.
_READ_SIZE = 16 * 1024 + 64

CONNECTING = ConnState.CONNECTING
HANDSHAKING = ConnState.HANDSHAKING
CONNECTED = ConnState.CONNECTED
CLOSING = ConnState.CLOSING
CLOSED = ConnState.CLOSED


class TLSHandshakeTimeout(TimeoutError):
    """The peer did not finish the TLS handshake in time."""


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """Refuse renegotiation and anything older than TLS 1.2 on ``context``; returns it."""
    context.options |= ssl.OP_NO_RENEGOTIATION
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(
    cert_file: str, key_file: str, *, client_ca_file: str | None = None
) -> ssl.SSLContext:
    """A server context with this certificate chain and key.

    With ``client_ca_file`` every client must present a certificate signed by
    that CA (mutual TLS, as between servers). Raises ``OSError`` or
    ``ssl.SSLError`` for unreadable or mismatched files.
    """
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_file: str | None = None, *, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name.

    ``ca_file``: the CA to trust (default: the system's). ``cert_file`` and
    ``key_file``: this client's own certificate, for servers that require one.
    """
    context = harden(ssl.create_default_context(cafile=ca_file))
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def describe(address: Any) -> str:
    """``host:port`` of a socket address, for log lines."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return repr(address)


class TLSTransport(LayeredTransport):
    """One TLS connection: the protocol of its TCP connection, the transport of its own.

    Made by :func:`connect_tls` and by listeners given ``ssl=`` (see
    :func:`accepting`), not directly. Loop thread only. The methods
    ``connection_made`` ... ``resume_writing`` are the TCP connection's calls into
    this layer; the rest is the :class:`~imreactor.net.transport.Transport`
    contract, for the protocol above.
    """

    __slots__ = (
        "_clean",
        "_error",
        "_factory",
        "_handshake_timeout_s",
        "_incoming",
        "_lower",
        "_outgoing",
        "_pending",
        "_plain",
        "_reading",
        "_sslobj",
        "_timer",
    )

    def __init__(
        self,
        loop: EventLoop,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        protocol: BaseProtocol | None = None,
        factory: Callable[[], BaseProtocol] | None = None,
        server_hostname: str | None = None,
        handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self._loop = loop
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._app = protocol  # the protocol above; on a listener, made after the handshake
        self._factory = factory
        self._lower: Connection | None = None
        self._state = CONNECTING
        self._established = False
        self._reading = True
        self._wpaused = False
        self._pending: list[bytes] | None = None  # plaintext written before CONNECTED
        # Plaintext written while the protocol handles one read: encrypted together
        # afterwards, so the answers to one read become as few records as they fit in.
        self._plain: list[bytes] | None = None
        self._timer: Timer | None = None
        self._handshake_timeout_s = handshake_timeout_s
        self._error: BaseException | None = None  # why it ends, when we know first
        self._reported = False  # connection_lost / connection_failed delivered
        # The stream ended on purpose: close_notify sent or received, or our abort.
        # A TCP EOF without it may be a cut, and is not reported as orderly.
        self._clean = False
        self._close_callbacks: list[CloseCallback] | None = None

    # -- the transport contract: introspection -------------------------------------------------

    @property
    def lower(self) -> Connection | None:
        """The TCP connection that carries the ciphertext (for socket options)."""
        return self._lower

    @property
    def fileno(self) -> int:
        """The TCP socket's descriptor (-1 before TCP exists or once closed)."""
        return self._lower.fileno if self._lower is not None else -1

    @property
    def socket(self) -> socket.socket | None:
        """The TCP socket below (for socket options), or None once closed."""
        return self._lower.socket if self._lower is not None else None

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The ``SSLObject``: peer certificate, cipher, version, ALPN."""
        return self._sslobj

    def peer_certificate(self) -> dict[str, Any] | None:
        """The verified peer certificate (``SSLObject.getpeercert()``), if it sent one."""
        if not self._established:
            return None
        return self._sslobj.getpeercert() or None

    @property
    def local_address(self) -> Any:
        return self._lower.local_address if self._lower is not None else None

    @property
    def remote_address(self) -> Any:
        return self._lower.remote_address if self._lower is not None else None

    @property
    def write_buffer_size(self) -> int:
        size = self._lower.write_buffer_size if self._lower is not None else 0
        for queued in (self._pending, self._plain):
            if queued:
                size += sum(len(chunk) for chunk in queued)
        return size

    @property
    def reading(self) -> bool:
        return self._reading and self._state is CONNECTED

    def __repr__(self) -> str:
        side = "server" if self._sslobj.server_side else "client"
        return f"<TLSTransport {side} {self._state.value} {describe(self.remote_address)}>"

    # -- the transport contract: writing, reading, closing -------------------------------------

    def write(self, data: Buffer) -> None:
        """Encrypt ``data`` into records and hand them to the TCP connection, which
        sends everything written in one loop iteration with one ``send``.

        What is written while the protocol handles one read is encrypted together
        when it returns (in order with everything else): one ``SSLObject.write``
        and as few records as fit, instead of one record per small write.
        """
        if not data:
            return
        if self._state is CONNECTED:
            plain = self._plain
            if plain is not None:
                plain.append(data if type(data) is bytes else bytes(data))
                return
            self._sslobj.write(data)
            lower = self._lower
            assert lower is not None
            lower.write(self._outgoing.read())
        elif self._state is CONNECTING or self._state is HANDSHAKING:
            if self._pending is None:
                self._pending = []
            self._pending.append(bytes(data))
            lower = self._lower
            if lower is not None and self.write_buffer_size > lower.flow.max_buffer:
                self.abort(PeerTooSlow("output queued during the TLS handshake passed max_buffer"))
        # closing or closed: dropped, as on TCP

    def writelines(self, chunks: Iterable[Buffer]) -> None:
        self.write(b"".join(chunks))

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
            if self._state is CONNECTED and (self._incoming.pending or self._sslobj.pending()):
                # Records that arrived before the pause are already in the BIO: the
                # socket may never become readable for them again.
                self._loop.call_soon(self._read_if_reading)

    def close(self) -> None:
        """Send what is queued, then ``close_notify``, then the TCP FIN. Idempotent."""
        state = self._state
        if state is CLOSING or state is CLOSED:
            return
        if self._plain:
            self._flush_plain()  # what the protocol wrote before closing goes first
        self._state = CLOSING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lower = self._lower
        if state is CONNECTED:
            self._send_close_notify()
        if lower is not None:
            lower.close()

    def abort(self, exc: BaseException | None = None) -> None:
        """Close now with a reset: no ``close_notify``, queued output dropped. Idempotent."""
        if self._state is CLOSED:
            return
        self._state = CLOSED
        self._clean = True
        self._pending = None
        self._plain = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is not None and self._error is None:
            self._error = exc
        if self._lower is not None:
            self._lower.abort(exc)

    # -- the TCP connection's calls --------------------------------------------------------------

    def connection_made(self, conn: Any) -> None:
        """TCP is connected (or accepted): start the handshake."""
        self._lower = conn
        if self._state is not CONNECTING:
            return  # closed meanwhile: the TCP connection follows
        self._state = HANDSHAKING
        if not self._reading:
            conn.pause_reading()
        if self._handshake_timeout_s is not None:
            self._timer = self._loop.call_later(
                self._handshake_timeout_s, self._handshake_timed_out
            )
        self._handshake()

    def connection_failed(self, exc: BaseException) -> None:
        """The TCP connect failed: so did this connection."""
        self._state = CLOSED
        self._report(exc)

    def data_received(self, data: bytes) -> None:
        """Ciphertext arrived."""
        self._incoming.write(data)
        state = self._state
        if state is CONNECTED:
            if self._reading:
                self._read_records()
        elif state is HANDSHAKING:
            self._handshake()
        # CLOSING: our close_notify is out; what the peer still sends is dropped

    def connection_lost(self, exc: BaseException | None) -> None:
        """The TCP connection is closed (by either side)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state = CLOSED
        self._report(self._error or exc)

    # -- inside ----------------------------------------------------------------------------------

    def _flush_plain(self) -> None:
        plain, self._plain = self._plain, None
        if plain and self._state is CONNECTED:
            self._sslobj.write(plain[0] if len(plain) == 1 else b"".join(plain))
            lower = self._lower
            assert lower is not None
            lower.write(self._outgoing.read())

    def _flush_outgoing(self) -> None:
        if self._outgoing.pending and self._lower is not None:
            self._lower.write(self._outgoing.read())

    def _handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_outgoing()
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._handshake_failed(exc)
            return
        self._flush_outgoing()
        self._handshake_done()

    def _handshake_failed(self, exc: BaseException) -> None:
        # Bad input from one peer: one line, no traceback; only this connection ends.
        # A client's caller gets the error itself (connection_failed), so it is not
        # logged twice; a server has no caller to tell.
        level = logging.WARNING if self._sslobj.server_side else logging.DEBUG
        log.log(level, "TLS handshake with %s failed: %s", describe(self.remote_address), exc)
        self._error = exc
        self._state = CLOSING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush_outgoing()  # the alert that tells the peer why
        if self._lower is not None:
            self._lower.close()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state is HANDSHAKING:
            exc = TLSHandshakeTimeout(
                f"TLS handshake did not finish in {self._handshake_timeout_s:g} s"
            )
            level = logging.WARNING if self._sslobj.server_side else logging.DEBUG
            log.log(level, "TLS handshake with %s: %s", describe(self.remote_address), exc)
            self.abort(exc)

    def _handshake_done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state = CONNECTED
        self._established = True
        if self._app is None:
            assert self._factory is not None
            self._app = self._factory()
        self._app.connection_made(self)
        if self._wpaused:
            self._app.pause_writing()
        pending = self._pending
        if pending and self._state is CONNECTED:
            self._pending = None
            for chunk in pending:
                self.write(chunk)
        # Application data may have come in the same segment as the handshake's end.
        if self._state is CONNECTED and self._reading and self._incoming.pending:
            self._read_records()

    def _read_if_reading(self) -> None:
        if self._state is CONNECTED and self._reading:
            self._read_records()

    def _read_records(self) -> None:
        sslobj = self._sslobj
        incoming = self._incoming
        read = sslobj.read
        chunks: list[bytes] = []
        end: BaseException | bool | None = False  # False: the stream goes on
        try:
            while True:
                chunk = read(_READ_SIZE)
                if not chunk:  # an EOF inside the TLS layer: treated as close_notify
                    end = None
                    self._clean = True
                    break
                chunks.append(chunk)
                # Stop before the read that would only raise SSLWantReadError.
                if not incoming.pending and not sslobj.pending():
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            end = None  # close_notify: the peer's orderly end of stream
            self._clean = True
        except ssl.SSLError as exc:
            log.warning("TLS error from %s: %s", describe(self.remote_address), exc)
            end = exc
        if self._outgoing.pending:  # post-handshake messages (a KeyUpdate answer, say)
            self._flush_outgoing()
        if chunks:
            app = self._app
            assert app is not None
            self._plain = []
            try:
                app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            finally:
                self._flush_plain()
        if end is not False:
            if end is None:
                self._peer_closed()
            else:
                assert isinstance(end, BaseException)
                self.abort(end)

    def _peer_closed(self) -> None:
        # Answer close_notify with ours after what is queued, then FIN, as TCP
        # answers an EOF; connection_lost(None) follows from the TCP connection.
        if self._state is CONNECTED:
            self.close()

    def _send_close_notify(self) -> None:
        self._clean = True
        try:
            self._sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is out; we do not wait for the peer's
        except ssl.SSLError as exc:
            log.debug("%r: close_notify not sent: %s", self, exc)
        self._flush_outgoing()

    def _report(self, exc: BaseException | None) -> None:
        if self._reported:
            return
        self._reported = True
        app = self._app
        try:
            if self._established:
                if exc is None and not self._clean:
                    exc = ConnectionResetError("TLS stream ended without close_notify")
                assert app is not None
                app.connection_lost(exc)
            else:
                failure = exc or ConnectionAbortedError("closed during the TLS handshake")
                if app is not None:
                    app.connection_failed(failure)
                elif self._error is None and exc is not None:
                    log.info("TLS connection from %s lost: %s", describe(self.remote_address), exc)
        finally:
            self._closed_callbacks(exc)


def accepting(
    loop: EventLoop,
    context: ssl.SSLContext,
    factory: Callable[[], BaseProtocol],
    handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
) -> Callable[[], TLSTransport]:
    """A listener's protocol factory that puts TLS between each accepted TCP
    connection and a protocol made by ``factory`` once its handshake is done."""
    harden(context)

    def make() -> TLSTransport:
        return TLSTransport(
            loop,
            context,
            server_side=True,
            factory=factory,
            handshake_timeout_s=handshake_timeout_s,
        )

    return make


def connect_tls(
    loop: EventLoop,
    host: str,
    port: int,
    protocol: BaseProtocol,
    context: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
    handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
    timeout_s: float | None = 10.0,
    flow: FlowControl = DEFAULT_FLOW,
    nodelay: bool = True,
    source: tuple[str, int] | None = None,
) -> TLSTransport:
    """:func:`~imreactor.net.connection.connect`, then a TLS handshake; returns the
    CONNECTING transport.

    ``server_hostname`` (default: ``host`` when the context checks host names) is
    sent as SNI and verified against the server's certificate. ``protocol`` gets
    ``connection_made`` after the handshake, or ``connection_failed`` with the
    TCP error, the ``ssl.SSLCertVerificationError``, or
    :class:`TLSHandshakeTimeout`.
    """
    from .connection import connect

    harden(context)
    if server_hostname is None and context.check_hostname:
        server_hostname = host
    tls = TLSTransport(
        loop,
        context,
        server_side=False,
        protocol=protocol,
        server_hostname=server_hostname,
        handshake_timeout_s=handshake_timeout_s,
    )
    tls._lower = connect(
        loop, host, port, tls, timeout_s=timeout_s, flow=flow, nodelay=nodelay, source=source
    )
    return tls
