"""A TCP connection: the socket state machine, buffered writes and flow control.

It implements :class:`~imreactor.net.transport.Transport`; the states and the
protocol call order are that contract's (:mod:`imreactor.net.transport`). A
listening socket is a :class:`~imreactor.net.acceptor.Listener` in state
LISTENING; an accepted connection starts in CONNECTED. An exception from a
protocol callback aborts its connection only, even when another connection's
handler led to the call (its ``write`` to this one crossing the high water mark
calls this one's ``pause_writing``).

Writes made while the loop runs an iteration (from any handler, timer or
callback) are collected per connection and sent with one ``send`` at the end of
that iteration, before the loop polls again (see :mod:`imreactor.net.loop`): a
pipelining client then costs one syscall per read instead of one per reply,
and everything one peer is given in an iteration travels together. Writes made
outside an iteration are sent at once. Either way, only what the kernel does
not take is queued, and only then is writability watched (level-triggered, so
the fd is not woken for nothing). Collected output is sent early once
it passes the high water mark, so flow control (water marks, ``max_buffer``)
sees a producer's output while the producer is still writing.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .poller import READABLE, WRITABLE
from .transport import Buffer, CloseCallback, ConnState, Protocol

if TYPE_CHECKING:
    from .loop import EventLoop
    from .timers import Timer

log = logging.getLogger(__name__)

IDLE = ConnState.IDLE
#: ``struct linger {l_onoff = 1, l_linger = 0}``: close() resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)
CONNECTING = ConnState.CONNECTING
CONNECTED = ConnState.CONNECTED
CLOSING = ConnState.CLOSING
CLOSED = ConnState.CLOSED


class FlowControl:
    """Buffer limits, shared by every connection made with them (one object per server).

    - ``high_water`` / ``low_water``: queued output above ``high_water`` calls
      ``pause_writing``; back at or below ``low_water``, ``resume_writing``;
    - ``max_buffer``: queued output above this means the peer will not read:
      the connection is aborted with :class:`PeerTooSlow`;
    - ``read_size``: bytes asked of one ``recv`` (at most 128 KiB: larger reads make
      glibc map and unmap memory for every call);
    - ``close_timeout_s``: how long a graceful close may wait for queued output to
      drain and for the peer to close its side before the socket is aborted.
    """

    __slots__ = ("close_timeout_s", "high_water", "low_water", "max_buffer", "read_size")

    def __init__(
        self,
        high_water: int = 64 * 1024,
        low_water: int | None = None,
        max_buffer: int = 16 * 1024 * 1024,
        read_size: int = 64 * 1024,
        close_timeout_s: float = 5.0,
    ) -> None:
        if low_water is None:
            low_water = high_water // 4
        if not 0 <= low_water <= high_water <= max_buffer:
            raise ValueError("need 0 <= low_water <= high_water <= max_buffer")
        if not 0 < read_size <= 128 * 1024:
            raise ValueError("read_size must be in 1..131072")
        self.high_water = high_water
        self.low_water = low_water
        self.max_buffer = max_buffer
        self.read_size = read_size
        self.close_timeout_s = close_timeout_s


DEFAULT_FLOW = FlowControl()


class PeerTooSlow(ConnectionError):
    """The peer let more than ``max_buffer`` bytes of output queue up."""


class Connection:
    """One TCP connection on one loop. Loop thread only, like everything on the loop.

    Create outgoing ones with :func:`connect` (or ``loop.connect``); a
    :class:`~imreactor.net.acceptor.Listener` creates incoming ones.
    """

    __slots__ = (
        "_close_callbacks",
        "_events",
        "_fd",
        "_loop",
        "_out",
        "_out_room",
        "_paused",
        "_sock",
        "_timer",
        "_wbuf",
        "established",
        "flow",
        "protocol",
        "state",
    )

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        protocol: Protocol,
        flow: FlowControl = DEFAULT_FLOW,
    ) -> None:
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self.protocol = protocol
        self.flow = flow
        self.state = IDLE
        #: True once the connection reached CONNECTED (stays True after it closes).
        self.established = False
        self._out: list[Buffer] | None = None  # output collected during this loop iteration
        self._out_room = 0  # bytes more it may collect before it is sent early
        self._wbuf: bytearray | None = None  # output the kernel did not take yet
        self._events = 0
        self._paused = False
        self._timer: Timer | None = None  # connect timeout, then the close deadline
        self._close_callbacks: list[CloseCallback] | None = None
        if loop.debug:
            # The same object with thread-checked methods (no slots of its own, so
            # the class can be swapped): normal mode pays nothing for debug mode.
            self.__class__ = ThreadCheckedConnection

    # -- introspection ----------------------------------------------------------------------

    @property
    def loop(self) -> EventLoop:
        return self._loop

    @property
    def fileno(self) -> int:
        """The fd number (-1 once closed)."""
        return self._fd if self._sock is not None else -1

    @property
    def socket(self) -> socket.socket | None:
        """The socket, for options this class does not wrap; None once closed."""
        return self._sock

    @property
    def local_address(self) -> Any:
        """``getsockname()``, or None when closed."""
        return self._sock.getsockname() if self._sock is not None else None

    @property
    def remote_address(self) -> Any:
        """``getpeername()``, or None when closed or not connected."""
        try:
            return self._sock.getpeername() if self._sock is not None else None
        except OSError:
            return None

    @property
    def write_buffer_size(self) -> int:
        """Bytes written and not yet taken by the kernel (collected or queued)."""
        collected = sum(map(len, self._out)) if self._out else 0
        return collected + (len(self._wbuf) if self._wbuf is not None else 0)

    @property
    def writing_paused(self) -> bool:
        return self._paused

    def __repr__(self) -> str:
        return f"<Connection fd={self.fileno} {self.state.value} peer={self.remote_address}>"

    # -- socket options ---------------------------------------------------------------------

    def set_nodelay(self, on: bool = True) -> None:
        """TCP_NODELAY (on by default for every connection)."""
        if self._sock is not None:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(on))

    def set_send_buffer_size(self, size: int) -> None:
        """SO_SNDBUF (the kernel may double or clamp it)."""
        if self._sock is not None:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def set_recv_buffer_size(self, size: int) -> None:
        """SO_RCVBUF (the kernel may double or clamp it)."""
        if self._sock is not None:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def add_close_callback(self, callback: CloseCallback) -> None:
        """Call ``callback(conn, exc)`` once, right after ``connection_lost``/``connection_failed``.

        Added to a connection that is already CLOSED, it is scheduled at once.
        """
        if self.state is CLOSED:
            self._loop.call_soon(callback, self, None)
            return
        if self._close_callbacks is None:
            self._close_callbacks = []
        self._close_callbacks.append(callback)

    # -- starting ---------------------------------------------------------------------------

    def _start_accepted(self) -> None:
        """Register an accepted socket and tell the protocol (listener's job)."""
        self.state = CONNECTED
        self.established = True
        self._events = READABLE
        self._loop.add_handler(self._fd, READABLE, self)
        try:
            self.protocol.connection_made(self)
        except Exception as exc:
            self.handle_error(exc)

    def _start_connect(self, address: Any, timeout_s: float | None) -> None:
        """Begin a non-blocking connect (``connect()``'s job)."""
        assert self._sock is not None
        self.state = CONNECTING
        err = self._sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
            # Completion (or failure) is reported as writability: the CONFIRM step.
            self._events = WRITABLE
            self._loop.add_handler(self._fd, WRITABLE, self)
            if timeout_s is not None:
                self._timer = self._loop.call_later(timeout_s, self._connect_timed_out, timeout_s)
        elif err == 0:
            self._events = WRITABLE
            self._loop.add_handler(self._fd, WRITABLE, self)
        else:
            # Report the failure from the loop, so that connect() never calls back
            # into the protocol before it has returned.
            self._loop.call_soon(self._connect_failed, OSError(err, os.strerror(err)))

    def _finish_connect(self) -> None:
        assert self._sock is not None
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(OSError(err, os.strerror(err)))
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = CONNECTED
        self.established = True
        self._set_events(READABLE | (WRITABLE if self._wbuf else 0))
        self.protocol.connection_made(self)

    def _connect_timed_out(self, timeout_s: float) -> None:
        self._timer = None
        if self.state is CONNECTING:
            self._connect_failed(TimeoutError(f"connect timed out after {timeout_s:g} s"))

    def _connect_failed(self, exc: BaseException) -> None:
        if self.state is CLOSED:
            return
        self._release()
        self._loop.call_soon(self._notify_failed, exc)

    def _notify_failed(self, exc: BaseException) -> None:
        try:
            self.protocol.connection_failed(exc)
        finally:
            self._run_close_callbacks(exc)

    # -- reading ----------------------------------------------------------------------------

    def handle_read(self) -> None:
        """Loop callback: readable or error readiness."""
        if self.state is not CONNECTED:
            if self.state is CONNECTING:
                self._finish_connect()
            elif self.state is CLOSING:
                self._read_while_closing()
            return
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(self.flow.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc)
            return
        if not data:
            self._eof()
            return
        self.protocol.data_received(data)

    def _eof(self) -> None:
        # The peer will send nothing more. What we still have collected or queued
        # goes out first; nothing can be read after EOF, so no lingering is needed.
        if self._out:
            self._flush_collected()
            if self._sock is None:
                return
        if self._wbuf:
            self.state = CLOSING
            self._set_events(WRITABLE)
            self._arm_close_deadline()
        else:
            self._close_now(None)

    def _read_while_closing(self) -> None:
        # While closing, input is read and dropped until the peer's EOF: closing a
        # socket with unread input sends RST, which may destroy the last replies
        # (a kick notice, say) before the peer reads them.
        assert self._sock is not None
        try:
            data = self._sock.recv(self.flow.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close_now(exc)
            return
        if not data:
            self._close_now(None)

    def pause_reading(self) -> None:
        """Stop reading from the socket (the kernel buffers, then the peer blocks)."""
        if self.state is CONNECTED and self._events & READABLE:
            self._set_events(self._events & ~READABLE)

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        if self.state is CONNECTED and not self._events & READABLE:
            self._set_events(self._events | READABLE)

    @property
    def reading(self) -> bool:
        return bool(self._events & READABLE) and self.state is CONNECTED

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        """Send ``data`` in order with everything written before.

        While the loop runs an iteration, ``data`` is collected and sent with the
        connection's other output of that iteration when it ends (or as soon as
        the collected bytes pass ``flow.high_water``); outside an iteration it is
        sent at once. Either way, what the kernel does not take is queued, and
        ``pause_writing`` follows from the queue.
        While CONNECTING the data is queued and sent once connected. After
        ``close()``/``abort()`` it is dropped. A mutable buffer is copied, so the
        caller may reuse it at once. Never raises for I/O errors: they close the
        connection.
        """
        if data.__class__ is not bytes:
            data = bytes(data)  # the caller may reuse its buffer; len() counts bytes
        out = self._out
        if out is not None:
            out.append(data)
            room = self._out_room - len(data)
        else:
            batch = self._loop.write_batch
            if batch is None or self.state is not CONNECTED or self._wbuf is not None:
                self._write_uncollected(data)
                return
            # The first write of this iteration: collect it, to be sent at its end.
            self._out = [data]
            batch.append(self)
            room = self.flow.high_water - len(data)
        # Past the high water mark, collected output is sent at once, so that a
        # producer writing in a loop until pause_writing (asyncio's pattern) is
        # paused inside that loop rather than never.
        self._out_room = room
        if room < 0:
            self._flush_collected()

    def _write_uncollected(self, data: bytes) -> None:
        state = self.state
        if state is not CONNECTED:
            if state is CONNECTING:
                self._queue(data)
            return  # closing or closed: dropped
        if self._wbuf is not None:
            self._queue(data)  # behind what is waiting; flow control sees it now
            return
        self._out = [data]  # outside an iteration: sent at once
        flush_collected((self,))

    def _flush_collected(self) -> None:
        """Send the output collected during this iteration now (before a FIN, say)."""
        flush_collected((self,))

    def writelines(self, chunks: Iterable[Buffer]) -> None:
        """Write several buffers with one send."""
        self.write(b"".join(chunks))

    def _queue(self, data: Buffer) -> None:
        wbuf = self._wbuf
        if wbuf is None:
            self._wbuf = wbuf = bytearray(data)
            if self.state is CONNECTED or self.state is CLOSING:
                self._set_events(self._events | WRITABLE)
        else:
            wbuf += data
        size = len(wbuf)
        flow = self.flow
        if size > flow.high_water:
            if size > flow.max_buffer:
                self._fatal_error(
                    PeerTooSlow(f"{size} bytes of output queued (max_buffer {flow.max_buffer})")
                )
            elif not self._paused:
                self._paused = True
                # Often reached from another connection's handler (a relay, a fan-out):
                # a failing pause_writing is this connection's failure, not the writer's.
                try:
                    self.protocol.pause_writing()
                except Exception as exc:
                    self.handle_error(exc)

    def handle_write(self) -> None:
        """Loop callback: writable readiness."""
        state = self.state
        if state is CONNECTING:
            self._finish_connect()
            return
        wbuf = self._wbuf
        sock = self._sock
        if wbuf is None or sock is None:
            if sock is not None:
                self._set_events(self._events & ~WRITABLE)
            return
        try:
            sent = sock.send(wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc)
            return
        del wbuf[:sent]  # O(1): bytearray advances its start instead of moving the rest
        if not wbuf:
            self._wbuf = None
            if state is CLOSING:
                self._output_drained_while_closing()
            else:
                self._set_events(self._events & ~WRITABLE)
        if self._paused and len(wbuf) <= self.flow.low_water:
            self._paused = False
            self.protocol.resume_writing()

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Graceful close: stop delivering input, send what is queued, then close.

        The peer gets our FIN after the last queued byte; input that still arrives
        is read and dropped until the peer closes too, or until
        ``flow.close_timeout_s``, when the socket is aborted. Idempotent.
        """
        state = self.state
        if state is CLOSING or state is CLOSED:
            return
        if state is not CONNECTED:
            self._close_now(None)
            return
        if self._out:  # output collected in this iteration goes out before our FIN
            self._flush_collected()
            if self._sock is None:
                return
        self.state = CLOSING
        self._arm_close_deadline()
        if self._wbuf:
            self._set_events(READABLE | WRITABLE)
        else:
            self._output_drained_while_closing()

    def _output_drained_while_closing(self) -> None:
        assert self._sock is not None
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._close_now(exc if exc.errno != errno.ENOTCONN else None)
            return
        self._set_events(READABLE)

    def _arm_close_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self.flow.close_timeout_s, self._close_deadline)

    def _close_deadline(self) -> None:
        self._timer = None
        if self.state is CLOSING:
            log.info("%r: graceful close timed out; aborting", self)
            self._close_now(None)

    def abort(self, exc: BaseException | None = None) -> None:
        """Close now, dropping queued output; the peer gets a reset (RST), not an EOF,
        so that it cannot take a cut-off stream for a complete one. Idempotent."""
        if self.state is CLOSED:
            return
        sock = self._sock
        if sock is not None and self.established:
            try:  # SO_LINGER with a zero timeout: close() sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass  # already reset by the peer: nothing left to tell it
        self._close_now(exc)

    def _fatal_error(self, exc: BaseException) -> None:
        # Resets and broken pipes are routine on the Internet: not worth a traceback.
        if isinstance(exc, PeerTooSlow):
            log.warning("%r: %s; closing", self, exc)
        else:
            log.debug("%r: %r; closing", self, exc)
        self._close_now(exc)

    def handle_error(self, exc: BaseException) -> None:
        """Loop callback: a protocol callback raised ``exc``. Logs it, aborts this connection."""
        log.error("%r: handler failed; aborting the connection", self, exc_info=exc)
        if self.state is CONNECTING:
            self._connect_failed(exc)
        elif self.state is not CLOSED:
            self._close_now(exc)

    def _close_now(self, exc: BaseException | None) -> None:
        """The one close path: every way a connection ends comes through here."""
        was_established = self.established and self.state is not CLOSED
        if self.state is CONNECTING or not self.established:
            self._connect_failed(exc or ConnectionAbortedError("closed before connecting"))
            return
        self._release()
        if was_established:
            self._loop.call_soon(self._notify_lost, exc)

    def _release(self) -> None:
        self.state = CLOSED
        self._out = None  # output collected in this iteration dies with the connection
        self._wbuf = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock = self._sock
        if sock is not None:
            self._sock = None
            self._loop.remove_handler(self._fd)
            sock.close()

    def _notify_lost(self, exc: BaseException | None) -> None:
        try:
            self.protocol.connection_lost(exc)
        finally:
            self._run_close_callbacks(exc)

    def _run_close_callbacks(self, exc: BaseException | None) -> None:
        callbacks = self._close_callbacks
        self._close_callbacks = None
        for callback in callbacks or ():
            try:
                callback(self, exc)
            except Exception:
                log.exception("close callback %r failed", callback)

    def _set_events(self, events: int) -> None:
        if events != self._events:
            self._events = events
            self._loop.modify_handler(self._fd, events)


class ThreadCheckedConnection(Connection):
    """A :class:`Connection` of a loop in debug mode: every method a protocol calls
    raises RuntimeError when called from a thread other than the loop's."""

    __slots__ = ()

    def write(self, data: Buffer) -> None:
        self._loop.check_thread("Connection.write")
        super().write(data)

    def writelines(self, chunks: Iterable[Buffer]) -> None:
        self._loop.check_thread("Connection.writelines")
        super().writelines(chunks)

    def close(self) -> None:
        self._loop.check_thread("Connection.close")
        super().close()

    def abort(self, exc: BaseException | None = None) -> None:
        self._loop.check_thread("Connection.abort")
        super().abort(exc)

    def pause_reading(self) -> None:
        self._loop.check_thread("Connection.pause_reading")
        super().pause_reading()

    def resume_reading(self) -> None:
        self._loop.check_thread("Connection.resume_reading")
        super().resume_reading()

    def add_close_callback(self, callback: CloseCallback) -> None:
        self._loop.check_thread("Connection.add_close_callback")
        super().add_close_callback(callback)


def flush_collected(conns: Iterable[Connection]) -> None:
    """The loop's flush step: one ``send`` per connection for what it collected.

    A connection closed since it collected has nothing left to send (``_out`` is
    None), so the list may hold closed connections and duplicates.
    """
    # One function for the whole list, with the send inlined rather than a method
    # or two per connection: this runs for every connection written to in every
    # iteration, and it is the only place where output meets the socket first.
    for conn in conns:
        out = conn._out
        if not out:
            continue
        conn._out = None
        conn._out_room = 0  # a small int: an idle connection keeps no int object of its own
        data = out[0] if len(out) == 1 else b"".join(out)
        if conn._wbuf is not None:
            conn._queue(data)  # keep order behind what is already waiting
            continue
        sock = conn._sock
        assert sock is not None  # output is collected only while CONNECTED
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            conn._fatal_error(exc)
            continue
        if sent < len(data):
            conn._queue(memoryview(data)[sent:])


def is_port(port: object, *, allow_zero: bool = True) -> bool:
    """Whether ``port`` is an ``int`` in 0..65535 (1..65535 without ``allow_zero``).

    The one port check of the project: ``getaddrinfo`` would silently wrap a
    larger number (70000 becomes 4464), so every entry point refuses it first.
    """
    if not isinstance(port, int) or isinstance(port, bool):
        return False
    return (0 if allow_zero else 1) <= port <= 0xFFFF


def check_port(port: int) -> None:
    """Raise ``ValueError`` for a port that :func:`is_port` refuses."""
    if not is_port(port):
        raise ValueError(f"port {port} is outside 0..65535")


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """``"host:port"``, ``"host"``, ``"[v6]:port"`` or a bare IPv6 address → ``(host, port)``.

    Raises ``ValueError`` for a port that is not a number in 0..65535.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:  # a host name, an IPv4 address, or an IPv6 address without a port
        host, port = text, ""
    number = int(port) if port else default_port
    check_port(number)
    return host, number


#: Linux's IP_BIND_ADDRESS_NO_PORT (None elsewhere): see :func:`connect`.
_BIND_NO_PORT: int | None = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)


def connect(
    loop: EventLoop,
    host: str,
    port: int,
    protocol: Protocol,
    *,
    timeout_s: float | None = 10.0,
    flow: FlowControl = DEFAULT_FLOW,
    nodelay: bool = True,
    source: tuple[str, int] | None = None,
) -> Connection:
    """Start a non-blocking connect to ``host:port``; returns the CONNECTING connection.

    ``protocol.connection_made`` (the original's CONFIRM) or
    ``protocol.connection_failed`` follows from the loop, never before this
    returns. A host name is resolved here, synchronously (``getaddrinfo``);
    pass an address literal where that must not block. ``source`` binds the
    local end first (``("127.0.0.2", 0)``: that address, any port), which is how
    one host opens more connections to one server than its ephemeral ports allow.
    An OSError from resolving or binding is raised here.
    """
    check_port(port)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            if source[1] == 0 and _BIND_NO_PORT is not None:
                # Let connect() pick the port for the whole 4-tuple: a bind to port 0
                # would reserve a port per socket and exhaust the range at ~28k.
                sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
            sock.bind(source)
        conn = Connection(loop, sock, protocol, flow)
        conn._start_connect(address, timeout_s)
    except BaseException:
        sock.close()
        raise
    return conn
