"""The event loop: one poller, one timer heap, one wakeup fd, one thread.

Iteration order (written down once, relied on by everything above):

1. poll, with a timeout taken from the nearest timer (0 if callbacks are ready,
   capped by ``max_wait_s`` if the caller gave one);
2. dispatch each ready fd to its handler's ``handle_read`` / ``handle_write``;
3. run the timers that are due;
4. run the callbacks that were ready when this step began (``call_soon``,
   ``call_soon_threadsafe``);
5. run the per-iteration loop callbacks (the original's ``add_loop``);
6. flush: send the output that connections were given during steps 2 to 5.

Step 6 is the "flush before sleep" of redis's ``beforeSleep``: while an
iteration runs, :meth:`Connection.write <imreactor.net.connection.Connection.write>`
only collects (into :attr:`EventLoop.write_batch`, the one hook between the loop
and its connections), and each connection that was written to gets one ``send`` for
everything it was given, after the iteration's work and before the next poll.
Replies to a pipelined read, the deliveries several senders make to one
recipient, and timer output to one peer travel together: one system call
where there would be one per write. A connection's collected output is sent
early once it passes the connection's high water mark, so flow control keeps
working inside a long callback. Writes made outside an iteration (before
``run``) are sent at once.

An exception escaping a handler is logged and passed to that handler's
``handle_error`` (which closes that connection); an exception in a timer or a
callback is logged. Neither stops the loop. ``KeyboardInterrupt`` and
``SystemExit`` are not caught.

Thread-safety: only :meth:`EventLoop.call_soon_threadsafe` and :meth:`EventLoop.stop`
may be called from other threads; everything else belongs to the loop thread. In
debug mode (``EventLoop(debug=True)`` or ``IMREACTOR_DEBUG=1``) the loop's and its
connections' loop-thread methods raise RuntimeError when called from another thread
while the loop runs; normal mode does not check, and pays nothing for the check.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from ssl import SSLContext
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

if TYPE_CHECKING:
    from .acceptor import Server
    from .connection import Connection
    from .transport import Protocol as TransportProtocol
    from .transport import Transport

from .connection import DEFAULT_FLOW, FlowControl, flush_collected
from .poller import ERROR, READABLE, WRITABLE, Poller, make_poller
from .timers import Timer, TimerQueue
from .tls import HANDSHAKE_TIMEOUT_S, TLSTransport, accepting, connect_tls
from .websocket import WebSocketClientTransport, connect_websocket

log = logging.getLogger(__name__)

_READ_MASK = READABLE | ERROR
_WRITE_MASK = WRITABLE


class IOHandler(Protocol):
    """What the loop dispatches readiness to (a connection, a listener, the waker).

    ``handle_read`` is called for readable *or* error readiness (the handler's
    ``recv`` surfaces the error or EOF), ``handle_write`` for writable
    readiness. ``handle_error`` receives an exception that escaped either one;
    it must release the handler's fd and must not raise.
    """

    def handle_read(self) -> None: ...

    def handle_write(self) -> None: ...

    def handle_error(self, exc: BaseException) -> None: ...


class LoopCallback:
    """A per-iteration callback registration; ``remove()`` unregisters it."""

    __slots__ = ("_loop", "args", "callback")

    def __init__(self, loop: EventLoop, callback: Callable[..., Any], args: tuple[Any, ...]):
        self._loop = loop
        self.callback = callback
        self.args = args

    def remove(self) -> None:
        """Stop calling it. Idempotent; safe from inside the callback."""
        try:
            self._loop._loop_callbacks.remove(self)
        except ValueError:
            pass


class _Waker:
    """The read end of the loop's self-pipe: thread wakeups (``\\0``) and signals (their number)."""

    __slots__ = ("_loop", "_sock")

    def __init__(self, loop: EventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock

    def handle_read(self) -> None:
        # Cleared after draining, not before: a thread that saw the flag False
        # could otherwise set it and send its byte in between, the drain would eat
        # that byte, and the flag would stay True with nothing in the pipe, so
        # later threads would skip their wakeup while the loop sleeps. A thread
        # that still sees True appended before the flag is cleared here, so the
        # ready callbacks of this iteration include its callback.
        try:
            while True:
                try:
                    data = self._sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    return
                if not data:
                    return
                for signum in data:
                    if signum:
                        self._loop._signal_received(signum)
        finally:
            self._loop._wake_pending = False

    def handle_write(self) -> None:
        pass

    def handle_error(self, exc: BaseException) -> None:
        log.error("wakeup channel failed: %r", exc)


class EventLoop:
    """A reactor: at most one per thread, run by the thread that calls :meth:`run`.

    ``poller`` is a backend name (``"epoll"``, ``"kqueue"``, ``"poll"``,
    ``"select"``) or a poller object; default: ``$IMREACTOR_POLLER`` or the best
    one available. ``clock`` returns monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        poller: str | Poller | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        debug: bool | None = None,
    ) -> None:
        self.poller: Poller = (
            poller if poller is not None and not isinstance(poller, str) else (make_poller(poller))
        )
        self.time = clock
        #: Debug mode (default: ``$IMREACTOR_DEBUG`` set to anything but "" or "0"):
        #: loop-thread-only methods of the loop and of its connections raise
        #: RuntimeError when called from another thread while the loop runs.
        #: Checked only in debug mode, so the normal data path pays nothing for it.
        if debug is None:
            debug = os.environ.get("IMREACTOR_DEBUG", "0") not in ("", "0")
        self.debug = debug
        self._handlers: dict[int, IOHandler] = {}
        # fds unregistered while a batch of events is being dispatched: later events
        # of that batch for the same fd number belong to the closed socket (the number
        # may already be reused by a new one) and are dropped.
        self._stale: set[int] = set()
        #: The write batch (step 6): ``None`` outside an iteration; while an iteration
        #: runs handlers and callbacks, the list of connections that collected output
        #: in it. A connection appends itself on its first collected write; the loop
        #: sends each one's output once at the end of the iteration. Read by
        #: connections, written only by the loop.
        self.write_batch: list[Connection] | None = None
        self._spare_batch: list[Connection] = []
        self._timers = TimerQueue()
        self._ready: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._loop_callbacks: list[LoopCallback] = []
        #: Iterations run so far, the seconds spent waiting in the poller, and the
        #: longest time one iteration spent working (not waiting) since a reader last
        #: set it to 0: libuv's ``uv_metrics_info``/``uv_metrics_idle_time``, which a
        #: metrics exporter turns into busy fraction and worst iteration. Written only
        #: by the loop; cost: two clock reads per iteration.
        self.iterations = 0
        self.idle_s = 0.0
        self.max_busy_s = 0.0
        self._woke_at: float | None = None
        self._signal_handlers: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._running = False
        self._stopping = False
        self._closed = False
        self._thread_id: int | None = None
        self._wake_pending = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.add_handler(self._wake_r.fileno(), READABLE, _Waker(self, self._wake_r))
        if self.debug:
            _check_loop_thread(self)

    # -- state -------------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True between the start of :meth:`run` and its return."""
        return self._running

    @property
    def backend(self) -> str:
        """Name of the poller backend in use."""
        return self.poller.name

    def in_loop_thread(self) -> bool:
        """True when called from the thread running this loop (or if it is not running)."""
        return self._thread_id is None or self._thread_id == threading.get_ident()

    def check_thread(self, what: str) -> None:
        """Raise RuntimeError if ``what`` is called from a thread other than the loop's.

        Used by debug mode (:attr:`debug`); callable by anyone who wants the check.
        """
        if not self.in_loop_thread():
            raise RuntimeError(
                f"{what} called from thread {threading.current_thread().name!r}; "
                "it belongs to the loop thread (use call_soon_threadsafe)"
            )

    # -- fd registration (used by connections, listeners; loop thread only) ------------------

    def add_handler(self, fd: int, events: int, handler: IOHandler) -> None:
        """Watch ``fd`` for ``events`` and dispatch them to ``handler``."""
        self.poller.register(fd, events)
        self._handlers[fd] = handler

    def modify_handler(self, fd: int, events: int) -> None:
        """Change the events watched on ``fd``."""
        self.poller.modify(fd, events)

    def remove_handler(self, fd: int) -> None:
        """Stop watching ``fd``. Call before closing the fd. Idempotent."""
        if self._handlers.pop(fd, None) is not None:
            self._stale.add(fd)
            try:
                self.poller.unregister(fd)
            except (OSError, KeyError, ValueError):
                pass  # already closed by someone else: the kernel dropped it

    # -- roles: server and client ------------------------------------------------------------

    def listen(
        self,
        host: str | Iterable[str] | None,
        port: int,
        protocol_factory: Callable[[], TransportProtocol],
        *,
        backlog: int = 1024,
        reuse_port: bool = False,
        flow: FlowControl = DEFAULT_FLOW,
        nodelay: bool = True,
        ssl: SSLContext | None = None,
        handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
    ) -> Server:
        """Listen and accept; see :func:`imreactor.net.acceptor.listen` for the options.

        With ``ssl`` every accepted connection is TLS (:mod:`imreactor.net.tls`):
        ``protocol_factory`` is called once a handshake is done, and its protocol
        gets a :class:`~imreactor.net.tls.TLSTransport`.
        """
        from .acceptor import listen

        factory: Callable[[], TransportProtocol] = protocol_factory
        if ssl is not None:
            factory = accepting(self, ssl, protocol_factory, handshake_timeout_s)
        return listen(
            self,
            host,
            port,
            factory,
            backlog=backlog,
            reuse_port=reuse_port,
            flow=flow,
            nodelay=nodelay,
        )

    @overload
    def connect(
        self,
        host: str,
        port: int,
        protocol: TransportProtocol,
        *,
        timeout_s: float | None = 10.0,
        flow: FlowControl = DEFAULT_FLOW,
        nodelay: bool = True,
        source: tuple[str, int] | None = None,
        ssl: None = None,
        websocket: None = None,
    ) -> Connection: ...

    @overload
    def connect(
        self,
        host: str,
        port: int,
        protocol: TransportProtocol,
        *,
        timeout_s: float | None = 10.0,
        flow: FlowControl = DEFAULT_FLOW,
        nodelay: bool = True,
        source: tuple[str, int] | None = None,
        ssl: SSLContext,
        server_hostname: str | None = None,
        handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
        websocket: None = None,
    ) -> TLSTransport: ...

    @overload
    def connect(
        self,
        host: str,
        port: int,
        protocol: TransportProtocol,
        *,
        timeout_s: float | None = 10.0,
        flow: FlowControl = DEFAULT_FLOW,
        nodelay: bool = True,
        source: tuple[str, int] | None = None,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
        websocket: str,
    ) -> WebSocketClientTransport: ...

    @overload
    def connect(
        self,
        host: str,
        port: int,
        protocol: TransportProtocol,
        *,
        timeout_s: float | None = 10.0,
        flow: FlowControl = DEFAULT_FLOW,
        nodelay: bool = True,
        source: tuple[str, int] | None = None,
        ssl: SSLContext | None,
        server_hostname: str | None = None,
        handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
        websocket: str | None = None,
    ) -> Transport: ...

    def connect(
        self,
        host: str,
        port: int,
        protocol: TransportProtocol,
        *,
        timeout_s: float | None = 10.0,
        flow: FlowControl = DEFAULT_FLOW,
        nodelay: bool = True,
        source: tuple[str, int] | None = None,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        handshake_timeout_s: float | None = HANDSHAKE_TIMEOUT_S,
        websocket: str | None = None,
    ) -> Connection | TLSTransport | WebSocketClientTransport:
        """Connect without blocking; see :func:`imreactor.net.connection.connect`.

        With ``ssl``, a TLS connection (:func:`imreactor.net.tls.connect_tls`):
        ``server_hostname`` (default ``host``) is sent as SNI and verified. With
        ``websocket`` (a path, e.g. ``"/"``), a WebSocket client connection to that
        path, over TLS when ``ssl`` is given
        (:func:`imreactor.net.websocket.connect_websocket`): ``protocol`` sees one
        ``data_received`` per message, and each ``write`` is one message;
        ``handshake_timeout_s`` then bounds the upgrade.
        """
        from .connection import connect

        if websocket is not None:
            return connect_websocket(
                self,
                host,
                port,
                protocol,
                path=websocket,
                ssl=ssl,
                server_hostname=server_hostname,
                handshake_timeout_s=handshake_timeout_s,
                timeout_s=timeout_s,
                flow=flow,
                nodelay=nodelay,
                source=source,
            )
        if ssl is not None:
            return connect_tls(
                self,
                host,
                port,
                protocol,
                ssl,
                server_hostname=server_hostname,
                handshake_timeout_s=handshake_timeout_s,
                timeout_s=timeout_s,
                flow=flow,
                nodelay=nodelay,
                source=source,
            )
        return connect(
            self,
            host,
            port,
            protocol,
            timeout_s=timeout_s,
            flow=flow,
            nodelay=nodelay,
            source=source,
        )

    # -- callbacks and timers ----------------------------------------------------------------

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread soon (this or the next iteration), FIFO."""
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Like :meth:`call_soon`, from any thread; wakes the loop if it is waiting in poll."""
        self._ready.append((callback, args))  # deque.append is atomic
        if not self._wake_pending:
            # One byte per wakeup, not per callback: a worker pool finishing a
            # thousand tasks costs the loop one read, not a thousand.
            self._wake_pending = True
            self._wakeup()

    def _wakeup(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full, so the loop will wake anyway
        except OSError:
            if not self._closed:
                raise

    def call_later(self, delay_s: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` once after ``delay_s`` seconds. Returns a cancellable Timer."""
        return self._timers.call_at(self.time() + max(delay_s, 0.0), callback, args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` once at loop time ``when`` (see :attr:`time`)."""
        return self._timers.call_at(when, callback, args)

    def call_every(
        self,
        interval_s: float,
        callback: Callable[..., Any],
        *args: Any,
        first_s: float | None = None,
    ) -> Timer:
        """Call ``callback(*args)`` each ``interval_s``; first after ``first_s`` or one interval."""
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        delay = interval_s if first_s is None else first_s
        return self._timers.call_at(self.time() + delay, callback, args, interval_s)

    def add_loop_callback(self, callback: Callable[..., Any], *args: Any) -> LoopCallback:
        """Run ``callback(*args)`` once per iteration, after I/O, timers and ready callbacks."""
        entry = LoopCallback(self, callback, args)
        self._loop_callbacks.append(entry)
        return entry

    @property
    def pending_timers(self) -> int:
        """Number of live timers."""
        return len(self._timers)

    # -- signals -----------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread when ``signum`` arrives.

        Signals reach the loop through ``signal.set_wakeup_fd`` on the loop's
        self-pipe, so the handler runs between iterations, never inside a
        handler. Main thread only (a Python rule). Replaces an earlier handler.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be added from the main thread")
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._signal_handlers[signum] = (callback, args)
        # The Python-level handler does nothing: its only job is to make the C
        # handler write the signal number to the wakeup fd.
        signal.signal(signum, _noop_signal_handler)

    def remove_signal_handler(self, signum: int) -> bool:
        """Restore the default disposition of ``signum``; True if a handler was removed."""
        if self._signal_handlers.pop(signum, None) is None:
            return False
        signal.signal(
            signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        )
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass  # not the main thread; the loop is being torn down elsewhere
        return True

    def _signal_received(self, signum: int) -> None:
        entry = self._signal_handlers.get(signum)
        if entry is not None:
            self._ready.append(entry)

    # -- running -----------------------------------------------------------------------------

    def run(self, max_wait_s: float | None = None) -> None:
        """Run iterations until :meth:`stop` is called.

        ``max_wait_s`` caps each poll (the original's ``wait_timeout``): loop
        callbacks then run at least that often even when nothing happens.
        """
        if self._running:
            raise RuntimeError("the loop is already running")
        if self._closed:
            raise RuntimeError("the loop is closed")
        self._running = True
        self._stopping = False
        self._thread_id = threading.get_ident()
        try:
            while not self._stopping:
                self.run_once(max_wait_s)
        finally:
            self._running = False
            self._stopping = False
            self._thread_id = None
            self._woke_at = None  # time until the next run is not the loop's work

    def stop(self) -> None:
        """Make :meth:`run` return after the current iteration. Safe from any thread."""
        self._stopping = True
        if not self.in_loop_thread():
            self._wakeup()

    def run_once(self, max_wait_s: float | None = None) -> None:
        """One iteration (see the module docstring). Public for tests and embedding."""
        # The clock and the poller's poll are instance attributes (a fake clock, the
        # C method itself): read into locals, they are plain specialised loads, where
        # calling them as self.x() would miss CPython's method-call fast path.
        clock = self.time
        timers = self._timers
        if self._ready or self._stopping:
            timeout: float | None = 0.0
        else:
            timeout = max_wait_s
            deadline = timers.next_deadline()
            if deadline is not None:
                until = deadline - clock()
                if until < 0.0:
                    until = 0.0
                if timeout is None or until < timeout:
                    timeout = until
        poll = self.poller.poll
        slept_at = clock()
        if self._woke_at is not None:
            busy = slept_at - self._woke_at  # the previous iteration's work
            if busy > self.max_busy_s:
                self.max_busy_s = busy
        try:
            events = poll(timeout)
        except InterruptedError:
            events = []
        self._woke_at = woke_at = clock()
        self.idle_s += woke_at - slept_at
        self.iterations += 1
        batch = self._spare_batch
        self.write_batch = batch
        try:
            if events:
                self._dispatch(events)
            # Again after dispatch: handlers may have added earlier timers.
            deadline = timers.next_deadline()
            if deadline is not None:
                now = clock()
                if deadline <= now:
                    timers.run_due(now)
            ready = self._ready
            if ready:
                for _ in range(len(ready)):
                    callback, args = ready.popleft()
                    try:
                        callback(*args)
                    except Exception:
                        log.exception("callback %r failed", callback)
            if self._loop_callbacks:
                for entry in tuple(self._loop_callbacks):
                    try:
                        entry.callback(*entry.args)
                    except Exception:
                        log.exception("loop callback %r failed", entry.callback)
        finally:
            # Step 6. Writes made from here on (a pause_writing callback, say) go out
            # at once, since there is no batch. The list is reused, not reallocated,
            # so an idle iteration allocates nothing for it.
            self.write_batch = None
            if batch:
                try:
                    flush_collected(batch)
                finally:
                    batch.clear()

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        get = self._handlers.get
        stale = self._stale
        if stale:
            stale.clear()  # fds closed before this poll returned cannot have events in it
        readable = READABLE
        for fd, mask in events:
            handler = get(fd)
            if handler is None or (stale and fd in stale):
                continue
            try:
                # Readable alone is nearly every event: one int comparison serves it.
                if mask == readable:
                    handler.handle_read()
                    continue
                if mask & _READ_MASK:
                    handler.handle_read()
                if mask & _WRITE_MASK:
                    handler.handle_write()
            except Exception as exc:
                try:
                    handler.handle_error(exc)
                except Exception:
                    log.exception("handle_error of %r failed", handler)
        if stale:
            stale.clear()

    def close(self) -> None:
        """Release the poller and the wakeup pipe. The loop must not be running.

        Handlers still registered are not closed: their owners close them.
        """
        if self._running:
            raise RuntimeError("cannot close a running loop")
        if self._closed:
            return
        self._closed = True
        for signum in list(self._signal_handlers):
            self.remove_signal_handler(signum)
        self.remove_handler(self._wake_r.fileno())
        self._stale.clear()
        self._wake_r.close()
        self._wake_w.close()
        self._timers.clear()
        self._ready.clear()
        self.poller.close()


def _noop_signal_handler(signum: int, frame: object) -> None:
    pass


#: The loop's methods that belong to its thread (all but call_soon_threadsafe and stop).
LOOP_THREAD_ONLY = (
    "add_handler",
    "modify_handler",
    "remove_handler",
    "listen",
    "connect",
    "call_soon",
    "call_later",
    "call_at",
    "call_every",
    "add_loop_callback",
    "add_signal_handler",
    "remove_signal_handler",
    "run_once",
)

_F = TypeVar("_F", bound=Callable[..., Any])


def thread_checked(loop: EventLoop, name: str, method: _F) -> _F:
    """``method``, raising RuntimeError first when called off ``loop``'s thread."""

    @functools.wraps(method)
    def checked(*args: Any, **kwargs: Any) -> Any:
        loop.check_thread(name)
        return method(*args, **kwargs)

    return checked  # type: ignore[return-value]


def _check_loop_thread(loop: EventLoop) -> None:
    # Debug mode wraps the bound methods on this one instance: a loop not in
    # debug mode runs the plain methods, with no flag test on any call.
    for name in LOOP_THREAD_ONLY:
        setattr(loop, name, thread_checked(loop, f"EventLoop.{name}", getattr(loop, name)))
