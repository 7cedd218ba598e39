"""The original TeamTalk ``netlib`` API — procedural and callback-driven — on one default loop.

Code written against the C++ ``netlib.h`` ports line for line::

    def on_conn(data, msg, handle, param):
        if msg == NETLIB_MSG_READ:
            buf = bytearray(4096)
            while (n := netlib_recv(handle, buf)) > 0:
                netlib_send(handle, memoryview(buf)[:n])
        elif msg == NETLIB_MSG_CLOSE:
            netlib_close(handle)

    def on_listen(data, msg, handle, param):
        if msg == NETLIB_MSG_CONNECT:
            netlib_option(handle, NETLIB_OPT_SET_CALLBACK, on_conn)

    netlib_init()
    netlib_listen("0.0.0.0", 8000, on_listen, None)
    netlib_eventloop()

Everything here is built on the object API (:class:`~imreactor.net.loop.EventLoop`,
:func:`~imreactor.net.acceptor.listen`, :func:`~imreactor.net.connection.connect`,
:class:`~imreactor.net.connection.Connection`, timers, loop callbacks). The only
module-level state is the default context — one loop and its handle table — made
by :func:`netlib_init` or by the first function that needs it, and released by
:func:`netlib_destroy`.

Contracts:

- **Callbacks** are ``callback(callback_data, msg, handle, param)``. ``param`` is None,
  except for ``NETLIB_MSG_CLOSE``, where it is the exception that ended the
  connection (None for an orderly close). An exception raised by a callback is
  logged; raised from a connection's callback it also closes that connection.
- **Handles** are ints from a counter that never repeats (not even across
  ``netlib_destroy``/``netlib_init``), never fds: a handle that was closed stays
  unknown forever, whatever socket later gets its fd number.
- **Unknown handles**: every function taking a handle returns ``NETLIB_ERROR``
  for one (never issued, closed, or of the wrong kind) instead of raising.
- **Events of a connection**: ``CONFIRM`` (outgoing, connected) or ``CONNECT``
  (incoming, delivered to the *listener's* callback with the new handle) first;
  then ``READ`` each time data arrives and ``WRITE`` each time queued output
  drains completely; ``CLOSE`` exactly once at the end — peer close, error,
  failed connect, or after :func:`netlib_close`. The handle is unknown once the
  ``CLOSE`` callback returns.
- **Units**: timer intervals and ``wait_timeout`` are milliseconds, as in the original.
- **Threads**: everything belongs to the thread running :func:`netlib_eventloop`,
  except :func:`netlib_stop_event` and :func:`netlib_is_running`, which any thread may call.
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Callable, Hashable
from ssl import SSLContext
from typing import Any, Final, Literal, TypeAlias, overload

from .acceptor import Server, listen
from .connection import Connection, FlowControl, connect, is_port
from .loop import EventLoop
from .timers import Timer
from .tls import TLSTransport, accepting, connect_tls
from .transport import ConnState, Protocol, Transport

log = logging.getLogger(__name__)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MAX_SEND_BUFFER_BYTES",
    "NETLIB_ERROR",
    "NETLIB_INVALID_HANDLE",
    "NETLIB_MSG_CLOSE",
    "NETLIB_MSG_CONFIRM",
    "NETLIB_MSG_CONNECT",
    "NETLIB_MSG_LOOP",
    "NETLIB_MSG_READ",
    "NETLIB_MSG_TIMER",
    "NETLIB_MSG_WRITE",
    "NETLIB_OK",
    "NETLIB_OPT_GET_LOCAL_IP",
    "NETLIB_OPT_GET_LOCAL_PORT",
    "NETLIB_OPT_GET_REMOTE_IP",
    "NETLIB_OPT_GET_REMOTE_PORT",
    "NETLIB_OPT_SET_CALLBACK",
    "NETLIB_OPT_SET_CALLBACK_DATA",
    "NETLIB_OPT_SET_RECV_BUF_SIZE",
    "NETLIB_OPT_SET_SEND_BUF_SIZE",
    "RECV_BUFFER_HIGH_WATER_BYTES",
    "Callback",
    "netlib_add_loop",
    "netlib_close",
    "netlib_connect",
    "netlib_delete_timer",
    "netlib_destroy",
    "netlib_eventloop",
    "netlib_get_loop",
    "netlib_init",
    "netlib_is_running",
    "netlib_listen",
    "netlib_option",
    "netlib_recv",
    "netlib_register_timer",
    "netlib_send",
    "netlib_stop_event",
]

NETLIB_OK: Final = 0
NETLIB_ERROR: Final = -1
NETLIB_INVALID_HANDLE: Final = -1

# Event codes: the original enum, which starts at 1.
NETLIB_MSG_CONNECT: Final = 1
NETLIB_MSG_CONFIRM: Final = 2
NETLIB_MSG_READ: Final = 3
NETLIB_MSG_WRITE: Final = 4
NETLIB_MSG_CLOSE: Final = 5
NETLIB_MSG_TIMER: Final = 6
NETLIB_MSG_LOOP: Final = 7

# Option codes, in the original enum's order (also starting at 1).
NETLIB_OPT_SET_CALLBACK: Final = 1
NETLIB_OPT_SET_CALLBACK_DATA: Final = 2
NETLIB_OPT_GET_REMOTE_IP: Final = 3
NETLIB_OPT_GET_REMOTE_PORT: Final = 4
NETLIB_OPT_GET_LOCAL_IP: Final = 5
NETLIB_OPT_GET_LOCAL_PORT: Final = 6
NETLIB_OPT_SET_SEND_BUF_SIZE: Final = 7
NETLIB_OPT_SET_RECV_BUF_SIZE: Final = 8

#: ``callback(callback_data, msg, handle, param)``; the return value is ignored.
Callback: TypeAlias = Callable[[Any, int, int, Any], object]

#: Output queued on one connection beyond this means the peer does not read: the
#: connection is closed (``CLOSE`` with :class:`~imreactor.net.connection.PeerTooSlow`)
#: rather than letting memory grow without bound.
MAX_SEND_BUFFER_BYTES: Final = 64 * 1024 * 1024
#: Received bytes not yet taken by :func:`netlib_recv` above which the connection stops
#: reading from its socket (TCP then slows the peer down); reading resumes once the
#: application has taken all but a quarter of this.
RECV_BUFFER_HIGH_WATER_BYTES: Final = 1024 * 1024
_RECV_BUFFER_RESUME_BYTES: Final = RECV_BUFFER_HIGH_WATER_BYTES // 4
#: An outgoing connection that has not connected after this long ends with ``CLOSE``.
CONNECT_TIMEOUT_S: Final = 10.0

# Water marks at zero: the connection calls pause_writing as soon as anything is
# queued and resume_writing once the queue is empty again — exactly the moments
# netlib's WRITE event is about. One object shared by every netlib connection.
_FLOW: Final = FlowControl(high_water=0, low_water=0, max_buffer=MAX_SEND_BUFFER_BYTES)

# Outlives the contexts, so that a handle issued before netlib_destroy() can never
# name a socket opened after the next netlib_init().
_handle_numbers = itertools.count(1)


class _Handle:
    """What a handle names: a listener or a connection, with its callback."""

    __slots__ = ("callback", "data", "handle")

    def __init__(self, handle: int, callback: Callback, data: Any) -> None:
        self.handle = handle
        self.callback = callback
        self.data = data


class _ListenHandle(_Handle):
    __slots__ = ("server",)

    def __init__(self, handle: int, callback: Callback, data: Any, server: Server) -> None:
        super().__init__(handle, callback, data)
        self.server = server


class _ConnHandle(_Handle):
    __slots__ = ("app_closed", "conn", "local", "rbuf", "reading_paused", "remote")

    def __init__(
        self,
        handle: int,
        callback: Callback,
        data: Any,
        conn: Connection | TLSTransport,
        remote: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(handle, callback, data)
        self.conn = conn
        self.rbuf = bytearray()  # received, not yet taken by netlib_recv
        self.reading_paused = False
        # True after netlib_close: the application gave the handle up, so it is
        # unknown to every function, although its CLOSE event is still to come.
        self.app_closed = False
        # Addresses are remembered once connected so that they can still be asked
        # for from the CLOSE callback, when the socket is gone.
        self.remote = remote
        self.local: tuple[str, int] | None = None

    def remember_addresses(self) -> None:
        self.remote = _host_port(self.conn.remote_address) or self.remote
        self.local = _host_port(self.conn.local_address)


def _host_port(address: Any) -> tuple[str, int] | None:
    """``(host, port)`` from a ``getsockname``/``getpeername`` result (IPv4 or IPv6)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


class _NetlibProtocol(Protocol):
    """Turns one connection's protocol callbacks into netlib events.

    Outgoing connections get their handle record right after ``connect()``
    returns (before any callback can run); incoming ones make it in
    ``connection_made``, which is when netlib learns about them.
    """

    __slots__ = ("_ctx", "_listener", "rec")

    def __init__(self, ctx: _Context, listener: _ListenHandle | None) -> None:
        self._ctx = ctx
        self._listener = listener
        self.rec: _ConnHandle | None = None

    def connection_made(self, conn: Transport) -> None:
        # The netlib facade runs on TCP connections, plain or under TLS.
        assert isinstance(conn, Connection | TLSTransport)
        listener = self._listener
        if listener is None:
            rec = self.rec
            assert rec is not None
            rec.remember_addresses()
            rec.callback(rec.data, NETLIB_MSG_CONFIRM, rec.handle, None)
            return
        # As in the original, the new handle starts with the listener's callback and
        # data; the application usually replaces them from inside this CONNECT event,
        # before the connection can deliver anything else.
        rec = _ConnHandle(next(_handle_numbers), listener.callback, listener.data, conn)
        rec.remember_addresses()
        self.rec = rec
        self._ctx.handles[rec.handle] = rec
        listener.callback(listener.data, NETLIB_MSG_CONNECT, rec.handle, None)

    def data_received(self, data: bytes) -> None:
        rec = self.rec
        assert rec is not None
        rec.rbuf += data
        if len(rec.rbuf) > RECV_BUFFER_HIGH_WATER_BYTES and not rec.reading_paused:
            rec.reading_paused = True
            rec.conn.pause_reading()
        rec.callback(rec.data, NETLIB_MSG_READ, rec.handle, None)

    def resume_writing(self) -> None:
        rec = self.rec
        # The connection also drains its queue while closing: the application that
        # called netlib_close is not told about it.
        if rec is not None and not rec.app_closed:
            rec.callback(rec.data, NETLIB_MSG_WRITE, rec.handle, None)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.rec is not None:
            self._ctx.connection_ended(self.rec, exc)

    def connection_failed(self, exc: BaseException) -> None:
        if self.rec is not None:
            self._ctx.connection_ended(self.rec, exc)


class _ByIdentity:
    """A dict key for an unhashable object: the object itself, compared by identity."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByIdentity) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _key(obj: object) -> Hashable:
    # The original compares a C function pointer and a void*: identity. Hashable
    # values compare like dict keys instead, so that netlib_delete_timer(cb, "name")
    # finds the timer registered with another "name" object of the same value.
    try:
        hash(obj)
    except TypeError:
        return _ByIdentity(obj)
    return obj


class _Context:
    """The default loop and what netlib keeps on it. Loop thread only."""

    def __init__(self) -> None:
        self.loop = EventLoop()
        self.handles: dict[int, _Handle] = {}
        self.timers: dict[tuple[Hashable, Hashable], Timer] = {}

    def connection_ended(self, rec: _ConnHandle, exc: BaseException | None) -> None:
        try:
            rec.callback(rec.data, NETLIB_MSG_CLOSE, rec.handle, exc)
        finally:
            self.handles.pop(rec.handle, None)
            rec.app_closed = True
            rec.rbuf = bytearray()

    def close(self) -> None:
        """Close every handle without events, cancel the timers, close the loop."""
        for rec in list(self.handles.values()):
            if isinstance(rec, _ListenHandle):
                rec.server.close()
            elif isinstance(rec, _ConnHandle):
                rec.conn.abort()
        self.handles.clear()
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.loop.close()


_default: _Context | None = None


def _context() -> _Context:
    global _default
    if _default is None:
        _default = _Context()
    return _default


def _conn_handle(handle: int) -> _ConnHandle | None:
    """The live connection named by ``handle``, or None."""
    ctx = _default
    rec = ctx.handles.get(handle) if ctx is not None else None
    if isinstance(rec, _ConnHandle) and not rec.app_closed:
        return rec
    return None


def _any_handle(handle: int) -> _Handle | None:
    """The live listener or connection named by ``handle``, or None."""
    ctx = _default
    rec = ctx.handles.get(handle) if ctx is not None else None
    if rec is None or (isinstance(rec, _ConnHandle) and rec.app_closed):
        return None
    return rec


# -- init and teardown ---------------------------------------------------------------------


def netlib_init() -> int:
    """Create the default context (a new :class:`EventLoop`) if there is none. ``NETLIB_OK``.

    Optional: every function creates the context on first use. The poller is the
    best available one, or the one named by ``$IMREACTOR_POLLER``.
    """
    _context()
    return NETLIB_OK


def netlib_destroy() -> int:
    """Close every handle and timer (without events) and the loop; ``NETLIB_OK``.

    ``NETLIB_ERROR`` while :func:`netlib_eventloop` runs (call it after that
    returns). Connections are aborted, not closed gracefully: nothing would be
    left to send their queued output. Afterwards the next netlib call starts a
    fresh context; handles issued before stay unknown.
    """
    global _default
    ctx = _default
    if ctx is None:
        return NETLIB_OK
    if ctx.loop.is_running:
        return NETLIB_ERROR
    _default = None
    ctx.close()
    return NETLIB_OK


def netlib_get_loop() -> EventLoop:
    """The default context's :class:`EventLoop` (not in the original).

    For object-API code that shares the loop with netlib code: a server built with
    ``loop.listen`` runs under :func:`netlib_eventloop` like any netlib handle.
    """
    return _context().loop


# -- server and client roles ---------------------------------------------------------------


def netlib_listen(
    server_ip: str,
    port: int,
    callback: Callback,
    callback_data: Any,
    *,
    ssl: SSLContext | None = None,
) -> int:
    """Listen on ``server_ip:port``; return the listening handle, or ``NETLIB_ERROR``.

    The original returned ``NETLIB_OK``; returning the handle (always > 0) keeps
    ``ret == NETLIB_ERROR`` checks working and lets the listener be closed with
    :func:`netlib_close` and asked for its port (``port`` 0 picks a free one). For
    each accepted connection ``callback(callback_data, NETLIB_MSG_CONNECT,
    new_handle, None)`` is called; the new handle starts with this callback and
    data, to be replaced with :func:`netlib_option`. A listening handle gets no
    other event. ``server_ip`` "" or "0.0.0.0" means every IPv4 interface;
    ``port`` must be in 0..65535.

    With ``ssl`` (a server ``SSLContext``; not in the original) every accepted
    connection is TLS: its CONNECT event comes once the handshake is done, and
    a peer whose handshake fails is logged and never becomes a handle.
    """
    if not is_port(port, allow_zero=True):
        return NETLIB_ERROR
    ctx = _context()
    listener: list[_ListenHandle] = []  # filled below; the factory runs only on accept

    def plain() -> Protocol:
        return _NetlibProtocol(ctx, listener[0])

    factory: Callable[[], Protocol] = plain if ssl is None else accepting(ctx.loop, ssl, plain)
    try:
        server = listen(ctx.loop, server_ip or "0.0.0.0", port, factory, flow=_FLOW)
    except (OSError, OverflowError, ValueError) as exc:
        log.warning("netlib_listen on %s:%s failed: %s", server_ip, port, exc)
        return NETLIB_ERROR
    rec = _ListenHandle(next(_handle_numbers), callback, callback_data, server)
    listener.append(rec)
    ctx.handles[rec.handle] = rec
    return rec.handle


def netlib_connect(
    server_ip: str,
    port: int,
    callback: Callback,
    callback_data: Any,
    *,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
) -> int:
    """Start connecting to ``server_ip:port``; return the new handle or ``NETLIB_INVALID_HANDLE``.

    Then, from the loop, ``NETLIB_MSG_CONFIRM`` when connected, or
    ``NETLIB_MSG_CLOSE`` (with the error as ``param``) if the connection is
    refused, fails or takes longer than :data:`CONNECT_TIMEOUT_S`. Never calls
    back before returning. A host name is resolved here, blocking.
    ``NETLIB_INVALID_HANDLE`` means the attempt could not even start (a port
    outside 1..65535, an unresolvable name, no fds left).

    With ``ssl`` (a client ``SSLContext``; not in the original) the connection is
    TLS: CONFIRM comes after the handshake, and a failed verification of the
    server's certificate or host name (``server_hostname``, default
    ``server_ip``) is a CLOSE with the ``ssl.SSLCertVerificationError``.
    """
    if not is_port(port, allow_zero=False):
        return NETLIB_INVALID_HANDLE
    ctx = _context()
    protocol = _NetlibProtocol(ctx, None)
    try:
        conn: Connection | TLSTransport
        if ssl is None:
            conn = connect(
                ctx.loop, server_ip, port, protocol, timeout_s=CONNECT_TIMEOUT_S, flow=_FLOW
            )
        else:
            conn = connect_tls(
                ctx.loop,
                server_ip,
                port,
                protocol,
                ssl,
                server_hostname=server_hostname,
                timeout_s=CONNECT_TIMEOUT_S,
                flow=_FLOW,
            )
    except (OSError, OverflowError, ValueError, UnicodeError) as exc:
        log.warning("netlib_connect to %s:%s failed: %s", server_ip, port, exc)
        return NETLIB_INVALID_HANDLE
    rec = _ConnHandle(next(_handle_numbers), callback, callback_data, conn, (server_ip, port))
    protocol.rec = rec
    ctx.handles[rec.handle] = rec
    return rec.handle


# -- data ----------------------------------------------------------------------------------


def netlib_send(handle: int, data: bytes | bytearray | memoryview) -> int:
    """Queue all of ``data`` for sending; return its length in bytes, or ``NETLIB_ERROR``.

    Unlike the original (which returned what ``send(2)`` took, leaving the rest to
    the caller), nothing is ever refused: what the kernel does not take at once is
    queued by the connection, and ``NETLIB_MSG_WRITE`` fires when that queue has
    drained. ``data`` is copied if it is mutable, so the caller may reuse its
    buffer at once. Allowed while connecting (sent once connected).
    ``NETLIB_ERROR`` for an unknown handle, a connection that is ending, or
    ``data`` that is not a bytes-like object.
    """
    rec = _conn_handle(handle)
    if rec is None or not isinstance(data, bytes | bytearray | memoryview):
        return NETLIB_ERROR
    conn = rec.conn
    if conn.state is not ConnState.CONNECTED and conn.state is not ConnState.CONNECTING:
        return NETLIB_ERROR
    # The connection may keep a reference to what it is given until the end of the
    # current callback (replies are batched), so a buffer the caller reuses — the
    # usual recv/send loop — must be copied now.
    payload = data if isinstance(data, bytes) else bytes(data)
    if payload:
        conn.write(payload)
    return len(payload)


def netlib_recv(handle: int, buf: bytearray | memoryview) -> int:
    """Move received bytes into ``buf`` like ``recv(2)``; return how many.

    Returns the count (at most ``len(buf)``) while bytes are buffered;
    ``NETLIB_ERROR`` when none are (the original's "would block" -1) or for an
    unknown handle or a read-only ``buf``; 0 once the connection has ended and
    everything was read (possible from inside the ``CLOSE`` callback). After a
    ``NETLIB_MSG_READ`` call this until it returns ``<= 0``: the next READ comes
    only with new data.
    """
    rec = _conn_handle(handle)
    if rec is None:
        return NETLIB_ERROR
    try:
        view = memoryview(buf).cast("B")
    except TypeError:  # not C-contiguous
        return NETLIB_ERROR
    if view.readonly:
        return NETLIB_ERROR
    rbuf = rec.rbuf
    if not rbuf:
        state = rec.conn.state
        ended = state is ConnState.CLOSING or state is ConnState.CLOSED
        return 0 if ended else NETLIB_ERROR
    n = min(len(view), len(rbuf))
    if n == len(rbuf):
        view[:n] = rbuf
        rbuf.clear()
    else:
        view[:n] = rbuf[:n]
        del rbuf[:n]  # bytearray drops a prefix without moving the rest
    if rec.reading_paused and len(rbuf) <= _RECV_BUFFER_RESUME_BYTES:
        rec.reading_paused = False
        rec.conn.resume_reading()
    return n


def netlib_close(handle: int) -> int:
    """Close a connection or a listener; ``NETLIB_OK``, or ``NETLIB_ERROR`` if unknown.

    The handle is unknown from now on. A connection closes gracefully: output
    already queued is still sent, then FIN; received data not yet read is
    dropped. Its ``NETLIB_MSG_CLOSE`` still comes, once, from the loop (unless it
    is being delivered right now: calling this from the CLOSE callback is fine).
    A listener stops accepting at once; connections it accepted are unaffected.
    """
    ctx = _default
    rec = _any_handle(handle)
    if ctx is None or rec is None:
        return NETLIB_ERROR
    if isinstance(rec, _ListenHandle):
        del ctx.handles[handle]
        rec.server.close()
    elif isinstance(rec, _ConnHandle):
        rec.app_closed = True
        rec.rbuf = bytearray()
        rec.conn.close()
    return NETLIB_OK


# -- options -------------------------------------------------------------------------------


@overload
def netlib_option(handle: int, opt: Literal[1], optval: Callback) -> int: ...
@overload
def netlib_option(handle: int, opt: Literal[2], optval: Any) -> int: ...
@overload
def netlib_option(handle: int, opt: Literal[3, 5], optval: None = None) -> str | int: ...
@overload
def netlib_option(handle: int, opt: Literal[4, 6], optval: None = None) -> int: ...
@overload
def netlib_option(handle: int, opt: Literal[7, 8], optval: int) -> int: ...
@overload
def netlib_option(handle: int, opt: int, optval: Any = None) -> str | int: ...


def netlib_option(handle: int, opt: int, optval: Any = None) -> str | int:
    """Set or get one option of a handle.

    Set-options take the value as ``optval`` and return ``NETLIB_OK``:
    ``NETLIB_OPT_SET_CALLBACK`` (a callable), ``NETLIB_OPT_SET_CALLBACK_DATA``
    (anything), ``NETLIB_OPT_SET_SEND_BUF_SIZE`` / ``NETLIB_OPT_SET_RECV_BUF_SIZE``
    (bytes, 1 .. 2**31-1; the kernel may double or clamp it; on a listener it applies to
    the listening sockets, which accepted sockets inherit).

    Get-options *return* the value, since Python cannot write through the
    original's pointer: ``NETLIB_OPT_GET_REMOTE_IP`` / ``NETLIB_OPT_GET_LOCAL_IP``
    a ``str``, ``NETLIB_OPT_GET_REMOTE_PORT`` / ``NETLIB_OPT_GET_LOCAL_PORT`` an
    ``int``. They work from the CLOSE callback too (the addresses are remembered).

    ``NETLIB_ERROR`` for an unknown handle, an unknown option, a bad value, a
    value that does not exist (the remote address of a listener) or a failing
    ``setsockopt``.
    """
    rec = _any_handle(handle)
    if rec is None:
        return NETLIB_ERROR
    if opt == NETLIB_OPT_SET_CALLBACK:
        if not callable(optval):
            return NETLIB_ERROR
        rec.callback = optval
        return NETLIB_OK
    if opt == NETLIB_OPT_SET_CALLBACK_DATA:
        rec.data = optval
        return NETLIB_OK
    if opt in (NETLIB_OPT_GET_REMOTE_IP, NETLIB_OPT_GET_REMOTE_PORT):
        address = rec.remote if isinstance(rec, _ConnHandle) else None
        if address is None:
            return NETLIB_ERROR
        return address[0] if opt == NETLIB_OPT_GET_REMOTE_IP else address[1]
    if opt in (NETLIB_OPT_GET_LOCAL_IP, NETLIB_OPT_GET_LOCAL_PORT):
        address = _local_address(rec)
        if address is None:
            return NETLIB_ERROR
        return address[0] if opt == NETLIB_OPT_GET_LOCAL_IP else address[1]
    if opt in (NETLIB_OPT_SET_SEND_BUF_SIZE, NETLIB_OPT_SET_RECV_BUF_SIZE):
        # setsockopt takes a C int; anything else is a caller's mistake, not a size.
        if not isinstance(optval, int) or isinstance(optval, bool) or not 0 < optval < 1 << 31:
            return NETLIB_ERROR
        return _set_buffer_size(rec, opt == NETLIB_OPT_SET_SEND_BUF_SIZE, optval)
    return NETLIB_ERROR


def _local_address(rec: _Handle) -> tuple[str, int] | None:
    if isinstance(rec, _ListenHandle):
        addresses = rec.server.addresses
        return _host_port(addresses[0]) if addresses else None
    if isinstance(rec, _ConnHandle):
        # Not remembered yet while connecting: the kernel bound the socket already.
        return rec.local or _host_port(rec.conn.local_address)
    return None


def _set_buffer_size(rec: _Handle, send: bool, size: int) -> int:
    if isinstance(rec, _ListenHandle):
        targets = [listener.sock for listener in rec.server.listeners]
    elif isinstance(rec, _ConnHandle) and rec.conn.socket is not None:
        targets = [rec.conn.socket]
    else:
        return NETLIB_ERROR
    name = socket.SO_SNDBUF if send else socket.SO_RCVBUF
    try:
        for sock in targets:
            sock.setsockopt(socket.SOL_SOCKET, name, size)
    except OSError as exc:
        log.warning("netlib_option on handle %d: setsockopt failed: %s", rec.handle, exc)
        return NETLIB_ERROR
    return NETLIB_OK


# -- timers and loop callbacks -------------------------------------------------------------


def netlib_register_timer(callback: Callback, user_data: Any, interval: float) -> int:
    """Call ``callback(user_data, NETLIB_MSG_TIMER, 0, None)`` every ``interval`` ms.

    The first call comes one interval from now. Registering the same callback and
    data again does not add a timer: it replaces the interval and restarts the
    count from now (as the original's ``AddTimer``). "The same": equal callbacks (a
    bound method of the same object counts) and equal data if it is hashable, the
    same object otherwise. ``NETLIB_OK``; ``NETLIB_ERROR`` if ``interval`` is not > 0.
    """
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
        return NETLIB_ERROR
    ctx = _context()
    key = (_key(callback), _key(user_data))
    old = ctx.timers.pop(key, None)
    if old is not None:
        old.cancel()  # safe from inside its own callback
    ctx.timers[key] = ctx.loop.call_every(
        interval / 1000.0, callback, user_data, NETLIB_MSG_TIMER, 0, None
    )
    return NETLIB_OK


def netlib_delete_timer(callback: Callback, user_data: Any) -> int:
    """Stop the timer registered with this callback and data (safe from inside it).

    ``NETLIB_OK``, or ``NETLIB_ERROR`` if there is no such timer (the original
    returned 0 either way).
    """
    ctx = _default
    timer = ctx.timers.pop((_key(callback), _key(user_data)), None) if ctx is not None else None
    if timer is None:
        return NETLIB_ERROR
    timer.cancel()
    return NETLIB_OK


def netlib_add_loop(callback: Callback, user_data: Any) -> int:
    """Call ``callback(user_data, NETLIB_MSG_LOOP, 0, None)`` once per loop iteration.

    It runs after the iteration's I/O events, timers and ready callbacks; an idle
    loop iterates at least every ``wait_timeout`` ms. There is no removal, as in
    the original (:func:`netlib_destroy` drops them). Always ``NETLIB_OK``.
    """
    _context().loop.add_loop_callback(callback, user_data, NETLIB_MSG_LOOP, 0, None)
    return NETLIB_OK


# -- running -------------------------------------------------------------------------------


def netlib_eventloop(wait_timeout: int = 100) -> None:
    """Run the default loop until :func:`netlib_stop_event`; each poll waits ≤ ``wait_timeout`` ms.

    Returns at once if the loop is already running (a callback calling it).
    Timers fire on time whatever ``wait_timeout`` is; it only bounds how long an
    idle loop waits before running the loop callbacks again.
    """
    loop = _context().loop
    if loop.is_running:
        return
    loop.run(max_wait_s=max(wait_timeout, 0) / 1000.0)


def netlib_stop_event() -> None:
    """Make :func:`netlib_eventloop` return after the current iteration. Any thread.

    Does nothing if the loop is not running: a stop cannot be saved for a later
    :func:`netlib_eventloop`.
    """
    ctx = _default
    if ctx is not None and ctx.loop.is_running:
        ctx.loop.stop()


def netlib_is_running() -> bool:
    """True while :func:`netlib_eventloop` runs. Any thread."""
    ctx = _default
    return ctx is not None and ctx.loop.is_running
