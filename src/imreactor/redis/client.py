"""A non-blocking Redis client on the reactor: pipelined commands, answered in order.

hiredis does the two things that need C speed and nothing else: ``pack_command``
turns a command into RESP, ``Reader`` turns received bytes into replies (sans-IO:
it never touches a socket). Everything around them is ours and runs on the loop:

- **Pipelining.** :meth:`RedisClient.execute` writes the command at once (the
  loop sends everything written in one iteration with one ``send``) and queues its
  callback; Redis answers in order, so the n-th reply goes to the n-th callback.
- **Readiness.** A connection is *ready* once its handshake (``AUTH`` with a
  password, ``SELECT`` for a database other than 0, then ``PING``) was answered
  with success; a server still loading its data set answers ``-LOADING`` and is
  retried. Commands given while not ready fail at once with
  :class:`RedisConnectionError` (the caller decides whether to retry; nothing is
  queued blindly across a reconnect, where it could run twice or out of order).
- **Reconnect with backoff** after a failed connect, a failed handshake or a lost
  link: ``backoff_delays_s`` (jittered), reset only by a completed handshake, so a
  server that refuses our password is not hammered.
- **Timeouts.** Each command carries a deadline (``command_timeout_s``, or its own
  ``timeout_s``). Replies come in order, so a reply that is late holds up every one
  behind it: the link is taken as broken, every waiting command fails with
  :class:`RedisTimeout`, and the client reconnects. A blocking command (``BLPOP``,
  ``XREADGROUP ... BLOCK``) therefore wants its own client, and a ``timeout_s``
  longer than its block time.
- **TLS** for a ``rediss://`` address: the connection is
  :mod:`imreactor.net.tls` on the same loop; the server's certificate and name are
  verified (against the CA of the given context, else the system's), and a failed
  handshake is a failed attempt like a refused connect.
- **Errors** are exceptions handed to the callback, never raised out of the loop:
  :class:`RedisReplyError` for ``-ERR`` replies (the link stays up),
  :class:`RedisConnectionError` and its kinds :class:`RedisTimeout` and
  :class:`RedisProtocolError` when the link failed (a command written before that
  may or may not have run).

Contract: loop thread only (checked in the loop's debug mode); a callback never
runs inside the :meth:`~RedisClient.execute` call that gave it, and runs exactly
once. An exception from a callback is logged and touches nothing else.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import hiredis

from ..net.connector import Backoff
from ..net.tls import client_context
from ..net.transport import Protocol, Transport
from .url import RedisAddress

if TYPE_CHECKING:
    from ..net.loop import EventLoop
    from ..net.timers import Timer

log = logging.getLogger(__name__)

#: Reconnect schedule: fast at first (a restarting Redis is back in well under a second),
#: then no more often than every 2 s.
DEFAULT_BACKOFF_S: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
DEFAULT_COMMAND_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: Commands written and not yet answered, beyond which new ones are refused: a Redis that
#: stopped answering must not grow our memory without bound.
DEFAULT_MAX_PENDING = 100_000

Reply = Any  #: bytes | int | None | list[Reply] | RedisReplyError (inside an array)
ReplyCallback = Callable[[Reply, "RedisError | None"], object]
Arg = str | bytes | int | float | memoryview


def _pack(args: tuple[Arg, ...]) -> bytes:
    # hiredis's stub types the argument as a 1-tuple and the result as Any.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


class RedisError(Exception):
    """Anything that went wrong with a Redis command."""


class RedisReplyError(RedisError):
    """Redis answered this command with an error (``-ERR ...``, ``-WRONGTYPE ...``)."""


class RedisConnectionError(RedisError):
    """Not connected, or the link failed before the reply came (the command may have run)."""


class RedisTimeout(RedisConnectionError):
    """No reply within the command's timeout; the link was dropped and is being remade."""


class RedisProtocolError(RedisConnectionError):
    """The server sent bytes that are not RESP; the link was dropped and is being remade."""


_NOT_ENOUGH = object()  # hiredis's "no complete reply yet" (False could be a reply one day)


def _ignore(reply: Reply, error: RedisError | None) -> None:
    """The callback of a command nobody waits for; errors are still logged."""
    if error is not None:
        log.warning("redis command failed: %s", error)


class _Pending:
    __slots__ = ("callback", "deadline")

    def __init__(self, callback: ReplyCallback, deadline: float) -> None:
        self.callback = callback
        self.deadline = deadline


class _RedisProtocol(Protocol):
    """One connection's bytes ⇄ replies; everything else is :class:`RedisClient`'s."""

    __slots__ = ("client", "reader", "transport")

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.reader = hiredis.Reader(replyError=RedisReplyError, notEnoughData=_NOT_ENOUGH)
        self.transport: Transport | None = None

    def connection_made(self, conn: Transport) -> None:
        self.transport = conn
        self.client._made(self)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        client = self.client
        while self.transport is not None:  # a callback may have dropped this link
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                client._drop(self, RedisProtocolError(f"redis sent malformed data: {exc}"))
                return
            if reply is _NOT_ENOUGH:
                return
            client._reply(self, reply)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.client._drop(self, exc)

    def connection_failed(self, exc: BaseException) -> None:
        self.client._drop(self, exc)


class RedisClient:
    """One pipelined connection to the Redis at ``address``, kept up until :meth:`stop`.

    ``on_up()`` runs each time a connection becomes ready, ``on_down(exc)`` each time
    a ready one is lost (not for failed attempts). See the module docstring for the
    rest of the contract. The host is resolved at each attempt (``getaddrinfo``,
    which blocks): give an address literal where that matters. ``ssl_context`` is
    for a ``rediss://`` address only (default: verify against the system's CAs);
    it is refused for a plain one, where it would silently not be used.
    """

    def __init__(
        self,
        loop: EventLoop,
        address: RedisAddress,
        *,
        command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        backoff_delays_s: Sequence[float] = DEFAULT_BACKOFF_S,
        max_pending: int = DEFAULT_MAX_PENDING,
        on_up: Callable[[], object] | None = None,
        on_down: Callable[[BaseException | None], object] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if command_timeout_s <= 0 or connect_timeout_s <= 0 or max_pending < 1:
            raise ValueError("timeouts must be positive and max_pending at least 1")
        if ssl_context is not None and not address.tls:
            raise ValueError(f"a TLS context for {address}, which is not rediss://")
        self.ssl_context = (ssl_context or client_context()) if address.tls else None
        self.loop = loop
        self.address = address
        self.command_timeout_s = command_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_pending = max_pending
        self.backoff = Backoff(backoff_delays_s)
        self.on_up = on_up
        self.on_down = on_down
        self.attempts = 0  #: connection attempts made so far
        self.connects = 0  #: handshakes completed so far (1 + the reconnects)
        self._proto: _RedisProtocol | None = None
        self._ready = False
        self._handshake_left = 0  # replies of the handshake still to come
        self._pending: deque[_Pending] = deque()
        self._running = False
        self._retry: Timer | None = None
        self._deadline_timer: Timer | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while a connection is up and its handshake done: commands can be sent."""
        return self._ready

    @property
    def pending(self) -> int:
        """Commands written and not yet answered."""
        return len(self._pending)

    def start(self) -> None:
        """Connect now, and keep reconnecting until :meth:`stop`. Idempotent."""
        self._check_thread("RedisClient.start")
        if not self._running:
            self._running = True
            self._attempt()

    def stop(self) -> None:
        """Stop reconnecting and close the connection; waiting commands fail. Idempotent."""
        self._check_thread("RedisClient.stop")
        self._running = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        proto = self._proto
        if proto is not None:
            self._drop(proto, RedisConnectionError("the redis client was stopped"), close=True)

    def execute(
        self, *args: Arg, callback: ReplyCallback | None = None, timeout_s: float | None = None
    ) -> None:
        """Send the command ``args`` (``execute("SET", key, value)``); ``callback(reply,
        error)`` runs once with the reply or the :class:`RedisError`, later, on the loop.

        ``TypeError`` (an argument that is no string, bytes or number) is raised here: it is
        the caller's bug, not Redis's.
        """
        self._check_thread("RedisClient.execute")
        packed = _pack(args)
        callback = callback or _ignore
        if not self._ready:
            why = "connecting" if self._running else "stopped"
            down = RedisConnectionError(f"redis at {self.address} is not connected ({why})")
            self.loop.call_soon(self._call, callback, None, down)
            return
        if len(self._pending) >= self.max_pending:
            err = RedisError(f"redis at {self.address}: {self.max_pending} commands unanswered")
            self.loop.call_soon(self._call, callback, None, err)
            return
        self._send(packed, callback, timeout_s)

    # -- the link ---------------------------------------------------------------------------

    def _check_thread(self, what: str) -> None:
        if self.loop.debug:
            self.loop.check_thread(what)

    def _attempt(self) -> None:
        self._retry = None
        if not self._running:
            return
        self.attempts += 1
        proto = _RedisProtocol(self)
        self._proto = proto
        try:
            proto.transport = self.loop.connect(
                self.address.host,
                self.address.port,
                proto,
                timeout_s=self.connect_timeout_s,
                ssl=self.ssl_context,
                handshake_timeout_s=self.connect_timeout_s,
            )
        except Exception as exc:  # resolution failure, fd exhaustion
            self._drop(proto, exc)

    def _made(self, proto: _RedisProtocol) -> None:
        if proto is not self._proto:
            return
        a = self.address
        handshake: list[tuple[Arg, ...]] = []
        if a.password is not None:
            handshake.append(
                ("AUTH", a.username, a.password) if a.username else ("AUTH", a.password)
            )
        if a.db:
            handshake.append(("SELECT", a.db))
        handshake.append(("PING",))
        self._handshake_left = len(handshake)
        for command in handshake:
            self._send(_pack(command), self._handshake_reply, None)

    def _handshake_reply(self, reply: Reply, error: RedisError | None) -> None:
        proto = self._proto
        if proto is None:
            return  # the link went down meanwhile; _drop already scheduled the retry
        if error is not None:
            log.error("redis at %s refused the handshake: %s", self.address, error)
            self._drop(proto, error)
            return
        self._handshake_left -= 1
        if self._handshake_left == 0:
            self._ready = True
            self.connects += 1
            self.backoff.reset()
            log.info("redis at %s: connected", self.address)
            if self.on_up is not None:
                self._notify(self.on_up)

    def _send(self, packed: bytes, callback: ReplyCallback, timeout_s: float | None) -> None:
        proto = self._proto
        assert proto is not None and proto.transport is not None
        deadline = self.loop.time() + (timeout_s or self.command_timeout_s)
        self._pending.append(_Pending(callback, deadline))
        timer = self._deadline_timer
        if timer is None or deadline < timer.when:
            if timer is not None:
                timer.cancel()
            self._deadline_timer = self.loop.call_at(deadline, self._check_deadlines)
        proto.transport.write(packed)

    def _check_deadlines(self) -> None:
        # One timer for all waiting commands, armed at the earliest deadline: cheaper
        # than a timer per command, and a late one dooms the link anyway.
        self._deadline_timer = None
        if not self._pending:
            return
        now = self.loop.time()
        if any(p.deadline <= now for p in self._pending):
            proto = self._proto
            if proto is not None:
                log.warning("redis at %s: a reply is late; reconnecting", self.address)
                self._drop(proto, RedisTimeout(f"redis at {self.address}: no reply in time"))
            return
        first = min(p.deadline for p in self._pending)
        self._deadline_timer = self.loop.call_at(first, self._check_deadlines)

    def _reply(self, proto: _RedisProtocol, reply: Reply) -> None:
        if proto is not self._proto:
            return
        if not self._pending:
            self._drop(proto, RedisProtocolError(f"redis at {self.address}: a reply nobody asked"))
            return
        pending = self._pending.popleft()
        if isinstance(reply, RedisReplyError):
            self._call(pending.callback, None, reply)
        else:
            self._call(pending.callback, reply, None)

    def _drop(self, proto: _RedisProtocol, exc: BaseException | None, close: bool = False) -> None:
        """The one way a link ends: detach it, fail what waits, tell ``on_down``, retry."""
        if proto is not self._proto:
            return
        was_ready = self._ready
        self._proto = None
        self._ready = False
        transport, proto.transport = proto.transport, None
        if transport is not None:
            if close:
                transport.close()
            else:
                transport.abort(exc)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if isinstance(exc, RedisConnectionError):
            failure: RedisError = exc
        else:
            up = transport is not None and transport.established
            what = "lost" if up else "could not be made"
            reason = f": {exc}" if exc else " (closed by the server)"
            failure = RedisConnectionError(f"the link to redis at {self.address} {what}{reason}")
            failure.__cause__ = exc
        pending, self._pending = self._pending, deque()
        for p in pending:
            self._call(p.callback, None, failure)
        if was_ready:
            log.warning("redis at %s: link down (%s)", self.address, failure)
            if self.on_down is not None:
                self._notify(self.on_down, exc)
        elif isinstance(exc, ssl.SSLError):
            # Not a Redis still starting: a certificate or a CA that is wrong stays wrong.
            log.error("redis at %s: TLS failed: %s", self.address, failure)
        elif not isinstance(exc, RedisError):
            log.info("redis at %s: %s", self.address, failure)
        if self._running and self._retry is None:
            self._retry = self.loop.call_later(self.backoff.delay(), self._attempt)

    @staticmethod
    def _notify(hook: Callable[..., object], *args: object) -> None:
        try:
            hook(*args)
        except Exception:
            log.exception("a redis link hook failed")

    @staticmethod
    def _call(callback: ReplyCallback, reply: Reply, error: RedisError | None) -> None:
        try:
            callback(reply, error)
        except Exception:
            log.exception("a redis reply callback failed")
