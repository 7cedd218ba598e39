"""The client role that never gives up: an outbound connection that reconnects with backoff.

Every server that links to another (msg_server → login/route/db_proxy) keeps
one :class:`Connector` per peer. After a failed attempt or a lost connection
the next attempt waits ``delays_s[k]`` (k counts failures since the last
success; the last delay repeats), each stretched or shrunk by up to
``jitter`` so that many clients restarted together do not retry in lockstep.
A connection that was established resets the schedule.

The default schedule is the original's: 4, 8, 16, 32, 64 s. (The original then
went back to 4 s; staying at the longest delay is the usual, gentler choice.)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from ssl import SSLContext
from typing import TYPE_CHECKING

from .connection import DEFAULT_FLOW, Connection, FlowControl, connect
from .tls import TLSTransport, connect_tls
from .transport import ConnState, Protocol, Transport

if TYPE_CHECKING:
    from .loop import EventLoop
    from .timers import Timer

log = logging.getLogger(__name__)

DEFAULT_DELAYS_S: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0, 64.0)


class Backoff:
    """A reconnect schedule: ``delay()`` for the next wait, ``reset()`` after a success."""

    def __init__(
        self,
        delays_s: Sequence[float] = DEFAULT_DELAYS_S,
        jitter: float = 0.1,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not delays_s or min(delays_s) < 0:
            raise ValueError("delays_s must be non-empty and non-negative")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.delays_s = tuple(delays_s)
        self.jitter = jitter
        self._rng = rng
        self.failures = 0

    def delay(self) -> float:
        """The wait before the next attempt; counts one more failure."""
        base = self.delays_s[min(self.failures, len(self.delays_s) - 1)]
        self.failures += 1
        return base * (1.0 + self.jitter * (2.0 * self._rng() - 1.0))

    def reset(self) -> None:
        self.failures = 0


class Connector:
    """Keeps one outbound connection to ``host:port`` up, made with ``protocol_factory()``.

    Each attempt gets a fresh protocol, whose callbacks run as usual
    (``connection_failed`` for an attempt that fails). :attr:`connection` is
    the current connection once CONNECTED, else None. Loop thread only.
    """

    def __init__(
        self,
        loop: EventLoop,
        host: str,
        port: int,
        protocol_factory: Callable[[], Protocol],
        *,
        backoff: Backoff | None = None,
        connect_timeout_s: float = 10.0,
        flow: FlowControl = DEFAULT_FLOW,
        ssl: SSLContext | None = None,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.protocol_factory = protocol_factory
        self.backoff = backoff or Backoff()
        self.connect_timeout_s = connect_timeout_s
        self.flow = flow
        self.ssl = ssl  #: with a context, every attempt is a TLS connection
        self.attempts = 0  #: connection attempts made so far
        self._conn: Connection | TLSTransport | None = None
        self._retry: Timer | None = None
        self._running = False

    @property
    def connection(self) -> Connection | TLSTransport | None:
        """The connection, if it is CONNECTED."""
        conn = self._conn
        return conn if conn is not None and conn.state is ConnState.CONNECTED else None

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Connect now (and keep reconnecting until :meth:`stop`). Idempotent."""
        if self._running:
            return
        self._running = True
        self._attempt()

    def stop(self) -> None:
        """Stop reconnecting and close the current connection gracefully."""
        self._running = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._conn is not None:
            self._conn.close()

    def _attempt(self) -> None:
        self._retry = None
        if not self._running:
            return
        self.attempts += 1
        try:
            conn: Connection | TLSTransport
            if self.ssl is None:
                conn = connect(
                    self.loop,
                    self.host,
                    self.port,
                    self.protocol_factory(),
                    timeout_s=self.connect_timeout_s,
                    flow=self.flow,
                )
            else:
                conn = connect_tls(
                    self.loop,
                    self.host,
                    self.port,
                    self.protocol_factory(),
                    self.ssl,
                    timeout_s=self.connect_timeout_s,
                    flow=self.flow,
                )
        except Exception as exc:  # resolution failure, factory error, fd exhaustion
            log.warning("connect to %s:%s failed: %r", self.host, self.port, exc)
            self._schedule()
            return
        self._conn = conn
        conn.add_close_callback(self._closed)

    def _closed(self, conn: Transport, exc: BaseException | None) -> None:
        if conn is not self._conn:
            return
        established = conn.established
        self._conn = None
        if established:
            self.backoff.reset()
            log.info("link to %s:%s lost (%s)", self.host, self.port, exc or "closed")
        else:
            log.info("connect to %s:%s failed: %s", self.host, self.port, exc)
        self._schedule()

    def _schedule(self) -> None:
        if self._running and self._retry is None:
            delay = self.backoff.delay()
            self._retry = self.loop.call_later(delay, self._attempt)
