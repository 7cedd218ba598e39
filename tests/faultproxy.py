"""A TCP proxy that injects network faults, on imreactor's own loop, for fault scenarios.

:class:`FaultProxy` listens on a loopback port and forwards every accepted connection to
one upstream address, through a pipe per direction whose faults a test changes while
traffic runs (from the test's thread; every change is applied on the proxy's loop thread
before the call returns):

- **latency and jitter**: each chunk is held ``latency_s`` ± up to ``jitter_s``, never
  reordered (a chunk leaves no earlier than the one before it, as on one TCP stream);
- **bandwidth**: at most ``bytes_per_s`` leave per second in each direction;
- **slicing**: chunks leave one byte per loop iteration, so the peer reads 1-byte pieces;
- **black hole** (:meth:`partition`, :meth:`heal`): nothing moves either way and new
  connections are accepted but not connected upstream, as when a link's packets vanish;
  bytes are held, not lost (TCP would retransmit them), reading stops once enough is held,
  and on heal everything held goes on in order, unless a side gave up and closed first;
- **resets** (:meth:`reset`): every current connection is aborted with RST on both sides;
- **half-open** (:meth:`half_open`): every current connection goes silent for good: both
  sides stay open and whatever they send is read and thrown away, so each sees a peer that
  neither answers nor closes; only its own timeouts can end it. New connections are normal.

Faults apply to the ``"up"`` direction (client → upstream), ``"down"`` or both. The
proxy's own flow control follows the sockets': a destination above its high water mark
pauses reading from the source, so a slow reader behind the proxy slows the writer.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from imreactor.net import EventLoop, Protocol, Transport

Direction = Literal["up", "down", "both"]

#: Bytes a black-holed direction holds before it stops reading its source.
HOLD_BYTES = 256 * 1024


@dataclass(frozen=True)
class Faults:
    """What one direction of every connection suffers."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    bytes_per_s: float = 0.0  # 0: unlimited
    slice: bool = False


class _Pipe:
    """One direction of one connection: from ``src`` to ``dst`` with the direction's faults."""

    def __init__(self, proxy: FaultProxy, link: _Link, direction: Literal["up", "down"]) -> None:
        self.proxy = proxy
        self.link = link
        self.direction = direction
        self.dst: Transport | None = None
        self.queue: deque[tuple[float, bytes]] = deque()  # (not before, data)
        self.held = 0
        self.last_release = 0.0  # when the previous chunk may leave: keeps the order
        self.timer: Any = None

    @property
    def faults(self) -> Faults:
        return self.proxy.faults[self.direction]

    def push(self, data: bytes) -> None:
        if self.link.silent:
            return  # half-open: read and thrown away
        f = self.faults
        now = self.proxy.loop.time()
        delay = f.latency_s + (random.uniform(-f.jitter_s, f.jitter_s) if f.jitter_s else 0.0)
        when = max(now + max(delay, 0.0), self.last_release)
        if f.bytes_per_s:
            when += len(data) / f.bytes_per_s
        self.last_release = when
        self.queue.append((when, data))
        self.held += len(data)
        if self.held > HOLD_BYTES:
            self.link.source_of(self).pause_reading()
        self.pump()

    def pump(self) -> None:
        """Send what may leave now; arm a timer for the rest."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.dst is None or self.proxy.black_hole or self.link.silent:
            return
        loop = self.proxy.loop
        while self.queue:
            when, data = self.queue[0]
            now = loop.time()
            if when > now:
                self.timer = loop.call_later(when - now, self.pump)
                return
            if self.faults.slice and len(data) > 1:
                self.queue[0] = (when, data[1:])
                self._send(data[:1])
                self.timer = loop.call_later(0, self.pump)  # one byte per loop iteration
                return
            self.queue.popleft()
            self._send(data)
        if self.held <= HOLD_BYTES // 2:
            self.link.source_of(self).resume_reading()

    def _send(self, data: bytes) -> None:
        assert self.dst is not None
        self.held -= len(data)
        self.dst.write(data)
        self.proxy.bytes[self.direction] += len(data)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class _Side(Protocol):
    """One socket of a proxied connection: what it reads goes into its outgoing pipe."""

    def __init__(self, link: _Link, out: _Pipe) -> None:
        self.link = link
        self.out = out
        self.conn: Transport | None = None

    def connection_made(self, conn: Transport) -> None:
        self.conn = conn
        self.link.made(self)

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.link.lost(self, exc)

    def connection_failed(self, exc: BaseException) -> None:
        self.link.lost(self, exc)

    def pause_writing(self) -> None:
        self.link.peer_of(self).pause_reading()

    def resume_writing(self) -> None:
        self.link.peer_of(self).resume_reading()

    def pause_reading(self) -> None:
        if self.conn is not None and self.conn.established:
            self.conn.pause_reading()

    def resume_reading(self) -> None:
        if self.conn is not None and self.conn.established and not self.conn.reading:
            self.conn.resume_reading()


class _Link:
    """One proxied connection: the client's side, the upstream side and a pipe each way."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.up = _Pipe(proxy, self, "up")
        self.down = _Pipe(proxy, self, "down")
        self.client = _Side(self, self.up)
        self.server = _Side(self, self.down)
        self.silent = False
        self.connecting = False
        self.closed = False

    def source_of(self, pipe: _Pipe) -> _Side:
        return self.client if pipe is self.up else self.server

    def peer_of(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client

    def made(self, side: _Side) -> None:
        if side is self.client:
            self.proxy.links.add(self)
            self.proxy.accepted += 1
            self.connect_upstream()
        else:
            self.up.dst = side.conn
            self.down.dst = self.client.conn
            self.up.pump()
            self.down.pump()

    def connect_upstream(self) -> None:
        if self.proxy.black_hole or self.connecting or self.closed:
            return  # a black-holed SYN gets no answer: connect on heal
        self.connecting = True
        host, port = self.proxy.upstream
        self.proxy.loop.connect(host, port, self.server)

    def lost(self, side: _Side, exc: BaseException | None) -> None:
        """One side closed: the other is closed the same way (reset for reset)."""
        if self.closed:
            return
        self.closed = True
        self.proxy.links.discard(self)
        self.up.cancel()
        self.down.cancel()
        other = self.peer_of(side).conn
        if other is not None and not self.silent:
            if exc is None:
                other.close()
            else:
                other.abort()

    def abort(self) -> None:
        for side in (self.client, self.server):
            if side.conn is not None:
                side.conn.abort()


class FaultProxy:
    """A proxy on ``host:port`` (0: any free port) to ``upstream``, on its own loop thread.

    Use as a context manager, or call :meth:`close`. :attr:`port` is where clients
    connect. :attr:`accepted` counts connections, :attr:`bytes` the bytes forwarded per
    direction.
    """

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.loop = EventLoop()
        self.faults: dict[str, Faults] = {"up": Faults(), "down": Faults()}
        self.black_hole = False
        self.links: set[_Link] = set()
        self.accepted = 0
        self.bytes = {"up": 0, "down": 0}
        self._server = self.loop.listen(host, port, self._new_link)
        self.port: int = self._server.port
        self._thread = threading.Thread(target=self.loop.run, name="fault-proxy", daemon=True)
        self._thread.start()

    def _new_link(self) -> Protocol:
        return _Link(self).client

    # -- control, from any thread --------------------------------------------------------------

    def _on_loop(self, action: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise TimeoutError("the fault proxy's loop did not answer")

    def set(self, direction: Direction = "both", **faults: Any) -> None:
        """Change the faults of ``direction`` (keys of :class:`Faults`; others keep theirs)."""

        def apply() -> None:
            for d in ("up", "down") if direction == "both" else (direction,):
                self.faults[d] = replace(self.faults[d], **faults)

        self._on_loop(apply)

    def clear(self) -> None:
        """No latency, no limit, no slicing, no black hole."""
        self.set(**vars(Faults()))
        self.heal()

    def partition(self) -> None:
        """Start a black hole: nothing moves until :meth:`heal`."""

        def apply() -> None:
            self.black_hole = True

        self._on_loop(apply)

    def heal(self) -> None:
        """End a black hole: connections waiting for upstream connect, held bytes go on."""

        def apply() -> None:
            self.black_hole = False
            for link in list(self.links):
                if link.server.conn is None:
                    link.connect_upstream()
                link.up.pump()
                link.down.pump()

        self._on_loop(apply)

    def reset(self) -> None:
        """Abort every current connection, both sides, with RST."""

        def apply() -> None:
            for link in list(self.links):
                link.abort()

        self._on_loop(apply)

    def half_open(self) -> None:
        """Make every current connection silent for good (see the module docstring)."""

        def apply() -> None:
            for link in self.links:
                link.silent = True
                link.up.cancel()
                link.down.cancel()

        self._on_loop(apply)

    def connections(self) -> int:
        """Proxied connections open now."""
        out: list[int] = []
        self._on_loop(lambda: out.append(len(self.links)))
        return out[0]

    def close(self) -> None:
        def apply() -> None:
            self._server.close()
            for link in list(self.links):
                link.abort()

        if self._thread.is_alive():
            self._on_loop(apply)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
